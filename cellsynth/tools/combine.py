"""Compositing: put a rendered spots image into a microscopy image.

Values are handled as fractions of the image's full scale (uint8: /255, uint16: /65535, float
images as given), so a spots image made by :func:`cellsynth.tools.points.render_spots` means the
same for 8- and 16-bit images. The result keeps the image's dtype, clipped to its range.
"""

from __future__ import annotations

import numpy as np

from cellsynth.errors import CellsynthError, require

MODES = ("add", "channel")
FULL_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def fraction_of_full_scale(x: np.ndarray) -> np.ndarray | None:
    """A uint8 / uint16 image as float32 fractions of its full scale, a bool one as 0 / 1;
    None for any other dtype (the caller decides what floats and other integers mean)."""
    if x.dtype in FULL_SCALE:
        return x.astype(np.float32) / FULL_SCALE[x.dtype]
    if x.dtype == bool:
        return x.astype(np.float32)
    return None


def add_noise(
    x: np.ndarray, rng: np.random.Generator, photons: float = 0.0, read_noise: float = 0.0
) -> np.ndarray:
    """Poisson-Gaussian noise on a float image in full-scale units.

    ``photons`` is the photon count at full scale (0 = no shot noise); ``read_noise`` the std of
    additive Gaussian noise in full-scale units. Returns a new float64 array.
    """
    require(photons >= 0 and read_noise >= 0, "photons and read noise must be >= 0")
    x = np.asarray(x, dtype=np.float64)
    if photons > 0:
        x = rng.poisson(np.clip(x, 0.0, None) * photons) / float(photons)
    if read_noise > 0:
        x = x + rng.normal(0.0, read_noise, size=x.shape)
    return x


def combine(
    image: np.ndarray,
    spots_image: np.ndarray,
    mode: str = "add",
    channel: int | None = 0,
    scale: float = 1.0,
    photons: float = 0.0,
    read_noise: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """Combine an image with a spots image.

    Args:
        image: H x W or H x W x C image, uint8, uint16 or float.
        spots_image: H x W float spots image in full-scale units (1.0 = the dtype's maximum).
        mode: "add" (add into ``channel`` of the image) or "channel" (append as a new channel).
        channel: the channel to add into (mode "add"); None adds into every channel.
        scale: factor on the spots image.
        photons, read_noise: optional Poisson-Gaussian noise (see :func:`add_noise`) on the
            channels that changed.
        seed: seed of the noise.

    Returns:
        the combined image: the image's dtype (integers rounded and clipped to their range,
        floats clipped at 0); H x W x (C + 1) for mode "channel".
    """
    image = np.asarray(image)
    spots_image = np.asarray(spots_image)
    if mode not in MODES:
        raise CellsynthError(f"unknown combine mode {mode!r}; use {', '.join(MODES)}")
    require(image.ndim in (2, 3), f"image must be H x W or H x W x C, got shape {image.shape}")
    require(spots_image.ndim == 2, f"spots image must be H x W, got shape {spots_image.shape}")
    require(
        image.shape[:2] == spots_image.shape,
        f"image {image.shape[:2]} and spots image {spots_image.shape} differ in size",
    )
    dtype = image.dtype
    if dtype in FULL_SCALE:
        full = FULL_SCALE[dtype]
    elif np.issubdtype(dtype, np.floating):
        full = 1.0
    else:
        raise CellsynthError(f"image dtype {dtype} not supported; use uint8, uint16 or float")
    require(np.all(np.isfinite(spots_image)), "spots image has NaN or infinite values")
    rng = np.random.default_rng(seed)
    x = image.astype(np.float64) / full
    planes = x[..., None] if x.ndim == 2 else x
    n = planes.shape[-1]
    add = float(scale) * spots_image.astype(np.float64)
    if mode == "add":
        targets = list(range(n)) if channel is None else [int(channel)]
        require(
            all(-n <= t < n for t in targets),
            f"channel {channel} does not exist in a {n}-channel image",
        )
        targets = [t % n for t in targets]
        out = planes.copy()
        for t in targets:
            out[..., t] = add_noise(out[..., t] + add, rng, photons, read_noise)
    else:
        require(n < 4, f"cannot append a channel to a {n}-channel image (at most 4)")
        new = add_noise(add, rng, photons, read_noise)
        out = np.concatenate([planes, new[..., None]], axis=-1)
    if image.ndim == 2 and out.shape[-1] == 1:
        out = out[..., 0]
    if dtype in FULL_SCALE:
        return np.rint(np.clip(out, 0.0, 1.0) * full).astype(dtype)
    return np.clip(out, 0.0, None).astype(dtype)
