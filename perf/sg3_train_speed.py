"""StyleGAN2/3 CPU speed: training images/s and generation images/s for a small 64x64 config.

Usage: OMP_NUM_THREADS=1 .venv/bin/python perf/sg3_train_speed.py [--cfg stylegan2] [--steps 3]
Prints one JSON object per config. Uses a synthetic masks zip (random disks, fbd encoding).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
import zipfile

import numpy as np


def make_zip(path, n=64, res=64, seed=0):
    from PIL import Image

    from cellsynth.tools.codec import encode_mask

    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[:res, :res]
    with zipfile.ZipFile(path, "w") as z:
        for i in range(n):
            lab = np.zeros((res, res), np.uint16)
            for k in range(1, 8):
                cy, cx = rng.integers(6, res - 6, 2)
                r = int(rng.integers(3, 7))
                lab[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (lab == 0)] = k
            buf = io.BytesIO()
            Image.fromarray(encode_mask(lab, "fbd")).save(buf, format="PNG")
            z.writestr(f"00000/img{i:08d}.png", buf.getvalue())
        z.writestr("dataset.json", json.dumps({"labels": None}))
        meta = {"encoding": "fbd", "channels": 3, "resolution": res, "classes": None}
        z.writestr("cellsynth.json", json.dumps({**meta, "source": "perf"}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cfg", default="stylegan2,stylegan3-t")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--cbase", type=int, default=2048)
    ap.add_argument("--cmax", type=int, default=64)
    ap.add_argument("--zw", type=int, default=64)
    args = ap.parse_args()

    import torch

    from cellsynth.stylegan3.generate import MaskGenerator
    from cellsynth.stylegan3.train import check_options, default_options
    from cellsynth.stylegan3.training_loop import Trainer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "masks.zip")
        make_zip(data)
        for cfg in args.cfg.split(","):
            opts = check_options(
                default_options(
                    data=data,
                    outdir=tmp,
                    cfg=cfg,
                    batch=args.batch,
                    gamma=0.1,
                    cbase=args.cbase,
                    cmax=args.cmax,
                    z_dim=args.zw,
                    w_dim=args.zw,
                    map_depth=2,
                    device="cpu",
                    aug="ada",
                )
            )
            tr = Trainer(opts)
            tr.step()  # warm-up (allocations, lazy R1 and pl steps at batch 0)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                tr.step()
            train_dt = time.perf_counter() - t0
            snap = tr.save_snapshot(os.path.join(tmp, f"{cfg}.pt"))
            gen = MaskGenerator.load(snap)
            gen.generate([0], batch=1)
            t0 = time.perf_counter()
            n_gen = 32
            gen.generate(list(range(n_gen)), batch=16)
            gen_dt = time.perf_counter() - t0
            print(
                json.dumps(
                    {
                        "cfg": cfg,
                        "resolution": 64,
                        "channels": 3,
                        "cbase": args.cbase,
                        "cmax": args.cmax,
                        "z_w_dim": args.zw,
                        "G_params": sum(p.numel() for p in tr.G.parameters()),
                        "D_params": sum(p.numel() for p in tr.D.parameters()),
                        "batch": args.batch,
                        "train_steps": args.steps,
                        "train_images_per_s": round(args.steps * args.batch / train_dt, 3),
                        "generate_images_per_s": round(n_gen / gen_dt, 3),
                        "ops_impl": os.environ.get("CELLSYNTH_OPS_IMPL", "auto"),
                        "threads": torch.get_num_threads(),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
