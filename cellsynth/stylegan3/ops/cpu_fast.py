"""Fast path of the FIR ops, made only of differentiable torch ops (double backward works).

Separable (1-D) filters: each axis of ``upfirdn2d`` is a linear map of the samples along that
axis, so it is applied as one matrix product with a small banded matrix that already holds the
zero insertion, padding, FIR taps and decimation. The zeros of the upsampled signal and the
samples that decimation drops are never computed, and a matrix product runs at full GEMM speed
(instead of a depthwise convolution at the upsampled resolution).

2-D (non-separable) filters: polyphase convolutions, a transposed depthwise convolution with
stride ``up`` for upsampling and a strided depthwise convolution for downsampling.

Every entry of a resampling matrix is exactly one filter tap (or zero), so results equal the
reference up to float32 summation order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cellsynth.stylegan3.ops import cpu_kernels
from cellsynth.stylegan3.ops.common import upfirdn2d_output_size

_MATRIX_CACHE: dict = {}


def _taps(f, flip_filter, gain, dtype):
    """Correlation taps of ``f`` (flipped unless flip_filter) scaled by gain ** (ndim / 2)."""
    f = f * (gain ** (f.ndim / 2))
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    return f.to(dtype)


def resample_matrix(g, length, up, down, pad0, pad1):
    """Matrix M [L_out, L] with ``M @ x`` = upfirdn along one axis (correlation taps ``g``).

    Args:
        g: 1-D tensor of correlation taps (k entries).
        length: input length L; up, down: integer factors; pad0, pad1: padding (negative crops).

    Returns:
        tensor [L_out, L] in g's dtype and device, L_out = (L * up + pad0 + pad1 - k) // down + 1.
    """
    k = g.shape[0]
    out_len = (length * up + pad0 + pad1 - k) // down + 1
    cache = not g.requires_grad
    key = None
    if cache:
        key = (tuple(g.tolist()), g.dtype, g.device, length, up, down, pad0, pad1)
        if key in _MATRIX_CACHE:
            return _MATRIX_CACHE[key]
    j = torch.arange(out_len, device=g.device)[:, None]
    i = torch.arange(length, device=g.device)[None, :]
    idx = i * up + pad0 - j * down
    valid = (idx >= 0) & (idx < k)
    m = torch.where(valid, g[idx.clamp(0, k - 1)], torch.zeros((), dtype=g.dtype, device=g.device))
    if cache:
        if len(_MATRIX_CACHE) > 128:
            _MATRIX_CACHE.clear()
        _MATRIX_CACHE[key] = m
    return m


def _axis_w(x, m):
    """Apply M [W_out, W] along the last axis of x."""
    return torch.matmul(x, m.t())


def _axis_h(x, m):
    """Apply M [H_out, H] along the second-to-last axis of x."""
    return torch.matmul(m, x)


def _upfirdn2d_2d(x, g, up, down, padding):
    """Non-separable filter with polyphase depthwise convolutions (g: correlation taps)."""
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = padding
    c = x.shape[1]
    fh, fw = g.shape
    if upx > 1 or upy > 1:
        # conv_transpose with kernel flip(g) == correlation of the zero-inserted signal padded by
        # (k - 1, k - up); then adjust to the requested padding.
        kernel = g.flip([0, 1])[None, None].repeat(c, 1, 1, 1)
        x = F.conv_transpose2d(x, kernel, stride=(upy, upx), groups=c)
        qx0, qx1 = px0 - (fw - 1), px1 - (fw - upx)
        qy0, qy1 = py0 - (fh - 1), py1 - (fh - upy)
        x = _pad(x, qx0, qx1, qy0, qy1)
        return x[:, :, ::downy, ::downx]
    x = _pad(x, px0, px1, py0, py1)
    return F.conv2d(x, g[None, None].repeat(c, 1, 1, 1), stride=(downy, downx), groups=c)


def _pad(x, px0, px1, py0, py1):
    if px0 > 0 or px1 > 0 or py0 > 0 or py1 > 0:
        x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    if px0 < 0 or px1 < 0 or py0 < 0 or py1 < 0:
        x = x[
            :, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)
        ]
    return x


def _kernel_dtype(x):
    """The dtype of the kernels' taps for x: x's own, float32 for bfloat16 activations (the
    kernels sum bf16 in float32)."""
    return torch.float32 if x.dtype == torch.bfloat16 else x.dtype


def _use_kernels(x, *filters):
    """Whether the compiled kernels can run this call (taps that need no gradient)."""
    if any(f is not None and f.requires_grad for f in filters):
        return False
    return cpu_kernels.supports(x)


def _passes(x, g, up, down, padding):
    """The kernel passes of one upfirdn2d: [(taps [KH, KW], geometry), ...] for input x.

    A 1-D (separable) filter gives a pass along W then one along H; a 2-D filter one pass.
    """
    upx, upy = up
    downx, downy = down
    px0, _, py0, _ = padding
    h = x.shape[2]
    ho, wo = upfirdn2d_output_size(x, g, up, down, padding)
    if g.ndim == 2:
        return [(g, ((upy, downy, py0, ho), (upx, downx, px0, wo)))]
    return [
        (g[None, :], ((1, 1, 0, h), (upx, downx, px0, wo))),
        (g[:, None], ((upy, downy, py0, ho), (1, 1, 0, wo))),
    ]


def _run_passes(x, passes, bias=None, lrelu=None):
    """Run the passes (bias fused into the first, lrelu into the last); autograd when needed."""
    grad = torch.is_grad_enabled() and x.requires_grad
    if grad and bias is not None:
        x = x + bias.to(x.dtype).reshape(1, -1, 1, 1)
        bias = None
    last = len(passes) - 1
    for i, (g, geom) in enumerate(passes):
        act = lrelu if i == last else None
        if grad:
            if act is not None:
                x = cpu_kernels.up_lrelu(x, g, geom, *act)
            else:
                x = cpu_kernels.fir2d(x, g, geom)
        else:
            x = cpu_kernels.run_nograd(x, g, geom, bias=bias if i == 0 else None, lrelu=act)
    return x


def upfirdn2d(x, f, up, down, padding, flip_filter, gain):
    """Fast upfirdn2d; arguments already parsed (see upfirdn2d.upfirdn2d)."""
    if _use_kernels(x, f):
        g = _taps(f, flip_filter, gain, _kernel_dtype(x))
        return _run_passes(x, _passes(x, g, up, down, padding))
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = padding
    g = _taps(f, flip_filter, gain, x.dtype)
    if g.ndim == 2:
        if g.numel() == 1:
            if upx == upy == downx == downy == 1:
                x = _pad(x, px0, px1, py0, py1)
                return x if float(g[0, 0]) == 1 else x * g[0, 0]
            g1 = g[0]
            mw = resample_matrix(g1, x.shape[3], upx, downx, px0, px1)
            mh = resample_matrix(torch.ones_like(g1), x.shape[2], upy, downy, py0, py1)
            return _axis_h(_axis_w(x, mw), mh)
        return _upfirdn2d_2d(x, g, up, down, padding)
    mw = resample_matrix(g, x.shape[3], upx, downx, px0, px1)
    mh = resample_matrix(g, x.shape[2], upy, downy, py0, py1)
    return _axis_h(_axis_w(x, mw), mh)


class _ClampLeakyReLU(torch.autograd.Function):
    """leaky_relu(clamp(x, lo, hi), slope) that saves one byte per element for backward.

    The derivative is piecewise constant (0 where clamped, 1 where x > 0, slope elsewhere), so
    backward multiplies by it with ordinary torch ops, which keeps double backward (R1) working
    while the large upsampled activations need not stay in memory.
    """

    @staticmethod
    def forward(ctx, x, lo, hi, slope):
        y = x.clamp(lo, hi) if lo is not None or hi is not None else x.clone()
        code = (x > 0).to(torch.uint8)  # 1: slope 1, 0: slope `slope`, 2: clamped (slope 0)
        if lo is not None:
            code.masked_fill_(x < lo, 2)
        if hi is not None:
            code.masked_fill_(x > hi, 2)
        if slope != 1:
            F.leaky_relu_(y, slope)
        ctx.save_for_backward(code)
        ctx.slope = slope
        return y

    @staticmethod
    def backward(ctx, grad):
        (code,) = ctx.saved_tensors
        table = torch.tensor([ctx.slope, 1.0, 0.0], dtype=grad.dtype, device=grad.device)
        return grad * cpu_kernels.lookup_code(table, code), None, None, None


def _clamp_bounds(clamp, gain, slope):
    """Bounds (lo, hi) on the pre-activation equal to clamping gain * lrelu(v) to +-clamp
    (gain > 0, slope >= 0); None for an open side."""
    lo = -clamp / (gain * slope) if clamp >= 0 and slope > 0 else None
    hi = clamp / gain if clamp >= 0 else None
    return lo, hi


def filtered_lrelu(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter):
    """Fast filtered_lrelu; arguments already parsed (see filtered_lrelu.filtered_lrelu).

    The lrelu gain is moved into the down filter (the filter is linear, and for gain > 0
    clamp(lrelu(v) * gain, c) == gain * clamp(lrelu(v), c / gain)); the clamp is applied before
    the lrelu on the equivalent bounds, and one fused leaky_relu replaces compare/select.
    """
    if gain > 0 and slope >= 0 and _use_kernels(x, fu, fd):
        return _filtered_lrelu_kernels(
            x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter
        )
    storage = x.untyped_storage().data_ptr()
    if b is not None:
        x = x + b.to(x.dtype).reshape(1, -1, 1, 1)
    one = torch.ones([1, 1], device=x.device)
    x = upfirdn2d(x, fu if fu is not None else one, (up, up), (1, 1), padding, flip_filter, up**2)
    down_gain = gain
    if gain <= 0 or slope < 0:  # rare: keep the plain order
        down_gain = 1.0
        x = F.leaky_relu(x, slope) * gain if slope != 1 else x * gain
        if clamp >= 0:
            x = x.clamp(-clamp, clamp)
    elif torch.is_grad_enabled() and x.requires_grad:
        x = _ClampLeakyReLU.apply(x, *_clamp_bounds(clamp, gain, slope), slope)
    else:  # no autograd: update our own temporary in place (no new large buffers)
        if x.untyped_storage().data_ptr() == storage:
            x = x.clone()  # never modify the caller's tensor
        if clamp >= 0:
            x.clamp_(*_clamp_bounds(clamp, gain, slope))
        if slope != 1:
            F.leaky_relu_(x, slope)
    return upfirdn2d(
        x, fd if fd is not None else one, (1, 1), (down, down), (0, 0, 0, 0), flip_filter, down_gain
    )


def _filtered_lrelu_kernels(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter):
    """filtered_lrelu with the compiled kernels: bias fused into the first up pass, the clamped
    leaky ReLU into the last up pass, the lrelu gain folded into the down taps (gain > 0)."""
    dtype = _kernel_dtype(x)
    one = torch.ones([1, 1], dtype=dtype)
    gu = _taps(fu if fu is not None else one, flip_filter, up**2, dtype)
    gd = _taps(fd if fd is not None else one, flip_filter, 1, dtype)
    gd = gd * gain ** (gd.ndim / 2)  # in x's precision, as the reference scales activations
    lo, hi = _clamp_bounds(clamp, gain, slope)
    x = _run_passes(x, _passes(x, gu, (up, up), (1, 1), padding), bias=b, lrelu=(lo, hi, slope))
    return _run_passes(x, _passes(x, gd, (1, 1), (down, down), (0, 0, 0, 0)))


def _weight_grad(x, g, padding, kh, kw):
    """dL/dw of a stride-1, ungrouped conv2d(x, w, padding) given dL/dy = g, on the CPU.

    With x zero-padded and both tensors laid out as rows of channels (one row per pixel of the
    padded grid, g padded with zeros to the same grid), the weight gradient of tap (a, b) is the
    product g_rows^T @ x_rows shifted by a * Wp + b rows. Each product runs as a 1x1 convolution
    (oneDNN: about 2.5x the speed of the generic backward-weights kernel or of a BLAS matmul on
    the machines this was measured on). Only differentiable torch ops: double backward works.
    """
    n, ci, h, w = x.shape
    co, ho, wo = g.shape[1:]
    hp, wp = h + 2 * padding[0], w + 2 * padding[1]
    m = n * hp * wp
    xp = F.pad(x, [padding[1], padding[1], padding[0], padding[0]])
    xr = xp.permute(0, 2, 3, 1).reshape(m, ci)
    xr = torch.cat([xr, xr.new_zeros((kh - 1) * wp + kw - 1, ci)])
    gt = F.pad(g, [0, wp - wo, 0, hp - ho]).permute(1, 0, 2, 3).reshape(co, m)
    gt = gt.contiguous().reshape(co, m, 1, 1)  # once here, not once per tap inside conv2d
    taps = []
    for a in range(kh):
        for b in range(kw):
            s = a * wp + b
            taps.append(F.conv2d(xr[s : s + m].reshape(1, m, ci, 1), gt).reshape(co, ci))
    return torch.stack(taps, dim=2).reshape(co, ci, kh, kw)


class _Conv2d(torch.autograd.Function):
    """conv2d (stride 1, no groups) whose backward uses forward-type oneDNN convolutions."""

    @staticmethod
    def forward(ctx, x, w, padding):
        ctx.padding = padding
        ctx.save_for_backward(x, w)
        return F.conv2d(x, w, padding=padding)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        ph, pw = ctx.padding
        kh, kw = w.shape[2:]
        gx = gw = None
        if ctx.needs_input_grad[0]:
            wt = w.flip([2, 3]).transpose(0, 1)
            gx = F.conv2d(g, wt, padding=(kh - 1 - ph, kw - 1 - pw))
        if ctx.needs_input_grad[1]:
            gw = _weight_grad(x, g, (ph, pw), kh, kw)
        return gx, gw, None


def conv2d(x, w, padding=(0, 0)):
    """F.conv2d(x, w, padding) with a faster backward for float32 CPU tensors (stride 1).

    Used where it was measured faster than torch's own backward (2 cores, oneDNN 3.13): the
    StyleGAN3 synthesis convolutions, k x k with padding k - 1 (8 x 256 x 84 x 84, 3 x 3:
    forward + backward 0.98 s -> 0.51 s). Other convolutions go to F.conv2d unchanged.
    """
    ph, pw = padding
    kh, kw = w.shape[2:]
    if (
        x.device.type != "cpu"
        or x.dtype != torch.float32
        or w.dtype != torch.float32
        or not torch.is_grad_enabled()
        or not (x.requires_grad or w.requires_grad)
        or (ph, pw) != (kh - 1, kw - 1)  # measured faster only for this "full" padding
        or kh * kw == 1
    ):
        return F.conv2d(x, w, padding=padding)
    return _Conv2d.apply(x, w, (ph, pw))
