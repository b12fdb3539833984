"""Array-level mask and image tools (numpy, scipy and scikit-image only): threshold (binarise),
the mask codec (instance labels <-> the encoding a GAN learns), Gaussian puncta, compositing."""

from cellsynth.tools.codec import (
    ENCODINGS,
    decode_mask,
    downscale_encode,
    encode_mask,
    resize_labels,
    transform_labels,
)
from cellsynth.tools.threshold import label_components, threshold

__all__ = [
    "ENCODINGS",
    "decode_mask",
    "downscale_encode",
    "encode_mask",
    "label_components",
    "resize_labels",
    "threshold",
    "transform_labels",
]
