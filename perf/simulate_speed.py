"""Speed of the procedural cell simulator: samples per second on this machine (one process).

Usage: python perf/simulate_speed.py [--size 256] [--num 40] [--density 0.5 ...]
Prints one JSON object: samples/s per density, and the split between labels and rendering.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from cellsynth.datasets.simulate import render_image, simulate_labels, simulate_sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--num", type=int, default=40)
    ap.add_argument("--density", type=float, nargs="+", default=[0.2, 0.5, 1.0])
    ap.add_argument("--nuclei", action="store_true")
    args = ap.parse_args()
    simulate_sample(0, args.size)  # warm up imports and caches
    rows = []
    for d in args.density:
        t_lab = t_img = 0.0
        cells = []
        t0 = time.perf_counter()
        for seed in range(args.num):
            a = time.perf_counter()
            lab = simulate_labels(seed, args.size, density=d)
            b = time.perf_counter()
            render_image(lab, seed, nucleus_gain=1.8 if args.nuclei else 1.0)
            c = time.perf_counter()
            t_lab += b - a
            t_img += c - b
            cells.append(int(lab.max()))
        total = time.perf_counter() - t0
        rows.append(
            {
                "density": d,
                "samples_per_s": round(args.num / total, 2),
                "labels_ms": round(1000 * t_lab / args.num, 2),
                "render_ms": round(1000 * t_img / args.num, 2),
                "cells_mean": float(np.mean(cells)),
            }
        )
    print(
        json.dumps(
            {
                "benchmark": "simulate_speed",
                "size": args.size,
                "num": args.num,
                "nuclei": args.nuclei,
                "threads": os.environ.get("OMP_NUM_THREADS"),
                "machine": platform.machine(),
                "results": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
