"""Filtered leaky ReLU of StyleGAN3 (alias-free nonlinearity).

``y = down(FIR_d(clamp(lrelu(FIR_u(up(pad(x + b))) * gain))))``: add the bias, upsample by
``up`` with filter ``fu`` (gain ``up**2``), apply the leaky ReLU with ``slope`` scaled by ``gain``
and clamped to [-clamp, clamp], then filter with ``fd`` and keep every ``down``-th sample.
The padding is applied once, before the upsampling filter.
"""

from __future__ import annotations

import math

import torch

from cellsynth.errors import CellsynthError
from cellsynth.stylegan3.ops import cpu_fast, cuda_ops
from cellsynth.stylegan3.ops._impl import resolve_impl
from cellsynth.stylegan3.ops.bias_act import bias_act
from cellsynth.stylegan3.ops.common import filtered_lrelu_output_size, parse_filtered_lrelu
from cellsynth.stylegan3.ops.upfirdn2d import upfirdn2d


def _filtered_lrelu_ref(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter):
    x = bias_act(x, b, impl="ref")
    x = upfirdn2d(x, fu, up=up, padding=padding, flip_filter=flip_filter, gain=up**2, impl="ref")
    x = bias_act(x, act="lrelu", alpha=slope, gain=gain, clamp=clamp, impl="ref")
    x = upfirdn2d(x, fd, down=down, flip_filter=flip_filter, impl="ref")
    return x


def output_size(in_size, fu, fd, up, down, padding):
    """(H, W) of filtered_lrelu's output for an input of size (H, W)."""
    return filtered_lrelu_output_size(in_size, fu, fd, up, down, padding)


def filtered_lrelu(
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
    impl="auto",
):
    """Bias, upsample, FIR, leaky ReLU, clamp, FIR, downsample.

    Args:
        x: tensor [N, C, H, W].
        fu: upsampling filter (setup_filter; 1-D separable or 2-D), None = identity.
        fd: downsampling filter, None = identity.
        b: bias [C] or None.
        up: integer upsampling factor (same on both axes).
        down: integer downsampling factor.
        padding: int, (px, py) or (px0, px1, py0, py1), applied after the zero insertion.
        gain: gain of the leaky ReLU (sqrt(2) keeps the variance).
        slope: negative slope of the leaky ReLU.
        clamp: clamp the nonlinearity's output to [-clamp, clamp]; None = no clamping.
        flip_filter: False = convolution, True = correlation.
        impl: "auto", "ref", "cpu" or "cuda".

    Returns:
        tensor [N, C, H', W'] (see ``output_size``).
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise CellsynthError(
            f"filtered_lrelu: x must be a 4-D tensor, got {getattr(x, 'shape', x)}"
        )
    up, down, padding, clamp = parse_filtered_lrelu(x, fu, fd, up, down, padding, clamp)
    gain, slope = float(gain), float(slope)
    which = resolve_impl(impl, x, "filtered_lrelu")
    if which == "cuda":
        clamp_arg = clamp if clamp >= 0 else None
        return cuda_ops.filtered_lrelu_cuda(
            x, fu, fd, b, up, down, padding, gain, slope, clamp_arg, flip_filter
        )
    if which == "ref":
        return _filtered_lrelu_ref(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter)
    return cpu_fast.filtered_lrelu(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter)
