"""Per-op CPU time, reference vs fast path, at the layer shapes of a 64x64 StyleGAN3 generator.

Prints one JSON object: for each op and shape, milliseconds for forward and for
forward + backward (mean over a few runs after a warm-up) with impl="ref" and impl="cpu",
and the speed-ups. Shapes come from build_networks(cfg, 64, 1, cbase=8192, cmax=256), batch 8
(use --batch / --channels to shrink them on a busy machine).

    python perf/ops_cpu.py [--batch 8] [--channels 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from cellsynth.stylegan3.networks import build_networks
from cellsynth.stylegan3.ops import bias_act, conv2d_resample, filtered_lrelu, upfirdn2d


def _bench(fn, args, repeats, backward):
    def run():
        inputs = [a.detach().requires_grad_(backward) if a.is_floating_point() else a for a in args]
        out = fn(*inputs)
        if backward:
            out.backward(torch.ones_like(out))

    run()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return 1000 * (time.perf_counter() - start) / repeats


def _layer_cases(batch, channels):
    """(name, fn(impl) -> callable, args) for the distinct filtered_lrelu layers of sg3 t and r."""
    cases = []
    seen = set()
    for cfg in ("stylegan3-t", "stylegan3-r"):
        G, _ = build_networks(cfg, 64, 1, cbase=8192, cmax=256, seed=0)
        for layer in G.synthesis.layers:
            if layer.is_torgb:
                continue
            k = layer.conv_kernel
            size = layer.in_size + k - 1
            key = (cfg, size, layer.up_factor, layer.down_factor, layer.down_filter.ndim)
            if key in seen:
                continue
            seen.add(key)
            c = min(channels, layer.out_channels)
            name = (
                f"filtered_lrelu[{cfg} {c}ch {size}->{layer.out_size} up{layer.up_factor} "
                f"down{layer.down_factor} fd{'2d' if layer.down_filter.ndim == 2 else '1d'}]"
            )
            kwargs = dict(layer.filtered_lrelu_kwargs(), clamp=256)
            x = torch.randn(batch, c, size, size)
            b = torch.randn(c)
            cases.append(
                (
                    name,
                    lambda impl, kw=kwargs: (
                        lambda x_, b_: filtered_lrelu(x_, b=b_, impl=impl, **kw)
                    ),
                    (x, b),
                )
            )
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x = torch.randn(batch, min(channels, 128), 32, 32)
    cases.append(
        (
            "upsample2d[[1,3,3,1] 32->64]",
            lambda impl: lambda x: upfirdn2d.upsample2d(x, f, impl=impl),
            (x,),
        )
    )
    w = torch.randn(min(channels, 128), min(channels, 128), 3, 3)
    cases.append(
        (
            "conv2d_resample[3x3 down2 32->16]",
            lambda impl: lambda x, w: conv2d_resample(x, w, f, down=2, padding=1, impl=impl),
            (x, w),
        )
    )
    cases.append(
        (
            "conv2d_resample[3x3 up2 32->64]",
            lambda impl: lambda x, w: conv2d_resample(x, w, f, up=2, padding=1, impl=impl),
            (x, w),
        )
    )
    xb = torch.randn(batch, min(channels, 256), 84, 84)
    bb = torch.randn(xb.shape[1])
    cases.append(
        (
            "bias_act[lrelu clamp]",
            lambda impl: lambda x, b: bias_act(x, b, act="lrelu", clamp=256, impl=impl),
            (xb, bb),
        )
    )
    return cases


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--channels", type=int, default=256, help="cap on channels per layer")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    for name, make, inputs in _layer_cases(args.batch, args.channels):
        entry = {}
        for impl in ("ref", "cpu"):
            fn = make(impl)
            entry[f"{impl}_fwd_ms"] = round(_bench(fn, inputs, args.repeats, backward=False), 2)
            entry[f"{impl}_fwd_bwd_ms"] = round(_bench(fn, inputs, args.repeats, backward=True), 2)
        entry["speedup_fwd"] = round(entry["ref_fwd_ms"] / entry["cpu_fwd_ms"], 2)
        entry["speedup_fwd_bwd"] = round(entry["ref_fwd_bwd_ms"] / entry["cpu_fwd_bwd_ms"], 2)
        results[name] = entry
        print(json.dumps({name: entry}), flush=True)
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "batch": args.batch}
    print(json.dumps({"results": results, "info": info}, indent=1))


if __name__ == "__main__":
    main()
