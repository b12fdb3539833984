"""Reading and writing images and instance labels, and the one place where pixel values convert.

Contracts (DESIGN.md):
- instance labels: 2-D integer arrays, 0 = background, 1..N = objects; stored as uint16 TIFF
  (uint32 when N > 65535);
- images: H x W (x C) arrays, uint8 / uint16 / float32 on disk;
- networks see float32 in [-1, 1], channels first (:func:`image_to_network`,
  :func:`network_to_image`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cellsynth.atomic import atomic_path
from cellsynth.errors import CellsynthError
from cellsynth.tools.combine import fraction_of_full_scale
from cellsynth.tools.labels import check_labels, relabel_sequential

__all__ = ["check_labels", "relabel_sequential"]  # re-exported: readers use them from here

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file (TIFF, PNG, JPEG) as an H x W or H x W x C array (C = 1..4).

    A single leading channel axis in TIFFs (C x H x W with C <= 4) is moved last. Raises
    :class:`CellsynthError` naming the file when it is missing, unreadable or not 2-D.
    """
    path = Path(path)
    if not path.is_file():
        raise CellsynthError(f"{path}: no such file")
    try:
        if _suffix(path) in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                if im.mode in ("P", "PA"):
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                arr = np.asarray(im)
    except CellsynthError:
        raise
    except Exception as exc:  # corrupt or truncated files surface as many exception types
        raise CellsynthError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
    arr = np.asarray(arr)
    if arr.size == 0:
        raise CellsynthError(f"{path}: cannot read image (no pixel data: empty or truncated file)")
    if arr.ndim == 3 and arr.shape[0] <= 4 and arr.shape[-1] > 4:
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] > 4) or arr.size == 0:
        raise CellsynthError(
            f"{path}: expected a 2-D image with 1 to 4 channels, got shape {arr.shape}"
        )
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    return arr


def write_image(path: str | os.PathLike, image: np.ndarray, overwrite: bool = True) -> Path:
    """Write an H x W (x C) image atomically; TIFF keeps any dtype, PNG takes uint8/uint16."""
    path = Path(path)
    image = np.asarray(image)
    with atomic_path(path, overwrite) as tmp:
        if _suffix(path) in (".tif", ".tiff"):
            import tifffile

            photometric = "rgb" if image.ndim == 3 and image.shape[-1] in (3, 4) else "minisblack"
            tifffile.imwrite(tmp, image, photometric=photometric, compression="zlib")
        else:
            from PIL import Image

            if image.dtype not in (np.uint8, np.uint16):
                raise CellsynthError(f"{path}: PNG/JPEG need uint8 or uint16, got {image.dtype}")
            fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(_suffix(path))
            if fmt is None:
                raise CellsynthError(f"{path}: unknown image format {path.suffix!r}")
            if image.dtype == np.uint16:
                if image.ndim != 2:
                    raise CellsynthError(f"{path}: 16-bit PNG must be single-channel; use TIFF")
                im = Image.fromarray(image.astype("<u2"))
            else:
                im = Image.fromarray(image)
            im.save(tmp, format=fmt)
    return path


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Read an instance-label image (TIFF or PNG) and validate it with :func:`check_labels`."""
    arr = read_image(path)
    return check_labels(arr, where=str(path))


def write_labels(path: str | os.PathLike, labels: np.ndarray, overwrite: bool = True) -> Path:
    """Write instance labels as uint16 (or uint32) TIFF, atomically."""
    labels = check_labels(labels, where=str(path))
    return write_image(path, labels, overwrite=overwrite)


def image_to_float(image: np.ndarray) -> np.ndarray:
    """Scale an image to float32 in [0, 1]: uint8 / 255, uint16 / 65535, floats as given
    (floats outside [0, 1] are min-max scaled per image)."""
    image = np.asarray(image)
    scaled = fraction_of_full_scale(image)
    if scaled is not None:
        return scaled
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        lo, hi = max(int(image.min()), 0) if info.min < 0 else 0, int(image.max())
        return ((image.astype(np.float32) - lo) / max(hi - lo, 1)).clip(0, 1)
    image = image.astype(np.float32)
    lo, hi = float(np.nanmin(image)), float(np.nanmax(image))
    if lo >= 0.0 and hi <= 1.0:
        return image
    return ((image - lo) / max(hi - lo, 1e-12)).astype(np.float32)


def channels_first(
    x: np.ndarray,
    channels: int | None = None,
    refusal: str = "cannot convert a {have}-channel image to {want}",
) -> np.ndarray:
    """H x W (x C) array -> C x H x W. ``channels`` (optional) forces the channel count: one
    channel is repeated, several are averaged into one (the first three); any other change
    raises CellsynthError(``refusal`` with ``{have}`` and ``{want}`` filled in)."""
    x = x[None] if x.ndim == 2 else np.moveaxis(x, -1, 0)
    if channels is not None and x.shape[0] != channels:
        if x.shape[0] == 1:
            x = np.repeat(x, channels, axis=0)
        elif channels == 1:
            x = x[:3].mean(axis=0, keepdims=True)
        else:
            raise CellsynthError(refusal.format(have=x.shape[0], want=channels))
    return x


def image_to_network(image: np.ndarray, channels: int | None = None) -> np.ndarray:
    """H x W (x C) image -> float32 C x H x W in [-1, 1].

    ``channels`` (optional) forces the channel count: 1 -> 3 repeats, 3/4 -> 1 averages.
    """
    x = channels_first(image_to_float(image), channels)
    return np.ascontiguousarray(x * 2.0 - 1.0, dtype=np.float32)


def network_to_image(x: np.ndarray, dtype: str | np.dtype = np.uint8) -> np.ndarray:
    """float C x H x W in [-1, 1] (values outside are clipped) -> H x W (x C) image of ``dtype``
    (uint8, uint16 or float32 in [0, 1])."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    x = ((x + 1.0) * 0.5).clip(0.0, 1.0)
    x = x[0] if x.shape[0] == 1 else np.moveaxis(x, 0, -1)
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return np.rint(x * 255.0).astype(np.uint8)
    if dtype == np.uint16:
        return np.rint(x * 65535.0).astype(np.uint16)
    if dtype == np.float32:
        return x.astype(np.float32)
    raise CellsynthError(f"unsupported image dtype {dtype}; use uint8, uint16 or float32")


def list_images(folder: str | os.PathLike, what: str = "images") -> list[Path]:
    """Sorted image files (by suffix) in ``folder``; raises if it is missing or has none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CellsynthError(f"{folder}: no such folder of {what}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and _suffix(p) in IMAGE_SUFFIXES)
    if not files:
        raise CellsynthError(f"{folder}: no {what} found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files
