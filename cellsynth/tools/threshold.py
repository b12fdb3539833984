"""Binarise a generated mask or an image, and label its connected components.

Plain functions on numpy arrays (numpy, scipy and scikit-image only). Thresholds are computed on
the image's own values (no rescaling), so ``value`` for ``method="fixed"`` is in the units of the
input (e.g. 0..255 for uint8, 0..1 for a float GAN output).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from cellsynth.errors import CellsynthError

# The one list of threshold methods (``tools threshold``, ``synth --threshold``, the segmenters):
GLOBAL_METHODS = ("otsu", "li", "triangle", "mean")  # one value per image, from its histogram
METHODS = (*GLOBAL_METHODS, "fixed", "local")  # plus a given value, and a local (adaptive) map


def _plane(image: np.ndarray, channel: int | None) -> np.ndarray:
    """The 2-D float64 plane of ``image`` that is thresholded (checked)."""
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8)
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise CellsynthError(f"threshold: unsupported image dtype {image.dtype}")
    if image.ndim == 3:
        c = 0 if channel is None else int(channel)
        if not -image.shape[-1] <= c < image.shape[-1]:
            raise CellsynthError(
                f"threshold: channel {c} out of range for an image with {image.shape[-1]} channels"
            )
        image = image[..., c]
    elif image.ndim != 2:
        raise CellsynthError(f"threshold: expected an H x W (x C) image, got shape {image.shape}")
    elif channel is not None and int(channel) not in (0, -1):
        raise CellsynthError(
            f"threshold: channel {int(channel)} out of range for a 1-channel image (use 0 or "
            "leave the channel out)"
        )
    if image.size == 0:
        raise CellsynthError("threshold: empty image")
    plane = image.astype(np.float64)
    if not np.all(np.isfinite(plane)):
        raise CellsynthError("threshold: image has NaN or infinite values")
    return plane


def default_fixed_value(dtype: np.dtype) -> float:
    """Half of the dtype's full scale: 127.5 for uint8, 32767.5 for uint16, 0.5 for floats/bool."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b" or np.issubdtype(dtype, np.floating):
        return 0.5
    return np.iinfo(dtype).max / 2.0


def threshold_value(
    image: np.ndarray,
    method: str = "otsu",
    value: float | None = None,
    channel: int | None = None,
) -> float:
    """The global threshold of ``image`` (one channel of it) for a global ``method``.

    Args: image H x W (x C) of any integer/float/bool dtype; method one of otsu, li, triangle,
    mean, fixed; value the threshold for ``fixed`` (default half the dtype's full scale);
    channel the channel of a multi-channel image (default 0).
    Returns the threshold as a float in the image's units (pixels ``> t`` are foreground).
    """
    from skimage import filters

    plane = _plane(image, channel)
    if method == "fixed":
        return float(default_fixed_value(np.asarray(image).dtype) if value is None else value)
    if method == "local":
        raise CellsynthError("threshold_value: 'local' has no single value; use threshold()")
    if method not in METHODS:
        raise CellsynthError(
            f"unknown threshold method {method!r}; use one of {', '.join(METHODS)}"
        )
    lo, hi = float(plane.min()), float(plane.max())
    if lo == hi:
        return lo  # constant image: nothing lies above it
    if method == "otsu":
        return float(filters.threshold_otsu(plane))
    if method == "li":
        return float(filters.threshold_li(plane))
    if method == "triangle":
        return float(filters.threshold_triangle(plane))
    return float(plane.mean())


def threshold(
    image: np.ndarray,
    method: str = "otsu",
    value: float | None = None,
    block_size: int = 51,
    offset: float = 0.0,
    channel: int | None = None,
) -> np.ndarray:
    """Binarise ``image``: foreground where the pixel is above the threshold.

    Args: image H x W or H x W x C (uint, int, float or bool; a multi-channel image is
    thresholded on ``channel``, default 0); method otsu | li | triangle | mean (global, from
    scikit-image / numpy), fixed (``value``, default half the dtype's full scale) or local
    (scikit-image ``threshold_local`` over an odd ``block_size`` window); offset subtracted from
    the threshold (all methods, as in ``threshold_local``).
    Returns a bool H x W array.
    """
    if method not in METHODS:
        raise CellsynthError(
            f"unknown threshold method {method!r}; use one of {', '.join(METHODS)}"
        )
    plane = _plane(image, channel)
    if method == "local":
        from skimage import filters

        block_size = int(block_size)
        if block_size < 3 or block_size % 2 == 0:
            raise CellsynthError(
                f"threshold: block_size must be an odd number >= 3, got {block_size}"
            )
        if plane.min() == plane.max():
            return np.zeros(plane.shape, dtype=bool)
        local = filters.threshold_local(plane, block_size, method="gaussian", offset=offset)
        return plane > local
    t = threshold_value(image, method, value, channel)
    return plane > (t - offset)


def label_components(binary: np.ndarray, connectivity: int = 1, min_size: int = 0) -> np.ndarray:
    """Label the connected components of a binary mask.

    Args: binary H x W (bool, or any array where non-zero is foreground); connectivity 1
    (4-neighbours) or 2 (8-neighbours); min_size components with fewer pixels are dropped.
    Returns uint16 labels 1..N in raster order of first pixel (uint32 when N > 65535).
    """
    binary = np.asarray(binary)
    if binary.ndim != 2:
        raise CellsynthError(f"label_components: expected a 2-D mask, got shape {binary.shape}")
    if connectivity not in (1, 2):
        raise CellsynthError(f"label_components: connectivity must be 1 or 2, got {connectivity}")
    structure = ndi.generate_binary_structure(2, connectivity)
    labels, n = ndi.label(binary != 0, structure=structure)
    if min_size > 0 and n:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= min_size
        keep[0] = False
        lut = np.zeros(n + 1, dtype=np.int64)
        lut[keep] = np.arange(1, int(keep.sum()) + 1)
        labels, n = lut[labels], int(keep.sum())
    return labels.astype(np.uint16 if n <= 65535 else np.uint32)
