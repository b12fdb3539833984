"""The StyleGAN3 ops on custom CUDA kernels (``ops/cuda``), as autograd Functions.

``bias_act_cuda``, ``upfirdn2d_cuda`` and ``filtered_lrelu_cuda`` take the arguments of the public
ops (``bias_act``, ``upfirdn2d``, ``filtered_lrelu``) minus ``impl`` and compute the same values
for float32 / float16 CUDA tensors (the accumulation is float32 in every kernel).

Gradients:

- bias_act: backward is another autograd Function (first derivative kernel) whose own backward
  uses the first and second derivative kernels, so double backward (R1) works; a third order
  raises an error.
- upfirdn2d: the gradient of upfirdn2d is upfirdn2d with up/down swapped, the filter flipped and
  adjusted padding, computed by the same Function, so every order works. No gradient for ``f``.
- filtered_lrelu: the forward keeps 2 bits per upsampled sample (negative, clamped) instead of
  the upsampled activation; first-order gradients for ``x`` and ``b`` (not for the filters).

The extensions are compiled at first use (see ``cuda_build``).
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from cellsynth.errors import CellsynthError
from cellsynth.stylegan3.ops import cuda_build
from cellsynth.stylegan3.ops.common import (
    get_filter_size,
    parse_filtered_lrelu,
    parse_padding,
    parse_scaling,
    upfirdn2d_output_size,
)

# Activation codes of the kernel (bias_act.h) with their default alpha and gain.
ACT_CODES = {
    "linear": (0, 0.0, 1.0),
    "relu": (1, 0.0, math.sqrt(2)),
    "lrelu": (2, 0.2, math.sqrt(2)),
    "tanh": (3, 0.0, 1.0),
    "sigmoid": (4, 0.0, 1.0),
    "elu": (5, 0.0, 1.0),
    "selu": (6, 0.0, 1.0),
    "softplus": (7, 0.0, 1.0),
    "swish": (8, 0.0, math.sqrt(2)),
}
# Activations whose second derivative is zero almost everywhere.
_PIECEWISE_LINEAR = ("linear", "relu", "lrelu")
_DTYPES = (torch.float32, torch.float16)


def build(name: str, verbose: bool = False):
    """Compile (if needed) and load the CUDA extension ``name``; CellsynthError on failure."""
    return cuda_build.build(name, verbose=verbose)


def cuda_ops_available(name: str) -> bool:
    """True when a CUDA device is present and extension ``name`` builds and loads.

    A failed build gives one warning (with the compiler log tail) and then False.
    """
    if name not in cuda_build.SOURCES:
        raise CellsynthError(
            f"unknown CUDA op {name!r}; use one of {', '.join(cuda_build.SOURCES)}"
        )
    if not torch.cuda.is_available():
        return False
    return cuda_build.try_build(name) is not None


def _check_tensor(x, op, ndim=None):
    if not isinstance(x, torch.Tensor):
        raise CellsynthError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise CellsynthError(f"{op}: x must be a {ndim}-D tensor, got shape {tuple(x.shape)}")
    if not x.is_cuda:
        raise CellsynthError(f"{op}: the CUDA implementation needs a CUDA tensor; use impl='ref'")
    if x.dtype not in _DTYPES:
        raise CellsynthError(
            f"{op}: the CUDA implementation supports float32 and float16, got {x.dtype}; "
            "use impl='ref'"
        )


def _filter_on(f, x):
    """float32 contiguous filter on x's device (identity [1, 1] for None)."""
    if f is None:
        return torch.ones([1, 1], dtype=torch.float32, device=x.device)
    get_filter_size(f)
    return f.to(device=x.device, dtype=torch.float32).contiguous()


# ------------------------------------------------------------------------------------------------
# bias_act


def _bias_layout(x, dim, has_bias):
    """(stride, size) with bias index = (flat index // stride) % size."""
    if not has_bias:
        return 1, 1
    stride = 1
    for s in x.shape[dim + 1 :]:
        stride *= int(s)
    return max(stride, 1), max(int(x.shape[dim]), 1)


def _bias_grad(dx, dim):
    dims = [i for i in range(dx.ndim) if i != dim]
    return dx.float().sum(dim=dims) if dims else dx.float()


def _run_bias_act(mode, x, g, b, cfg):
    dim, act, alpha, gain, clamp = cfg
    if x.numel() == 0:
        return torch.empty_like(x, memory_format=torch.contiguous_format)
    stride, size = _bias_layout(x, dim, b is not None)
    x = x.contiguous()
    g = g.to(x.dtype).contiguous() if g is not None else None
    b = b.detach().to(device=x.device, dtype=torch.float32).contiguous() if b is not None else None
    ext = cuda_build.build("bias_act")
    return ext.bias_act(x, g, b, stride, size, ACT_CODES[act][0], mode, alpha, gain, clamp)


class _BiasAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, cfg):
        ctx.cfg = cfg
        ctx.save_for_backward(x, b)
        return _run_bias_act(0, x, None, b, cfg)

    @staticmethod
    def backward(ctx, dy):
        x, b = ctx.saved_tensors
        dx = db = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            dx = _BiasActGrad.apply(dy, x, b, ctx.cfg)
        if ctx.needs_input_grad[1]:
            db = _bias_grad(dx, ctx.cfg[0]).to(device=b.device, dtype=b.dtype)
        return (dx if ctx.needs_input_grad[0] else None), db, None


class _BiasActGrad(torch.autograd.Function):
    """dx = dy * act'(x + b) * gain * [not clamped], differentiable once more."""

    @staticmethod
    def forward(ctx, dy, x, b, cfg):
        ctx.cfg = cfg
        ctx.save_for_backward(dy, x, b)
        return _run_bias_act(1, x, dy, b, cfg)

    @staticmethod
    def backward(ctx, ddx):
        dy, x, b = ctx.saved_tensors
        cfg = ctx.cfg
        d_dy = d_x = d_b = None
        if ctx.needs_input_grad[0]:
            d_dy = _BiasActGrad.apply(ddx, x, b, cfg)
        if cfg[1] not in _PIECEWISE_LINEAR and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
            d_x = _BiasActGrad2.apply(ddx * dy, x, b, cfg)
            if ctx.needs_input_grad[2]:
                d_b = _bias_grad(d_x, cfg[0]).to(device=b.device, dtype=b.dtype)
        return d_dy, (d_x if ctx.needs_input_grad[1] else None), d_b, None


class _BiasActGrad2(torch.autograd.Function):
    """g * act''(x + b) * gain * [not clamped] (no further derivative)."""

    @staticmethod
    def forward(ctx, g, x, b, cfg):
        return _run_bias_act(2, x, g, b, cfg)

    @staticmethod
    def backward(ctx, _):
        raise CellsynthError(
            "bias_act (CUDA): gradients of order 3 and above are not implemented; use impl='ref'"
        )


def bias_act_cuda(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None):
    """CUDA bias_act: ``clamp(act(x + b) * gain)``; arguments as in ``ops.bias_act``.

    Returns:
        a tensor with the shape and dtype of ``x``.
    """
    _check_tensor(x, "bias_act")
    if act not in ACT_CODES:
        raise CellsynthError(f"bias_act: unknown activation {act!r}; use one of {list(ACT_CODES)}")
    if b is not None:
        if not isinstance(b, torch.Tensor) or b.ndim != 1 or not 0 <= dim < x.ndim:
            raise CellsynthError("bias_act: b must be a 1-D tensor and dim a dimension of x")
        if b.shape[0] != x.shape[dim]:
            raise CellsynthError(
                f"bias_act: bias of shape {tuple(b.shape)} does not match dim {dim} of x "
                f"{tuple(x.shape)}"
            )
    _, def_alpha, def_gain = ACT_CODES[act]
    alpha = float(alpha if alpha is not None else def_alpha)
    gain = float(gain if gain is not None else def_gain)
    clamp = float(clamp if clamp is not None else -1)
    return _BiasAct.apply(x, b, (int(dim), act, alpha, gain, clamp))


# ------------------------------------------------------------------------------------------------
# upfirdn2d


def _adjoint_padding(in_size, out_size, f, up, down, padding):
    """Padding of the upfirdn2d that computes the gradient (up and down swapped)."""
    fw, fh = get_filter_size(f)
    px0, _, py0, _ = padding
    (h, w), (oh, ow) = in_size, out_size
    return (
        fw - 1 - px0,
        w * up[0] - ow * down[0] + px0 - up[0] + 1,
        fh - 1 - py0,
        h * up[1] - oh * down[1] + py0 - up[1] + 1,
    )


class _UpFirDn2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, f, up, down, padding, flip, gain):
        ext = cuda_build.build("upfirdn2d")
        y = ext.upfirdn2d(x.contiguous(), f, *up, *down, *padding, bool(flip), float(gain))
        ctx.save_for_backward(f)
        ctx.cfg = (tuple(x.shape[2:]), tuple(y.shape[2:]), up, down, padding, flip, gain)
        return y

    @staticmethod
    def backward(ctx, dy):
        (f,) = ctx.saved_tensors
        in_size, out_size, up, down, padding, flip, gain = ctx.cfg
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None, None
        pad = _adjoint_padding(in_size, out_size, f, up, down, padding)
        dx = _UpFirDn2d.apply(dy, f, down, up, pad, not flip, gain)
        return dx, None, None, None, None, None, None


def upfirdn2d_cuda(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1):
    """CUDA upfirdn2d; arguments as in ``ops.upfirdn2d.upfirdn2d`` (without impl).

    Returns:
        tensor [N, C, H', W'] with the dtype of ``x``.
    """
    _check_tensor(x, "upfirdn2d", ndim=4)
    f = _filter_on(f, x)
    up, down, padding = parse_scaling(up), parse_scaling(down), parse_padding(padding)
    upfirdn2d_output_size(x, f, up, down, padding)
    return _UpFirDn2d.apply(x, f, up, down, padding, bool(flip_filter), float(gain))


# ------------------------------------------------------------------------------------------------
# filtered_lrelu


class _FilteredLrelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fu, fd, b, cfg):
        up, down, padding, gain, slope, clamp, flip = cfg
        ext = cuda_build.build("filtered_lrelu")
        bf = (
            b.detach().to(device=x.device, dtype=torch.float32).contiguous()
            if b is not None
            else None
        )
        y, signs = ext.forward(
            x.contiguous(), fu, fd, bf, up, down, *padding, gain, slope, clamp, flip
        )
        ctx.save_for_backward(fu, fd, signs)
        ctx.cfg = cfg
        ctx.in_size = tuple(x.shape[2:])
        ctx.b_dtype = b.dtype if b is not None else None
        ctx.b_device = b.device if b is not None else None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        fu, fd, signs = ctx.saved_tensors
        up, down, padding, gain, slope, _, flip = ctx.cfg
        dx = db = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[3]:
            ext = cuda_build.build("filtered_lrelu")
            dx = ext.backward(
                dy.contiguous(), fu, fd, signs, *ctx.in_size, up, down, *padding, gain, slope, flip
            )
        if ctx.needs_input_grad[3]:
            db = dx.float().sum(dim=[0, 2, 3]).to(device=ctx.b_device, dtype=ctx.b_dtype)
        return (dx if ctx.needs_input_grad[0] else None), None, None, db, None


def filtered_lrelu_cuda(
    x,
    fu=None,
    fd=None,
    b=None,
    up=1,
    down=1,
    padding=0,
    gain=math.sqrt(2),
    slope=0.2,
    clamp=None,
    flip_filter=False,
):
    """CUDA filtered_lrelu; arguments as in ``ops.filtered_lrelu.filtered_lrelu`` (without impl).

    Returns:
        tensor [N, C, H', W'] with the dtype of ``x``.
    """
    _check_tensor(x, "filtered_lrelu", ndim=4)
    up, down, padding, clamp = parse_filtered_lrelu(x, fu, fd, up, down, padding, clamp)
    fu, fd = _filter_on(fu, x), _filter_on(fd, x)
    if b is not None and (not isinstance(b, torch.Tensor) or b.shape != (x.shape[1],)):
        raise CellsynthError(f"filtered_lrelu: b must be a tensor [{x.shape[1]}]")
    cfg = (up, down, padding, float(gain), float(slope), clamp, bool(flip_filter))
    return _FilteredLrelu.apply(x, fu, fd, b, cfg)
