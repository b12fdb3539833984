"""Pick a mask generator's snapshot on the TRAIN split (the test split stays held out).

    OMP_NUM_THREADS=1 python perf/pick_snapshot.py RUN_DIR [--every 8] [--num 200]
        [--data ../shared/data/dsb2018-fluo] [--tile 128] [--log picks.jsonl] [--trunc 1,0.8]
        [--marker-thresh 0.4,0.55] [--debias off,on] [--repeat-crowded 14:4,10:2]

For every ``network-snapshot-*.pt`` in RUN_DIR whose kimg is a multiple of ``--every``:
``--num`` generated tiles (seeds ``--first-seed``, default 1000, on; a conditional generator draws each seed's class
from its training frequencies) decoded to instances, against the real *train* tiles at the
generator's scale (``--tile`` px crops, no overlap, empty ones skipped): objects per tile,
mean area, touching fraction, the share of empty generated tiles, the share of near-duplicate
pairs of tiles (foreground IoU > 0.5: a repeated layout, i.e. mode collapse), and the normalised
Wasserstein-1 morphology distances of the realism measure. With ``--trunc`` (a comma list of
truncation psi values) and ``--marker-thresh`` (a comma list of the decoder's seed levels) each
snapshot is measured at each setting, so the settings a shipped generator records
(``models export --trunc --marker-thresh``) are chosen on the train split too; ``--debias``
(off, on) measures a generator trained on repeated crowded tiles as it is and with the repeats
undone by rejection sampling (the rules its snapshot records, else ``--repeat-crowded``). Prints one JSON
line per snapshot and setting (appended to ``--log`` too, which also lets a later call skip what
was already measured) and, last, the one with the lowest mean W1 distance.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from pretrained_goals import (
    ROOT,
    comma_list,
    label_tiles,
    near_duplicate_share,
    read_split,
    touching_fraction,
)


def snapshots(run_dir: Path, every: float) -> list[tuple[float, Path]]:
    from cellsynth.stylegan3.snapshot import snapshot_nimg

    found = []
    for p in sorted(run_dir.glob("network-snapshot-*.pt")):
        nimg = snapshot_nimg(p.name)
        if nimg is not None and (nimg // 1000) % max(int(every), 1) == 0:
            found.append((nimg / 1000, p))
    return found


def measure(
    path: Path, real, num: int, trunc: float, markers, debias=("off",), repeats=None, first=1000
):
    from cellsynth.stylegan3.generate import MaskGenerator

    gen = MaskGenerator.load(path)
    if repeats and not gen.repeats:
        gen.repeats = repeats
    seeds = list(range(first, first + num))

    def generated(mode, marker) -> np.ndarray:
        opts = {"marker_thresh": marker}
        return np.concatenate(
            [
                gen.generate(
                    seeds[i : i + 50], batch=25, trunc=trunc, debias=mode, decode_opts=opts
                )
                for i in range(0, num, 50)
            ]
        )

    rows, plain = [], None
    for mode in debias:
        for marker in markers:
            if mode == "off":  # generated once, decoded at each level
                plain = generated("off", None) if plain is None else plain
                x = plain
            else:  # which candidates are kept depends on the decoder's object counts
                x = generated(mode, marker)
            rows.append(
                {"debias": mode, **figures(real, gen.decode(x, marker_thresh=marker), marker)}
            )
    return rows


def figures(real, fake, marker) -> dict:
    from cellsynth.stylegan3.metrics import realism

    r = realism(real, fake)
    row = {
        "marker_thresh": marker,
        "objects_per_tile": round(r["objects_per_image_fake"], 2),
        "edge_objects_per_tile": round(r["edge_objects_per_image_fake"], 2),
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
    ap.add_argument("--first-seed", type=int, default=1000, help="seeds FIRST, FIRST+1, ...")
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/dsb2018-fluo"))
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--log", default=None, help="JSONL to append to (and to resume from)")
    ap.add_argument(
        "--trunc",
        type=comma_list(float),
        default=[1.0],
        help="truncation psi values, comma-separated",
    )
    ap.add_argument(
        "--marker-thresh",
        type=comma_list(float),
        default=[None],
        help="decoder seed levels, comma-separated (default: the file's)",
    )
    ap.add_argument(
        "--debias",
        type=comma_list(str),
        default=["off"],
        help="off and/or on: as generated, and with the crowded-tile repeats undone",
    )
    ap.add_argument(
        "--repeat-crowded",
        default=None,
        help="MIN:TIMES,... the repeats to undo for snapshots that record none",
    )
    args = ap.parse_args()
    truncs, markers, modes = args.trunc, args.marker_thresh, args.debias
    from cellsynth.datasets.pack import parse_repeat_crowded

    repeats = parse_repeat_crowded(args.repeat_crowded)
    from cellsynth.stylegan3.generate import MaskGenerator

    run_dir = Path(args.run_dir)
    found = snapshots(run_dir, args.every)
    if not found:
        raise SystemExit(f"{run_dir}: no network-snapshot-*.pt at multiples of {args.every} kimg")
    log = Path(args.log) if args.log else None
    rows = [json.loads(x) for x in log.read_text().splitlines()] if log and log.exists() else []

    def key(r):
        return (r["snapshot"], r.get("trunc", 1.0), r.get("marker_thresh"), r.get("debias", "off"))

    done = {key(r) for r in rows}
    res = MaskGenerator.load(found[0][1]).resolution
    real = label_tiles(read_split(Path(args.data), "train"), res, args.tile)
    ref = {
        "objects_per_tile": round(sum(int(t.max()) for t in real) / len(real), 2),
        "touching": round(touching_fraction(real), 3),
        "near_duplicate_share": round(near_duplicate_share(real), 4),
    }
    print(json.dumps({"real_train_tiles": len(real), **ref}), flush=True)
    for kimg, path in found:
        for trunc in truncs:
            if all((str(path), trunc, m, d) in done for m in markers for d in modes):
                continue
            for got in measure(
                path, real, args.num, trunc, markers, modes, repeats, args.first_seed
            ):
                row = {"snapshot": str(path), "kimg": kimg, "trunc": trunc, **got}
                print(json.dumps(row), flush=True)
                rows.append(row)
                if log:
                    with log.open("a") as f:
                        f.write(json.dumps(row) + "\n")
    measured = {(str(p), t, m, d) for _, p in found for t in truncs for m in markers for d in modes}
    best = min((r for r in rows if key(r) in measured), key=lambda r: r["w1_mean"])
    print(json.dumps({"best": best}), flush=True)


if __name__ == "__main__":
    main()
