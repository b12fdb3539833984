"""Pix2PixHD speed on this machine: training iterations/s and translation images/s at 256x256
(global generator; the default ngf 64 and a small ngf 16), printed as JSON. Translation is timed
with synth's mirrored margin (``translate_images_per_s``) and without (``..._margin0``).

    OMP_NUM_THREADS=1 python perf/p2p_speed.py [--size 256] [--iters 3] [--threads 1]
        [--ngf 32] [--n-down 3] [--fp16 both]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from cellsynth.pix2pixhd.options import DEFAULT_MARGIN, Options
from cellsynth.pix2pixhd.training_loop import Pix2PixHDModel
from cellsynth.pix2pixhd.translator import Translator
from cellsynth.precision import cpu_kind


def synthetic_batch(size: int, seed: int = 0) -> dict:
    """A label/instance/image batch of random discs (no files needed)."""
    rng = np.random.default_rng(seed)
    inst = np.zeros((size, size), np.int64)
    yy, xx = np.mgrid[:size, :size]
    for k in range(1, 30):
        cy, cx, r = rng.integers(0, size), rng.integers(0, size), rng.integers(5, 20)
        inst[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = k
    image = np.where(inst > 0, 0.6, -0.8) + rng.normal(0, 0.05, inst.shape)
    return {
        "label": torch.from_numpy((inst > 0).astype(np.int64))[None],
        "inst": torch.from_numpy(inst)[None],
        "image": torch.from_numpy(image.astype(np.float32))[None, None],
    }


def measure(
    ngf: int, size: int, iters: int, device: torch.device, fp16: bool = False, n_down: int = 4
) -> dict:
    opt = Options(
        ngf=ngf,
        ndf=64 if ngf >= 64 else 32,
        n_downsample_global=n_down,
        label_nc=2,
        output_nc=1,
        no_vgg_loss=True,
        fp16=fp16,
    ).check()
    torch.manual_seed(0)
    model = Pix2PixHDModel(opt, device)
    batch = {k: v.to(device) for k, v in synthetic_batch(size).items()}
    model.step(batch)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        model.step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = (time.perf_counter() - t) / iters
    lab = batch["label"][0].cpu().numpy()
    ins = batch["inst"][0].cpu().numpy()
    test_s = {}
    for margin in (DEFAULT_MARGIN, 0):  # synth's default; none (the network's own size)
        tr = Translator(opt, model.G, (size, size), device=device, margin=margin)
        tr.translate(lab, ins)
        t = time.perf_counter()
        for _ in range(iters):
            tr.translate(lab, ins)
        test_s[margin] = (time.perf_counter() - t) / iters
    n_g = sum(p.numel() for p in model.G.parameters())
    n_d = sum(p.numel() for p in model.D.parameters())
    return {
        "ngf": ngf,
        "ndf": opt.ndf,
        "n_downsample_global": n_down,
        "fp16": fp16,
        "precision": {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(model.amp_dtype, "fp32"),
        "G_params": n_g,
        "D_params": n_d,
        "train_iter_per_s": round(1.0 / train_s, 4),
        "train_s_per_iter": round(train_s, 3),
        "translate_margin": DEFAULT_MARGIN,
        "translate_images_per_s": round(1.0 / test_s[DEFAULT_MARGIN], 4),
        "translate_images_per_s_margin0": round(1.0 / test_s[0], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)))
    parser.add_argument("--ngf", type=int, nargs="+", default=[64, 16])
    parser.add_argument("--n-down", type=int, default=4, help="n_downsample_global")
    parser.add_argument(
        "--fp16",
        default="off",
        choices=["off", "on", "both"],
        help="--fp16 of the trainer (bf16 autocast on a bf16 CPU): off, on, or both side by side",
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.fp16]
    results = [
        measure(n, args.size, args.iters, device, fp16, args.n_down)
        for n in args.ngf
        for fp16 in modes
    ]
    print(
        json.dumps(
            {
                "benchmark": "pix2pixhd global generator, batch 1, lsgan + feature matching, "
                "no VGG",
                "size": args.size,
                "device": str(device),
                "threads": args.threads,
                "cpu_count": os.cpu_count(),
                "load_avg_1min": round(os.getloadavg()[0], 2),
                "platform": platform.platform(),
                "cpu": cpu_kind(),
                "torch": torch.__version__,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
