"""StyleGAN2/3 training and generation speed: images/s and s/kimg, CPU or GPU.

Usage: OMP_NUM_THREADS=1 .venv/bin/python perf/sg3_train_speed.py [--cfg stylegan2] [--steps 3]
    [--modes ref,fast-fp32,fast-bf16] [--device cpu|cuda] [--profile 2]
Each (config, mode) runs in its own process, one after the other, and prints one JSON object;
then one summary line per config with the ratios. Uses a synthetic masks zip (random disks, fbd
encoding). Modes: the ops' reference path in fp32, the fast path in fp32 (``--fp32``), the fast
path with mixed precision (bf16 on CPUs with native bf16; fp16 on CUDA, where ``fast-fp16`` is the
same mode). The fast path is the compiled CPU kernels on a CPU and the custom CUDA ops on a GPU.

``--profile N`` runs N more steps under ``torch.profiler`` and adds the top operators by self
time (device time on CUDA, else CPU) and the host-device synchronisations to the JSON, to find
where a step's time goes. The official StyleGAN3 figure to compare with: stylegan3-t at 128x128,
batch 32, one A100: 27.2 s/kimg (``--cfg stylegan3-t --res 128 --batch 32 --cbase 32768 --cmax
512 --zw 512 --device cuda --modes fast-fp16``).
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


MODES = ("ref", "fast-fp32", "fast-bf16", "fast-fp16")
MIXED = ("fast-bf16", "fast-fp16")


def measure(args, cfg: str, mode: str) -> dict:
    """One configuration in this process: train images/s (after one warm-up step) and G
    forward images/s of the snapshot's generator."""
    import torch

    from cellsynth.precision import cpu_kind
    from cellsynth.stylegan3.generate import MaskGenerator
    from cellsynth.stylegan3.train import check_options, default_options
    from cellsynth.stylegan3.training_loop import Trainer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    fp32 = mode not in MIXED
    device = torch.device(args.device)
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
                device=device,
                aug="ada",
                fp32=fp32,
            )
        )
        tr = Trainer(opts)
        tr.step()  # warm-up (allocations, lazy R1 and pl steps at batch 0)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            tr.step()
        _sync(device)
        train_dt = time.perf_counter() - t0
        profile = _profile(tr, device, args.profile) if args.profile else None
        snap = tr.save_snapshot(os.path.join(tmp, f"{cfg}.pt"))
        gen = MaskGenerator.load(snap, fp32=fp32, device=device)
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
            "sec_per_kimg": round(train_dt / (args.steps * args.batch) * 1000, 2),
            "generate_images_per_s": round(n_gen / gen_dt, 3),
            "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "cpu": cpu_kind(),
            **({"profile": profile} if profile else {}),
        }


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _profile(tr, device, steps: int, top: int = 15) -> dict:
    """``steps`` training steps under torch.profiler: the top operators by self time and the
    count of host-device synchronisations per step."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            tr.step()
        _sync(device)
    events = prof.key_averages()
    on_device = device.type == "cuda"

    def self_us(e):
        return e.self_device_time_total if on_device else e.self_cpu_time_total

    rows = sorted(events, key=self_us, reverse=True)[:top]
    syncs = sum(e.count for e in events if "Synchronize" in e.key or e.key == "aten::item")
    return {
        "steps": steps,
        "by": "self device time" if on_device else "self CPU time",
        "total_self_ms_per_step": round(sum(self_us(e) for e in events) / 1e3 / steps, 2),
        "cpu_ms_per_step": round(sum(e.self_cpu_time_total for e in events) / 1e3 / steps, 2),
        "syncs_per_step": round(syncs / steps, 1),
        "top": [
            {
                "op": e.key,
                "calls_per_step": round(e.count / steps, 1),
                "ms_per_step": round(self_us(e) / 1e3 / steps, 3),
            }
            for e in rows
        ],
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
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--profile", type=int, default=0, help="steps to profile (0: none)")
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
            for k in ("steps", "batch", "res", "cbase", "cmax", "zw", "device", "profile"):
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
        pairs = [("fast-fp32", "ref")]
        pairs += [(m, b) for m in MIXED for b in ("ref", "fast-fp32")]
        for a, b in pairs:
            if a in by and b in by:
                for key in ("train_images_per_s", "generate_images_per_s"):
                    name = f"{key.split('_')[0]}_{a}_over_{b}"
                    summary[name] = round(by[a][key] / by[b][key], 2)
        if len(summary) > 1:
            print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
