"""2-D convolution with optional FIR up/downsampling (the StyleGAN ``conv2d_resample`` op).

Defined as: ``upfirdn2d(x, f, up, padding', gain=up**2)`` (zero insertion + filter, only when
``up > 1``) -> ``conv2d(w, groups)`` -> ``upfirdn2d(f, down)`` (filter + decimation, only when
``down > 1``), where ``padding'`` is ``padding`` widened so that the filters stay centred.
The reference runs exactly this; the fast path uses a transposed convolution for ``up`` and a
strided convolution for ``down`` so the zeros and dropped samples are never computed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cellsynth.errors import CellsynthError
from cellsynth.stylegan3.ops import cpu_fast
from cellsynth.stylegan3.ops._impl import resolve_impl
from cellsynth.stylegan3.ops.common import get_filter_size, parse_padding, parse_square_scaling
from cellsynth.stylegan3.ops.upfirdn2d import upfirdn2d


def _conv(x, w, groups, flip_weight, padding=0, stride=1, fast=False):
    if not flip_weight:
        w = w.flip([2, 3])
    if fast and groups == 1 and stride == 1:
        pad = (padding, padding) if isinstance(padding, int) else tuple(padding)
        return cpu_fast.conv2d(x, w.to(x.dtype), pad)
    return F.conv2d(x, w.to(x.dtype), padding=padding, stride=stride, groups=groups)


def _full_padding(f, up, down, padding):
    fw, fh = get_filter_size(f)
    px0, px1, py0, py1 = padding
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2
    return px0, px1, py0, py1


def _conv2d_resample_ref(x, w, f, up, down, padding, groups, flip_weight, flip_filter):
    px0, px1, py0, py1 = _full_padding(f, up, down, padding)
    x = upfirdn2d(
        x,
        f if up > 1 else None,
        up=up,
        padding=[px0, px1, py0, py1],
        gain=up**2,
        flip_filter=flip_filter,
        impl="ref",
    )
    x = _conv(x, w, groups, flip_weight)
    if down > 1:
        x = upfirdn2d(x, f, down=down, flip_filter=flip_filter, impl="ref")
    return x


def _conv2d_resample_fast(x, w, f, up, down, padding, groups, flip_weight, flip_filter):
    px0, px1, py0, py1 = _full_padding(f, up, down, padding)
    kh, kw = w.shape[2:]
    if up == 1 and down == 1:
        if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
            return _conv(x, w, groups, flip_weight, padding=(py0, px0), fast=True)
        x = upfirdn2d(x, None, padding=[px0, px1, py0, py1], impl="cpu")
        return _conv(x, w, groups, flip_weight)
    if up == 1 and down > 1:
        if kw == 1 and kh == 1:
            # 1x1 conv commutes with the filter: decimate first (fewer channels-pixels).
            x = upfirdn2d(
                x, f, down=down, padding=[px0, px1, py0, py1], flip_filter=flip_filter, impl="cpu"
            )
            return _conv(x, w, groups, flip_weight)
        # Filter, then a strided convolution (computes only the kept samples).
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1], flip_filter=flip_filter, impl="cpu")
        return _conv(x, w, groups, flip_weight, stride=down)
    if down == 1 and up > 1:
        if kw == 1 and kh == 1:
            x = _conv(x, w, groups, flip_weight)
            return upfirdn2d(
                x,
                f,
                up=up,
                padding=[px0, px1, py0, py1],
                gain=up**2,
                flip_filter=flip_filter,
                impl="cpu",
            )
        # Zero insertion + conv == transposed conv with stride `up`; then the FIR filter.
        out_c, in_c_per_group = w.shape[:2]
        ww = w.flip([2, 3]) if flip_weight else w
        ww = ww.reshape(groups, out_c // groups, in_c_per_group, kh, kw).transpose(1, 2)
        ww = ww.reshape(groups * in_c_per_group, out_c // groups, kh, kw)
        # conv_transpose2d(x, flip(w), stride=up) == conv2d(zero-insert(x) padded by
        # (k - 1, k - up), w); the FIR filter commutes with the conv, so apply it after, with
        # the padding difference to the requested (px0, px1, py0, py1).
        x = F.conv_transpose2d(x, ww.to(x.dtype), stride=up, groups=groups)
        q = [px0 - (kw - 1), px1 - (kw - up), py0 - (kh - 1), py1 - (kh - up)]
        return upfirdn2d(x, f, padding=q, gain=up**2, flip_filter=flip_filter, impl="cpu")
    return _conv2d_resample_ref(x, w, f, up, down, padding, groups, flip_weight, flip_filter)


def conv2d_resample(
    x,
    w,
    f=None,
    up=1,
    down=1,
    padding=0,
    groups=1,
    flip_weight=True,
    flip_filter=False,
    impl="auto",
):
    """2-D convolution with optional up/downsampling (see module docstring).

    Args:
        x: input [N, C_in, H, W].
        w: weight [C_out, C_in // groups, kh, kw].
        f: FIR filter for the resampling (setup_filter), None = box of one tap.
        up: integer upsampling factor; down: integer downsampling factor (not both > 1).
        padding: int, (px, py) or (px0, px1, py0, py1), as seen by the convolution after up.
        groups: convolution groups.
        flip_weight: True = correlation (like torch.conv2d), False = convolution.
        flip_filter: False = convolution with f, True = correlation.
        impl: "auto", "ref", "cpu" or "cuda".

    Returns:
        tensor [N, C_out, H', W'].
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise CellsynthError(
            f"conv2d_resample: x must be [N, C, H, W], got {getattr(x, 'shape', x)}"
        )
    if (
        not isinstance(w, torch.Tensor)
        or w.ndim != 4
        or w.dtype != x.dtype
        and w.dtype != torch.float32
    ):
        raise CellsynthError(
            "conv2d_resample: w must be a 4-D float tensor [C_out, C_in/groups, kh, kw]"
        )
    if x.shape[1] != w.shape[1] * groups or w.shape[0] % groups != 0:
        raise CellsynthError(
            f"conv2d_resample: {x.shape[1]} input channels do not match weight {tuple(w.shape)} "
            f"with groups={groups}"
        )
    up, down = parse_square_scaling(up, down, "conv2d_resample")
    if up > 1 and down > 1:
        raise CellsynthError("conv2d_resample: up and down cannot both be > 1")
    padding = parse_padding(padding)
    if resolve_impl(impl, x) == "ref":
        return _conv2d_resample_ref(x, w, f, up, down, padding, groups, flip_weight, flip_filter)
    return _conv2d_resample_fast(x, w, f, up, down, padding, groups, flip_weight, flip_filter)
