"""The bf16 quality check of issue 13: the same StyleGAN training in fp32 and in bf16, compared.

    python perf/bf16_quality.py --resume SNAPSHOT --data MASKS.zip --out DIR
        [--minutes 20] [--seeds 1,2] [--cfg stylegan2 --cbase 2048 --cmax 64 --z-dim 64
        --w-dim 64 --map-depth 2 --batch 16 --gamma 1 --ada-kimg 100] [--num 1000] [--eval-only]

For each seed, two runs start from the same full-state snapshot (``--resume``: G, D, their
optimizers, the EMA and ADA's p, so both precisions continue one training instead of each
starting a fresh discriminator): ``DIR/pair{seed}/fp32`` with ``--fp32`` and ``DIR/pair{seed}/bf16``
with mixed precision. They run side by side, one thread each (a 2-core machine runs a pair at
once, and both see the same load), for ``--minutes`` of wall time. Then the last snapshot of each
run is measured as ``perf/pretrained_goals.py`` measures a generator (``--num`` tiles decoded to
instances against the real test tiles at the generator's scale; the fp32 run generates in fp32,
the bf16 run in bf16): objects per tile, mean area, touching fraction and the normalised W1
morphology distances. Prints one JSON line per run, then one per seed with the ratio of the mean
W1 distances (bf16 / fp32; the goal is <= 1.10: bf16 no worse than fp32 by more than 10 %), and
whether any logged loss was NaN or inf. ``--eval-only`` measures runs already in DIR.

Needs a CPU with native bf16 (``avx512_bf16`` or ``amx_bf16``): elsewhere "bf16" would only be
emulated, several times slower, and the comparison says nothing; it refuses with one line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16")


# The training options both runs share (flag: default): those of the shipped mask generator.
TRAIN = {
    "cfg": "stylegan2",
    "cbase": 2048,
    "cmax": 64,
    "z-dim": 64,
    "w-dim": 64,
    "map-depth": 2,
    "batch": 16,
    "gamma": 1.0,
    "ada-kimg": 100.0,
}


def train_command(args, seed: int, precision: str, outdir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "cellsynth", "stylegan3", "train", "--outdir", str(outdir)]
    for flag in TRAIN:
        cmd += [f"--{flag}", str(getattr(args, flag.replace("-", "_")))]
    cmd += ["--data", args.data, "--mirror", "--workers", "1", "--tick", "1", "--snap", "5"]
    cmd += ["--seed", str(seed), "--resume", args.resume, "--max-minutes", str(args.minutes)]
    return cmd + ["--no-progress"] + (["--fp32"] if precision == "fp32" else [])


def run_pair(args, seed: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = []
    for precision in PRECISIONS:
        outdir = Path(args.out) / f"pair{seed}" / precision
        outdir.mkdir(parents=True, exist_ok=True)
        log = open(Path(args.out) / f"pair{seed}-{precision}.log", "w")  # noqa: SIM115
        cmd = train_command(args, seed, precision, outdir)
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    for proc, log in procs:
        proc.wait()
        log.close()
        if proc.returncode:
            sys.exit(
                f"bf16_quality: a training run failed (exit {proc.returncode}); see {log.name}"
            )


def last_snapshot(run_root: Path) -> Path:
    from cellsynth.stylegan3.snapshot import list_snapshots

    snaps = list_snapshots(run_root)
    if not snaps:
        sys.exit(f"bf16_quality: no snapshot under {run_root}")
    return snaps[-1]


def finite_losses(run_dir: Path) -> bool:
    """False when any scalar logged in the run's stats.jsonl is NaN or inf."""
    path = run_dir / "stats.jsonl"
    if not path.is_file():
        return True
    for line in path.read_text().splitlines():
        for value in json.loads(line).values():
            if isinstance(value, float) and not math.isfinite(value):
                return False
    return True


def kimg_of(path: str | Path) -> float | None:
    """The kimg in a snapshot's file name (None for another name, e.g. a shipped model)."""
    from cellsynth.stylegan3.snapshot import snapshot_nimg

    nimg = snapshot_nimg(Path(path).name)
    return None if nimg is None else nimg / 1000


def measure(args, seed: int, precision: str, train, test) -> dict:
    from pretrained_goals import mask_figures

    snap = last_snapshot(Path(args.out) / f"pair{seed}" / precision)
    opts = argparse.Namespace(
        masks=str(snap), fp32=precision == "fp32", num=args.num, tile=args.tile, min_size=0,
        grid_dir=None,
    )  # fmt: skip
    fig = mask_figures(opts, train, test)
    w1 = {k: v["generated"] for k, v in fig["w1"].items()}
    kimg, start = kimg_of(snap), kimg_of(args.resume)
    return {
        "seed": seed,
        "precision": precision,
        "snapshot": str(snap),
        "kimg": kimg,
        "kimg_trained": None if start is None else round(kimg - start, 3),
        "finite": finite_losses(snap.parent),
        "objects_per_tile": round(fig["objects_per_tile"]["generated"], 2),
        "mean_area": round(fig["mean_area"]["generated"], 1),
        "touching": round(fig["touching_fraction"]["generated"], 3),
        "w1": {k: round(v, 3) for k, v in w1.items()},
        "w1_mean": round(sum(w1.values()) / len(w1), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resume", required=True, help="full-state snapshot both runs start from")
    ap.add_argument("--data", required=True, help="masks zip (dataset pack)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--seeds", default="1,2")
    for flag, default in TRAIN.items():
        ap.add_argument(f"--{flag}", type=type(default), default=default)
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--real", default=str(ROOT.parent / "shared/data/dsb2018-fluo"))
    ap.add_argument("--eval-only", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from pretrained_goals import read_split

    from cellsynth.precision import cpu_has_bf16, cpu_kind

    if not cpu_has_bf16():
        sys.exit(f"bf16_quality: this CPU ({cpu_kind()}) has no native bf16; nothing to compare")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not args.eval_only and not Path(args.data).is_file():
        sys.exit(f"bf16_quality: no masks zip at {args.data}")
    if not args.eval_only:
        for seed in seeds:
            t0 = time.time()
            run_pair(args, seed)
            print(json.dumps({"seed": seed, "pair_wall_s": round(time.time() - t0, 1)}))
    real = Path(args.real)
    train, test = read_split(real, "train"), read_split(real, "test")
    for seed in seeds:
        rows = {p: measure(args, seed, p, train, test) for p in PRECISIONS}
        for row in rows.values():
            print(json.dumps({**row, "cpu": cpu_kind()}))
        ratio = rows["bf16"]["w1_mean"] / rows["fp32"]["w1_mean"]
        summary = {
            "seed": seed,
            "w1_mean_fp32": rows["fp32"]["w1_mean"],
            "w1_mean_bf16": rows["bf16"]["w1_mean"],
            "bf16_over_fp32": round(ratio, 3),
            "goal_met": bool(ratio <= 1.10 and all(r["finite"] for r in rows.values())),
        }
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
