"""StyleGAN2/3 CPU speed: training images/s and generation images/s for a small 64x64 config.

Usage: OMP_NUM_THREADS=1 .venv/bin/python perf/sg3_train_speed.py [--cfg stylegan2] [--steps 3]
    [--modes ref,fast-fp32,fast-bf16]
Each (config, mode) runs in its own process, one after the other, and prints one JSON object;
then one summary line per config with the ratios. Uses a synthetic masks zip (random disks, fbd
encoding). Modes: the ops' reference path in fp32, the fast path in fp32 (``--fp32``), the fast
path with bf16 mixed precision (on CPUs with native bf16).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
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


MODES = ("ref", "fast-fp32", "fast-bf16")


def measure(args, cfg: str, mode: str) -> dict:
    """One configuration in this process: train images/s (after one warm-up step) and G
    forward images/s of the snapshot's generator."""
    import torch

    from cellsynth.precision import cpu_kind
    from cellsynth.stylegan3.generate import MaskGenerator
    from cellsynth.stylegan3.train import check_options, default_options
    from cellsynth.stylegan3.training_loop import Trainer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    fp32 = mode != "fast-bf16"
    if mode == "ref":
        os.environ["CELLSYNTH_OPS_IMPL"] = "ref"
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "masks.zip")
        make_zip(data, res=args.res)
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
                fp32=fp32,
            )
        )
        tr = Trainer(opts)
        tr.step()  # warm-up (allocations, lazy R1 and pl steps at batch 0)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            tr.step()
        train_dt = time.perf_counter() - t0
        snap = tr.save_snapshot(os.path.join(tmp, f"{cfg}.pt"))
        gen = MaskGenerator.load(snap, fp32=fp32)
        gen.generate([0], batch=1)
        t0 = time.perf_counter()
        n_gen = 32
        gen.generate(list(range(n_gen)), batch=16)
        gen_dt = time.perf_counter() - t0
        return {
            "cfg": cfg,
            "mode": mode,
            "precision": tr.precision,
            "generate_precision": gen.config.get("precision"),
            "resolution": args.res,
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
            "threads": torch.get_num_threads(),
            "cpu": cpu_kind(),
        }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cfg", default="stylegan2,stylegan3-t")
    ap.add_argument(
        "--modes",
        default="fast-fp32",
        help=f"comma list of {', '.join(MODES)}: the ops' reference path in fp32, the fast "
        "path in fp32 (--fp32), the fast path with bf16 mixed precision (needs a bf16 CPU)",
    )
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--res", type=int, default=64)
    ap.add_argument("--cbase", type=int, default=2048)
    ap.add_argument("--cmax", type=int, default=64)
    ap.add_argument("--zw", type=int, default=64)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # cfg:mode, in a child
    args = ap.parse_args()
    if args.one:
        cfg, mode = args.one.split(":")
        print(json.dumps(measure(args, cfg, mode)), flush=True)
        return
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise SystemExit(f"unknown --modes {bad}; use {', '.join(MODES)}")
    rows = []
    for cfg in args.cfg.split(","):
        for mode in modes:  # each in its own process: no shared allocator or thread state
            cmd = [sys.executable, __file__, "--one", f"{cfg}:{mode}"]
            for k in ("steps", "batch", "res", "cbase", "cmax", "zw"):
                cmd += [f"--{k}", str(getattr(args, k))]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(json.dumps({"cfg": cfg, "mode": mode, "error": out.stderr.strip()[-400:]}))
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    for cfg in args.cfg.split(","):
        by = {r["mode"]: r for r in rows if r["cfg"] == cfg}
        summary = {"cfg": cfg}
        for a, b in (("fast-fp32", "ref"), ("fast-bf16", "ref"), ("fast-bf16", "fast-fp32")):
            if a in by and b in by:
                for key in ("train_images_per_s", "generate_images_per_s"):
                    name = f"{key.split('_')[0]}_{a}_over_{b}"
                    summary[name] = round(by[a][key] / by[b][key], 2)
        if len(summary) > 1:
            print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
