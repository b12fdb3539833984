"""Upsample, pad, FIR-filter and downsample 2-D images (the StyleGAN ``upfirdn2d`` op).

For each channel of ``x`` [N, C, H, W]:

1. upsample by inserting ``up - 1`` zeros after every sample (size H * up),
2. pad with zeros (negative padding crops),
3. convolve with the FIR filter ``f`` (true convolution; correlation with ``flip_filter=True``),
   keeping only fully overlapping positions,
4. keep every ``down``-th sample.

The output height is ``(H * upy + py0 + py1 - fh) // downy + 1`` (same for the width).
A 1-D filter means the separable filter ``f[:, None] * f[None, :]`` applied as two 1-D passes.
The filter is scaled by ``gain ** (f.ndim / 2)`` per pass so that the total gain is ``gain``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cellsynth.errors import CellsynthError
from cellsynth.stylegan3.ops import cpu_fast, cuda_ops
from cellsynth.stylegan3.ops._impl import resolve_impl
from cellsynth.stylegan3.ops.common import (  # noqa: F401 (parse_* re-exported)
    get_filter_size,
    parse_padding,
    parse_scaling,
    upfirdn2d_output_size,
)


def setup_filter(f, device=None, normalize=True, flip_filter=False, gain=1, separable=None):
    """Make a filter tensor for upfirdn2d.

    Args:
        f: None (identity), a scalar, a 1-D or 2-D array-like of taps.
        device: torch device of the result.
        normalize: divide by the sum of the taps (sum of the 2-D filter = 1).
        flip_filter: flip the taps (turns convolution into correlation).
        gain: overall gain; a separable filter gets ``sqrt(gain)`` per pass.
        separable: keep a 1-D filter separable (default: when it has >= 8 taps); otherwise
            a 1-D filter becomes its 2-D outer product.

    Returns:
        float32 tensor [taps] (separable) or [fh, fw].
    """
    if f is None:
        f = 1
    f = torch.as_tensor(np.asarray(f, dtype=np.float32) if not isinstance(f, torch.Tensor) else f)
    f = f.to(torch.float32)
    if f.ndim == 0:
        f = f[np.newaxis]
    if f.ndim not in (1, 2) or f.numel() == 0:
        raise CellsynthError(
            f"filter must have 1 or 2 dimensions and some taps, got {tuple(f.shape)}"
        )
    if not torch.isfinite(f).all():
        raise CellsynthError("filter taps must be finite")
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if normalize:
        s = f.sum()
        if float(s) == 0:
            raise CellsynthError("cannot normalise a filter whose taps sum to zero")
        f = f / s
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


def _check_inputs(x, f):
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise CellsynthError(
            f"upfirdn2d: x must be a 4-D tensor [N, C, H, W], got {getattr(x, 'shape', x)}"
        )
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    get_filter_size(f)
    if f.dtype != torch.float32:
        raise CellsynthError("upfirdn2d: filter must be float32 (use setup_filter)")
    return f


def _upfirdn2d_ref(x, f, up, down, padding, flip_filter, gain):
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = padding
    n, c, h, w = x.shape
    # 1. zero insertion
    x = x.reshape(n, c, h, 1, w, 1)
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
    x = x.reshape(n, c, h * upy, w * upx)
    # 2. pad / crop
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]
    # 3. FIR filter (conv2d correlates, so flip for a true convolution)
    f = f * (gain ** (f.ndim / 2))
    f = f.to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].repeat(c, 1, 1, 1), groups=c)
    else:
        x = F.conv2d(x, f[None, None, None, :].repeat(c, 1, 1, 1), groups=c)
        x = F.conv2d(x, f[None, None, :, None].repeat(c, 1, 1, 1), groups=c)
    # 4. decimate
    return x[:, :, ::downy, ::downx]


def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl="auto"):
    """Upsample, pad, filter and downsample a batch of images (see module docstring).

    Args:
        x: tensor [N, C, H, W].
        f: filter from setup_filter, 1-D (separable) or 2-D [fh, fw], or None (identity).
        up: int or (upx, upy) zero-insertion factor.
        down: int or (downx, downy) decimation factor.
        padding: int, (px, py) or (px0, px1, py0, py1); negative values crop.
        flip_filter: False = convolution, True = correlation.
        gain: overall signal gain (e.g. up**2 to keep the mean after zero insertion).
        impl: "auto", "ref", "cpu" or "cuda".

    Returns:
        tensor [N, C, H', W'] with the dtype of ``x``.
    """
    f = _check_inputs(x, f)
    up, down, padding = parse_scaling(up), parse_scaling(down), parse_padding(padding)
    upfirdn2d_output_size(x, f, up, down, padding)
    which = resolve_impl(impl, x, "upfirdn2d")
    if which == "cuda":
        return cuda_ops.upfirdn2d_cuda(x, f, up, down, padding, flip_filter, gain)
    if which == "ref":
        return _upfirdn2d_ref(x, f, up, down, padding, flip_filter, gain)
    return cpu_fast.upfirdn2d(x, f, up, down, padding, flip_filter, gain)


def filter2d(x, f, padding=0, flip_filter=False, gain=1, impl="auto"):
    """Filter a batch of images, keeping their size (plus ``padding``).

    Args:
        x: tensor [N, C, H, W]; f: filter (setup_filter); padding: extra padding as in upfirdn2d;
        flip_filter, gain, impl: as in upfirdn2d.

    Returns:
        tensor [N, C, H + py0 + py1, W + px0 + px1].
    """
    px0, px1, py0, py1 = parse_padding(padding)
    fw, fh = get_filter_size(f)
    p = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1, impl="auto"):
    """Upsample a batch of images by ``up`` with filter ``f`` (keeps the mean: gain * up**2).

    Returns:
        tensor [N, C, H * upy + py0 + py1, W * upx + px0 + px1].
    """
    upx, upy = parse_scaling(up)
    px0, px1, py0, py1 = parse_padding(padding)
    fw, fh = get_filter_size(f)
    p = [
        px0 + (fw + upx - 1) // 2,
        px1 + (fw - upx) // 2,
        py0 + (fh + upy - 1) // 2,
        py1 + (fh - upy) // 2,
    ]
    return upfirdn2d(
        x, f, up=(upx, upy), padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl
    )


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1, impl="auto"):
    """Downsample a batch of images by ``down`` after filtering with ``f``.

    Returns:
        tensor [N, C, (H + py0 + py1) // downy, (W + px0 + px1) // downx].
    """
    downx, downy = parse_scaling(down)
    px0, px1, py0, py1 = parse_padding(padding)
    fw, fh = get_filter_size(f)
    p = [
        px0 + (fw - downx + 1) // 2,
        px1 + (fw - downx) // 2,
        py0 + (fh - downy + 1) // 2,
        py1 + (fh - downy) // 2,
    ]
    return upfirdn2d(
        x, f, down=(downx, downy), padding=p, flip_filter=flip_filter, gain=gain, impl=impl
    )
