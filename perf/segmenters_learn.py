"""Do the segmenters learn? Train each on a real training split within a minutes budget and
score it on the real test split: the figures of the segmenters-learn issue.

Runs ``cellsynth.benchmark.run_benchmark`` (the same code as ``cellsynth benchmark run``) with
the per-segmenter options below, then prints one JSON object: per segmenter pooled AP@0.5,
mean AP over IoU 0.5:0.95, F1, predict seconds per image, training seconds, precision, the best
validation AP@0.5 and the chosen post-processing, and the issue's goals (every deep segmenter
above ``classical``, the best >= 0.85, ``cellpose`` >= 0.80) checked against them.

    python perf/segmenters_learn.py --out runs/learn-dsb [--minutes 15]
        [--data ../shared/data/dsb2018-fluo] [--segmenters classical,unet,u2net,maskrcnn,cellpose]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CELLSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data"))

# the settings measured for the issue (each one's defaults, except where said)
OPTIONS = {
    "classical": {},
    "unet": {},
    # the full U^2-Net (44 M parameters) is too slow on 2 cores; the small one takes 11 s per
    # step of 8 x 256^2 in bf16 here, so 128-px crops (4x the steps)
    "u2net": {"variant": "small", "crop": 128},
    # ResNet-50 and the 4 x 256 mask head are too slow from scratch on 2 cores
    "maskrcnn": {"arch": "resnet18_fpn", "mask_head": [128, 128], "box_batch_size_per_image": 128},
    "cellpose": {"bsize": 128},  # 3x the steps of 224-px crops; nuclei are ~20 px here
    "dwt": {},  # its defaults are CPU-sized (U-Nets at half resolution, ~1.4 s per step)
    # swin_t's layout at half the width (embed 48) and a 128-channel FPN: 3.4 s per step of
    # 4 x 256^2 in bf16 here (resnet18_fpn above: 6 s); the full swin_t (96) takes 9 s
    "swin": {
        "swin_embed_dim": 48,
        "swin_depths": [2, 2, 6, 2],
        "fpn_channels": 128,
        "mask_head": [128, 128],
        "box_batch_size_per_image": 128,
    },
    # EmbedSeg's ERFNet has no width option: 0.4 s per step of 4 x 128^2 in bf16 here (4x the
    # steps of 256-px crops)
    "embedseg": {"crop": 128, "batch_size": 4},
}
DEEP = ("unet", "u2net", "maskrcnn", "cellpose", "stardist", "dwt", "swin", "embedseg")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def summarize(results: dict) -> dict:
    th = results["thresholds"]
    out = {}
    for name, seg in results["segmenters"].items():
        row = {"status": seg["status"], "error": seg["error"], "train_s": seg["train_s"]}
        training = seg.get("training") or {}
        row["precision"] = training.get("precision")
        row["best_val_ap50"] = (training.get("best") or {}).get("val_ap50")
        row["postprocess"] = (training.get("postprocess") or {}).get("params")
        row["steps"] = training.get("steps")
        for dkey, d in seg["datasets"].items():
            s = d.get("summary") or {}
            row[dkey] = {
                "ap50": s.get("ap50"),
                "mean_ap": s.get("mean_ap"),
                "ap75": s["ap"][th.index(0.75)] if s.get("ap") else None,
                "f1": s.get("f1"),
                "n_true": s.get("n_true"),
                "n_pred": s.get("n_pred"),
                "predict_s_per_image": d.get("predict_s_per_image"),
            }
        out[name] = row
    return out


def goals(summary: dict, dkey: str) -> dict:
    def ap(name):
        return ((summary.get(name) or {}).get(dkey) or {}).get("ap50")

    base = ap("classical")
    deep = {n: ap(n) for n in DEEP if n in summary}
    best = max((v for v in deep.values() if v is not None), default=None)
    return {
        "classical_ap50": base,
        "deep_above_classical": {
            n: (v is not None and base is not None and v > base) for n, v in deep.items()
        },
        "best_deep_ap50": best,
        "best_ge_0.85": best is not None and best >= 0.85,
        "cellpose_ge_0.80": (ap("cellpose") or 0.0) >= 0.80 if "cellpose" in deep else None,
    }


def main() -> None:
    from cellsynth.benchmark.runner import run_benchmark

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED / "dsb2018-fluo"), help="canonical root")
    ap.add_argument("--test", default=None, help="test split folder (default: DATA/test)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--segmenters", default="classical,unet,u2net,maskrcnn,cellpose")
    ap.add_argument("--options", default=None, help="JSON: name -> options (replaces defaults)")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    names = [n for n in args.segmenters.split(",") if n]
    options = {n: OPTIONS.get(n, {}) for n in names}
    if args.options:
        options.update(json.loads(args.options))
    data = Path(args.data)
    test = Path(args.test) if args.test else data / "test"
    budgets = {n: {"minutes": args.minutes} for n in names if n != "classical"}
    results = run_benchmark(
        data / "train",
        [test],
        names,
        args.out,
        budgets=budgets,
        options=options,
        overwrite=args.overwrite,
        progress=False,
    )
    summary = summarize(results)
    dkey = next(iter(results["datasets"]))
    print(
        json.dumps(
            {
                "cpu": cpu_model(),
                "cores": os.cpu_count(),
                "threads": os.environ.get("OMP_NUM_THREADS"),
                "minutes_per_segmenter": args.minutes,
                "train": str(data / "train"),
                "test": str(test),
                "options": options,
                "segmenters": summary,
                "goals": goals(summary, dkey),
            },
            indent=1,
            default=str,
        )
    )


if __name__ == "__main__":
    main()
