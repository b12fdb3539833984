"""StyleGAN3 ops: bias_act, upfirdn2d, filtered_lrelu, conv2d_resample.

Each op has a pure-PyTorch reference (``impl="ref"``) and a fast path (``impl="cpu"``, chosen
automatically for CPU tensors); ``CELLSYNTH_OPS_IMPL`` sets the default (see ``_impl``).
"""

from cellsynth.stylegan3.ops import upfirdn2d
from cellsynth.stylegan3.ops._impl import IMPLS, resolve_impl
from cellsynth.stylegan3.ops.bias_act import ACTIVATIONS, bias_act
from cellsynth.stylegan3.ops.conv2d_resample import conv2d_resample
from cellsynth.stylegan3.ops.filtered_lrelu import filtered_lrelu
from cellsynth.stylegan3.ops.upfirdn2d import downsample2d, filter2d, setup_filter, upsample2d

__all__ = [
    "ACTIVATIONS",
    "IMPLS",
    "bias_act",
    "conv2d_resample",
    "downsample2d",
    "filter2d",
    "filtered_lrelu",
    "resolve_impl",
    "setup_filter",
    "upsample2d",
    "upfirdn2d",
]
