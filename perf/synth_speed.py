"""Speed of `cellsynth synth`: pairs per second and the share of time per stage.

Usage:
    python perf/synth_speed.py [--num 40] [--sizes 128 256] [--workers 0] [--spots 3]
    python perf/synth_speed.py --stylegan3 SNAPSHOT.pt --pix2pixhd LATEST.pt [--device cuda]

With simulate sources (the default) the masks come from the procedural simulator at each
``--sizes`` value; with GAN checkpoints the size is the generator's. Prints one JSON object.
Stage seconds are summed over processes (with workers they overlap with the wall time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

from cellsynth.synth import synth


def run_one(out: Path, args, size, masks, images, upscale=1) -> dict:
    s = synth(
        out,
        masks=masks,
        images=images,
        seeds=f"0-{args.num - 1}",
        size=size,
        spots_count=args.spots,
        batch=args.batch,
        workers=args.workers,
        device=args.device,
        upscale=upscale,
    )
    total = sum(s["stages"].values()) or 1.0
    return {
        "size": size,
        "upscale": upscale,
        "masks": masks.split(":")[0],
        "images": images.split(":")[0],
        "pairs": s["written"],
        "seconds": round(s["seconds"], 3),
        "pairs_per_s": round(s["written"] / s["seconds"], 2),
        "stage_seconds": {k: round(v, 3) for k, v in s["stages"].items()},
        "stage_share": {k: round(v / total, 3) for k, v in s["stages"].items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--num", type=int, default=40)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--spots", type=float, default=3.0)
    ap.add_argument("--stylegan3", default=None, help="generator snapshot (GAN masks)")
    ap.add_argument("--pix2pixhd", default=None, help="translator checkpoint (GAN images)")
    ap.add_argument("--device", default=None)
    ap.add_argument(
        "--upscale",
        type=int,
        nargs="+",
        default=[1],
        help="GAN masks: factors of the generator's size (e.g. 2 4 for 128 and 256 from 64)",
    )
    args = ap.parse_args()
    masks = f"stylegan3:{args.stylegan3}" if args.stylegan3 else "simulate"
    images = f"pix2pixhd:{args.pix2pixhd}" if args.pix2pixhd else "simulate"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run_one(
            Path(tmp) / "warmup",
            argparse.Namespace(**{**vars(args), "num": 2}),
            args.sizes[0],
            masks,
            images,
        )
        if masks == "simulate":
            for size in args.sizes:
                rows.append(run_one(Path(tmp) / f"s{size}", args, size, masks, images))
        else:
            for k in args.upscale:
                rows.append(run_one(Path(tmp) / f"u{k}", args, 256, masks, images, upscale=k))
    print(
        json.dumps(
            {
                "benchmark": "synth_speed",
                "num": args.num,
                "workers": args.workers,
                "spots_per_cell": args.spots,
                "threads": os.environ.get("OMP_NUM_THREADS"),
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
                "results": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
