"""Training and inference speed of the StyleGAN generators on the CPU, reference ops vs fast ops.

Prints one JSON object: for each case (config, resolution) and each ops implementation
("ref" = the plain reference ops with one grouped conv per modulated layer, as the original
pure-PyTorch path, with glibc's default allocator settings and no compiled kernels;
"fast" = the default CPU path), images/s for
  - "train": G forward + D forward + backward through both (one G step of a GAN), and
  - "g_forward": G forward under torch.no_grad().
fp32, 1 channel, cbase 8192, cmax 256 (stylegan3-r: doubled in G by build_networks), batch 8.
Each (case, impl) runs in its own process, so that one path's allocator settings, compiled
kernels or warm caches cannot help the other. "vs_issue" divides the fast figures by those the
issue measured for the original implementation's reference path on this machine.

    python perf/sg3_cpu_speed.py [--cases stylegan3-t@64,stylegan2@64] [--impls ref,fast]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch

from cellsynth.stylegan3.networks import Generator, build_networks

DEFAULT_CASES = "stylegan3-t@64,stylegan3-r@64,stylegan2@64,stylegan3-t@128"
# The issue's figures for the original implementation's pure-PyTorch path on this machine
# (images/s: G+D forward+backward, G forward), and the goals (x10 for -t/-r, x1 for stylegan2).
ISSUE_FIGURES = {
    "stylegan3-t@64": (0.2, 1.1),
    "stylegan3-r@64": (0.1, 0.4),
    "stylegan2@64": (8.6, 37.5),
}
GOAL = {"stylegan3-t@64": 10, "stylegan3-r@64": 10, "stylegan2@64": 1}


def _time(fn, warmup, iters, max_seconds):
    for _ in range(warmup):
        fn()
    done, start = 0, time.perf_counter()
    while done < iters:
        fn()
        done += 1
        if time.perf_counter() - start > max_seconds:
            break
    return (time.perf_counter() - start) / done, done


def bench_case(cfg, res, impl, batch, warmup, iters, max_seconds, modes=("train", "forward")):
    """Images/s for one config and ops implementation ("train" and/or "forward" modes)."""
    if impl == "ref":  # the original's conditions: no compiled kernels, default allocator
        os.environ["CELLSYNTH_CPU_KERNELS"] = "0"
        os.environ["CELLSYNTH_MALLOC_TUNE"] = "0"
    G, D = build_networks(cfg, res, 1, cbase=8192, cmax=256, num_fp16_res=0, conv_clamp=256, seed=0)
    if impl == "ref" and cfg != "stylegan2":
        # the original stylegan3 path: reference ops and one grouped conv per modulated layer
        G = Generator(**G.init_kwargs, fused_modconv=True).requires_grad_(True)
    os.environ["CELLSYNTH_OPS_IMPL"] = "ref" if impl == "ref" else "auto"
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(batch, G.z_dim, generator=gen)

    def train_step():
        G.zero_grad(set_to_none=True)
        D.zero_grad(set_to_none=True)
        img = G(z, None, noise_mode="random")
        loss = torch.nn.functional.softplus(-D(img, None)).mean()
        loss.backward()

    def forward():
        with torch.no_grad():
            G(z, None, noise_mode="const")

    out = {}
    if "train" in modes:
        t_train, n_train = _time(train_step, warmup, iters, max_seconds)
        out.update(train_img_per_s=round(batch / t_train, 3), train_iters=n_train)
    if "forward" in modes:
        t_fwd, n_fwd = _time(forward, warmup, iters, max_seconds)
        out.update(g_forward_img_per_s=round(batch / t_fwd, 3), forward_iters=n_fwd)
    os.environ.pop("CELLSYNTH_OPS_IMPL", None)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=DEFAULT_CASES, help="comma list of cfg@resolution")
    p.add_argument("--impls", default="ref,fast")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--ref-max-seconds", type=float, default=30.0, help="stop timing ref after this")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--ref-modes", default="train,forward", help="what to time with ref ops")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child: cfg@res@impl
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        cfg, res, impl = args.one.split("@")
        max_s = args.ref_max_seconds if impl == "ref" else 10 * args.ref_max_seconds
        warm = 0 if impl == "ref" else args.warmup
        modes = args.ref_modes.split(",") if impl == "ref" else ("train", "forward")
        out = bench_case(cfg, int(res), impl, args.batch, warm, args.iters, max_s, modes)
        print(json.dumps(out))
        return
    results = {}
    for case in args.cases.split(","):
        cfg, res = case.split("@")
        entry = {}
        for impl in args.impls.split(","):
            cmd = [sys.executable, __file__, "--one", f"{cfg}@{res}@{impl}"]
            cmd += ["--batch", str(args.batch), "--warmup", str(args.warmup)]
            cmd += ["--iters", str(args.iters), "--ref-max-seconds", str(args.ref_max_seconds)]
            cmd += ["--ref-modes", args.ref_modes, "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            entry[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
        for key, name in (
            ("train_img_per_s", "speedup_train"),
            ("g_forward_img_per_s", "speedup_g_forward"),
        ):
            if key in entry.get("ref", {}) and key in entry.get("fast", {}):
                entry[name] = round(entry["fast"][key] / entry["ref"][key], 2)
        if case in ISSUE_FIGURES and "fast" in entry:
            train0, fwd0 = ISSUE_FIGURES[case]
            fast = entry["fast"]
            entry["vs_issue"] = {
                "train_x": round(fast["train_img_per_s"] / train0, 2),
                "g_forward_x": round(fast["g_forward_img_per_s"] / fwd0, 2),
                "goal_x": GOAL[case],
            }
        results[case] = entry
        print(json.dumps({case: entry}), flush=True)
    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "batch": args.batch,
        "settings": "fp32, 1 channel, cbase 8192, cmax 256 (x2 in G for stylegan3-r)",
    }
    print(json.dumps({"results": results, "info": info}, indent=1))


if __name__ == "__main__":
    main()
