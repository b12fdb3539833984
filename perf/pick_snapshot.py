"""Pick a mask generator's snapshot on the TRAIN split (the test split stays held out).

    OMP_NUM_THREADS=1 python perf/pick_snapshot.py RUN_DIR [--every 8] [--num 200]
        [--data ../shared/data/dsb2018-fluo] [--tile 128] [--log picks.jsonl]

For every ``network-snapshot-*.pt`` in RUN_DIR whose kimg is a multiple of ``--every``:
``--num`` generated tiles (seeds 1000 on; a conditional generator draws each seed's class
from its training frequencies) decoded to instances, against the real *train* tiles at the
generator's scale (``--tile`` px crops, no overlap, empty ones skipped): objects per tile,
mean area, touching fraction, the share of empty generated tiles, the share of near-duplicate
pairs of tiles (foreground IoU > 0.5: a repeated layout, i.e. mode collapse), and the normalised
Wasserstein-1 morphology distances of the realism measure. Prints one JSON line per snapshot
(appended to ``--log`` too, which also lets a later call skip the snapshots already measured)
and, last, the snapshot with the lowest mean W1 distance.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from pretrained_goals import (
    ROOT,
    label_tiles,
    near_duplicate_share,
    read_split,
    touching_fraction,
)

SNAP = re.compile(r"network-snapshot-(\d+(?:\.\d+)?)\.pt$")


def snapshots(run_dir: Path, every: float) -> list[tuple[float, Path]]:
    found = []
    for p in sorted(run_dir.glob("network-snapshot-*.pt")):
        m = SNAP.search(p.name)
        if m and int(float(m.group(1))) % max(int(every), 1) == 0:
            found.append((float(m.group(1)), p))
    return found


def measure(path: Path, real, num: int) -> dict:
    from cellsynth.stylegan3.generate import MaskGenerator
    from cellsynth.stylegan3.metrics import realism

    gen = MaskGenerator.load(path)
    seeds = list(range(1000, 1000 + num))
    fake = []
    for i in range(0, num, 50):
        fake += gen.decode(gen.generate(seeds[i : i + 50], batch=25))
    r = realism(real, fake)
    row = {
        "objects_per_tile": round(r["objects_per_image_fake"], 2),
        "mean_area": round(r["mean_area_fake"], 1),
        "touching": round(touching_fraction(fake), 3),
        "empty_share": round(sum(int(f.max(initial=0)) == 0 for f in fake) / len(fake), 3),
        "near_duplicate_share": round(near_duplicate_share(fake), 4),
        "w1_mean": round(r["w1_mean"], 3),
    }
    for f in ("area", "perimeter", "eccentricity", "solidity", "count"):
        row[f"w1_{f}"] = None if r[f"w1_{f}"] is None else round(r[f"w1_{f}"], 3)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--every", type=float, default=8, help="only snapshots at multiples of this")
    ap.add_argument("--num", type=int, default=200)
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/dsb2018-fluo"))
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--log", default=None, help="JSONL to append to (and to resume from)")
    args = ap.parse_args()
    from cellsynth.stylegan3.generate import MaskGenerator

    run_dir = Path(args.run_dir)
    found = snapshots(run_dir, args.every)
    if not found:
        raise SystemExit(f"{run_dir}: no network-snapshot-*.pt at multiples of {args.every} kimg")
    log = Path(args.log) if args.log else None
    rows = [json.loads(x) for x in log.read_text().splitlines()] if log and log.exists() else []
    done = {r["snapshot"] for r in rows}
    res = MaskGenerator.load(found[0][1]).resolution
    real = label_tiles(read_split(Path(args.data), "train"), res, args.tile)
    ref = {
        "objects_per_tile": round(sum(int(t.max()) for t in real) / len(real), 2),
        "touching": round(touching_fraction(real), 3),
        "near_duplicate_share": round(near_duplicate_share(real), 4),
    }
    print(json.dumps({"real_train_tiles": len(real), **ref}), flush=True)
    for kimg, path in found:
        if str(path) in done:
            continue
        row = {"snapshot": str(path), "kimg": kimg, **measure(path, real, args.num)}
        print(json.dumps(row), flush=True)
        rows.append(row)
        if log:
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
    measured = {str(p) for _, p in found}
    best = min((r for r in rows if r["snapshot"] in measured), key=lambda r: r["w1_mean"])
    print(json.dumps({"best": best}), flush=True)


if __name__ == "__main__":
    main()
