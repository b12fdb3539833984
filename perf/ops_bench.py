"""Speed of the custom CUDA ops against the pure-PyTorch reference (GPU).

Prints one JSON object: forward + backward time (ms) of each op, ``ref`` and ``cuda``, in fp32
and fp16, at the shapes of a stylegan3-t network at 256x256 with batch 32:

- filtered_lrelu: every synthesis layer (input [N, C, in_size + k - 1, ...], its up/down filters,
  factors and padding, clamp 256);
- upfirdn2d: the discriminator's 2x downsampling (4x4 filter) at every resolution, and the
  generator layers' upsampling pass (up filter, up factor, padding) on their input;
- bias_act: the discriminator's conv outputs (lrelu, clamp 256) and the mapping network
  ([N, 512], lrelu).

    python perf/ops_bench.py [--batch 32] [--res 256] [--iters 10] [--dtypes fp32,fp16]
    python perf/ops_bench.py --smoke     # tiny shapes; on a machine without CUDA: ref only

Each case is also printed to stderr as one JSON line the moment it is measured.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
import time

import torch

from cellsynth.stylegan3.networks import build_networks
from cellsynth.stylegan3.ops import cuda_ops
from cellsynth.stylegan3.ops.bias_act import bias_act
from cellsynth.stylegan3.ops.filtered_lrelu import filtered_lrelu
from cellsynth.stylegan3.ops.upfirdn2d import setup_filter, upfirdn2d

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_ms(fn, device, warmup, iters):
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / iters * 1e3


def _fwd_bwd(op, x, dy_seed=0, **kw):
    """A closure that runs op(x) forward and backward (gradient for x and b when given)."""
    x = x.detach().requires_grad_()
    b = kw.pop("b", None)
    if b is not None:
        b = b.detach().requires_grad_()
        kw["b"] = b
    with torch.no_grad():
        y0 = op(x, **kw)
    g = torch.Generator(device="cpu").manual_seed(dy_seed)
    dy = torch.randn(y0.shape, generator=g).to(device=x.device, dtype=y0.dtype)
    del y0

    def run():
        y = op(x, **kw)
        y.backward(dy)
        x.grad = None
        if b is not None:
            b.grad = None

    return run


def _filtered_lrelu_cases(G, batch):
    cases = []
    for i, layer in enumerate(G.synthesis.layers):
        size = layer.in_size + layer.conv_kernel - 1
        cases.append(
            dict(
                name=f"L{i}_{layer.out_channels}x{layer.in_size}->{layer.out_size}"
                f"_up{layer.up_factor}_down{layer.down_factor}",
                shape=(batch, layer.out_channels, size, size),
                kw=layer.filtered_lrelu_kwargs(),
            )
        )
    return cases


def _disc_shapes(batch, res, cbase, cmax):
    shapes = []
    r = res
    while r >= 4:
        shapes.append((batch, min(cbase // r, cmax), r, r))
        r //= 2
    return shapes


def _bench(op_name, impl, fn_ref, fn_cuda, x, kw, device, warmup, iters):
    op = fn_ref if impl == "ref" else fn_cuda
    try:
        ms = _time_ms(_fwd_bwd(op, x, **dict(kw)), device, warmup, iters)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None
    return round(ms, 4)


def _time_impls(op, fn_cuda, x, kw, impls, device, args) -> dict:
    """{IMPL_ms: milliseconds (None: out of memory)} of one case of the public ``op`` (run with
    impl="ref") and its CUDA function ``fn_cuda``, for each of ``impls``."""
    fn_ref = functools.partial(op, impl="ref")
    return {
        f"{impl}_ms": _bench(
            op.__name__, impl, fn_ref, fn_cuda, x, kw, device, args.warmup, args.iters
        )
        for impl in impls
    }


def _totals(results, impls) -> dict:
    """The summed times of each op and dtype, and their speed-up."""
    totals = {}
    for r in results:
        key = f"{r['op']}/{r['dtype']}"
        tot = totals.setdefault(key, {f"{i}_ms": 0.0 for i in impls})
        for i in impls:
            tot[f"{i}_ms"] = round(tot[f"{i}_ms"] + (r.get(f"{i}_ms") or 0.0), 4)
    for tot in totals.values():
        if tot.get("cuda_ms"):
            tot["speedup"] = round(tot["ref_ms"] / tot["cuda_ms"], 2)
    return totals


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--cbase", type=int, default=32768)
    ap.add_argument("--cmax", type=int, default=512)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--dtypes", default="fp32,fp16")
    ap.add_argument("--ops", default="filtered_lrelu,upfirdn2d,bias_act")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (batch 2, 32x32)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.batch, args.res, args.cbase, args.cmax, args.iters, args.warmup = 2, 32, 512, 16, 1, 0

    has_cuda = torch.cuda.is_available()
    device = torch.device("cuda" if has_cuda else "cpu")
    impls = ["ref", "cuda"] if has_cuda else ["ref"]
    dtypes = [d for d in args.dtypes.split(",") if d]
    if not has_cuda:
        dtypes = ["fp32"]
    ops = args.ops.split(",")

    build_s = {}
    if has_cuda:
        for name in ops:
            t0 = time.perf_counter()
            cuda_ops.build(name)
            build_s[name] = round(time.perf_counter() - t0, 2)

    G, _ = build_networks(
        "stylegan3-t",
        img_resolution=args.res,
        img_channels=1,
        cbase=args.cbase,
        cmax=args.cmax,
        seed=0,
    )
    G = G.to(device)
    results = []

    def record(op, name, shape, dtype, timings):
        row = dict(op=op, case=name, shape=list(shape), dtype=dtype, **timings)
        if timings.get("ref_ms") and timings.get("cuda_ms"):
            row["speedup"] = round(timings["ref_ms"] / timings["cuda_ms"], 2)
        results.append(row)
        # one line per case as it finishes, so a run stopped by a time limit still reports
        print(json.dumps(row), file=sys.stderr, flush=True)

    gen = torch.Generator(device="cpu").manual_seed(0)
    for dname in dtypes:
        dtype = DTYPES[dname]
        if "filtered_lrelu" in ops:
            for case in _filtered_lrelu_cases(G, args.batch):
                x = torch.randn(case["shape"], generator=gen).to(device=device, dtype=dtype)
                b = torch.randn(case["shape"][1], generator=gen).to(device=device, dtype=dtype)
                kw = dict(case["kw"], b=b)
                t = _time_impls(
                    filtered_lrelu, cuda_ops.filtered_lrelu_cuda, x, kw, impls, device, args
                )
                record("filtered_lrelu", case["name"], case["shape"], dname, t)
                del x
        if "upfirdn2d" in ops:
            f = setup_filter([1, 3, 3, 1], device=device)
            ups = [
                (f"G_up_{c['name']}", c["shape"], c["kw"])
                for c in _filtered_lrelu_cases(G, args.batch)
                if c["kw"]["up"] > 1
            ]
            downs = [
                (f"D_down_{s[1]}x{s[2]}", s, None)
                for s in _disc_shapes(args.batch, args.res, args.cbase, args.cmax)
                if s[2] > 4
            ]
            for name, shape, lkw in ups + downs:
                if lkw is None:
                    kw = dict(f=f, down=2, padding=1)
                else:
                    kw = dict(
                        f=lkw["fu"], up=lkw["up"], padding=lkw["padding"], gain=lkw["up"] ** 2
                    )
                x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
                t = _time_impls(upfirdn2d, cuda_ops.upfirdn2d_cuda, x, kw, impls, device, args)
                record("upfirdn2d", name, shape, dname, t)
                del x
        if "bias_act" in ops:
            shapes = [
                (f"D_conv_{s[1]}x{s[2]}", s)
                for s in _disc_shapes(args.batch, args.res, args.cbase, args.cmax)
            ]
            shapes.append(("mapping_512", (args.batch, 512)))
            for name, shape in shapes:
                x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
                b = torch.randn(shape[1], generator=gen).to(device=device, dtype=torch.float32)
                kw = dict(b=b, act="lrelu", clamp=256.0)
                t = _time_impls(bias_act, cuda_ops.bias_act_cuda, x, kw, impls, device, args)
                record("bias_act", name, shape, dname, t)
                del x

    totals = _totals(results, impls)
    out = dict(
        what="forward+backward time per call (ms), ref vs cuda, stylegan3-t layer shapes",
        device=torch.cuda.get_device_name(device) if has_cuda else platform.processor() or "cpu",
        torch=torch.__version__,
        batch=args.batch,
        resolution=args.res,
        iters=args.iters,
        build_s=build_s,
        totals=totals,
        results=results,
    )
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
