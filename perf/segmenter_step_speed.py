"""Training-step speed of the deep segmenters, fp32 against bf16 autocast, on this machine.

Each (segmenter, precision) trains in its own process for a short budget on real
DSB2018 training images (``../shared/data/dsb2018-fluo/train``, or a simulated set with
``--simulate``), with no validation slice and no tuning, and reports images/s measured inside
the training steps only (``info["step_seconds"]``). Prints one JSON object with the CPU model
and its bf16 flags.

    python perf/segmenter_step_speed.py [--segmenters unet,u2net,maskrcnn,cellpose]
        [--precisions fp32,bf16] [--minutes 1.5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DSB = (
    Path(os.environ.get("CELLSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data")) / "dsb2018-fluo"
)

# the options perf/segmenters_learn.py uses
OPTIONS = {
    "unet": {},
    "u2net": {"variant": "small"},
    "maskrcnn": {"arch": "resnet18_fpn", "mask_head": [128, 128], "box_batch_size_per_image": 128},
    "cellpose": {"bsize": 128},
}


def cpu_info() -> dict:
    model, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "bf16_flags": sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile"}),
    }


def one(name: str, precision: str, minutes: float, simulate: bool) -> dict:
    import torch

    from cellsynth.benchmark.segmenters import make_segmenter
    from cellsynth.datasets.canonical import CanonicalDataset

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    if simulate:
        import tempfile

        from cellsynth.datasets.simulate import simulate_dataset

        root = Path(tempfile.mkdtemp()) / "sim"
        simulate_dataset(root, n_train=16, seed=0, size=(256, 256))
        train = CanonicalDataset(root, "train")
    else:
        train = CanonicalDataset(DSB, "train")
    seg = make_segmenter(
        name, **OPTIONS[name], precision=precision, val_fraction=0.0, tune=False, n_evals=0
    )
    batch = seg.options.get("batch_size", 8)
    seg.fit(train, None, budget_minutes=minutes, progress=False)
    info = seg.info
    return {
        "segmenter": name,
        "precision": info["precision"],
        "batch": batch,
        "steps": info["steps"],
        "images_per_s": info["steps"] * batch / max(info["step_seconds"], 1e-9),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--segmenters", default="unet,u2net,maskrcnn,cellpose")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--minutes", type=float, default=1.5, help="training budget of each run")
    ap.add_argument("--simulate", action="store_true", help="simulated data instead of DSB2018")
    ap.add_argument("--one", nargs=2, metavar=("SEGMENTER", "PRECISION"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], args.minutes, args.simulate)))
        return
    results = []
    for name in args.segmenters.split(","):
        row = {"segmenter": name}
        for prec in args.precisions.split(","):
            cmd = [sys.executable, __file__, "--one", name, prec, "--minutes", str(args.minutes)]
            cmd += ["--simulate"] if args.simulate else []
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                row[prec] = {"error": out.stderr.strip().splitlines()[-1:]}
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            row[prec] = {k: r[k] for k in ("precision", "batch", "steps", "images_per_s")}
        if all(isinstance(row.get(p), dict) and "images_per_s" in row[p] for p in ("fp32", "bf16")):
            row["bf16_speedup"] = row["bf16"]["images_per_s"] / row["fp32"]["images_per_s"]
        results.append(row)
    print(
        json.dumps(
            {**cpu_info(), "threads": os.environ.get("OMP_NUM_THREADS"), "results": results},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
