"""Image grids for fakes/snapshot pages."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def make_grid(
    images: np.ndarray, cols: int | None = None, pad: int = 0, fill: int = 0
) -> np.ndarray:
    """Tile N x H x W (x C) images into one (rows*H) x (cols*W) (x C) array, ``pad`` pixels of
    ``fill`` between them."""
    images = np.asarray(images)
    n = images.shape[0]
    if cols is None:
        cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    h, w = images.shape[1:3]
    tail = images.shape[3:]
    shape = (rows * (h + pad) - pad, cols * (w + pad) - pad, *tail)
    grid = np.full(shape, fill, dtype=images.dtype)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = images[i]
    return grid


def save_grid(path: str | os.PathLike, images: np.ndarray, cols: int | None = None) -> Path:
    """Save a uint8 grid of N x H x W (x C) images as PNG (atomically)."""
    from PIL import Image

    from cellsynth.atomic import atomic_path

    grid = make_grid(np.asarray(images), cols)
    if grid.dtype != np.uint8:
        raise ValueError(f"save_grid needs uint8 images, got {grid.dtype}")
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    return Path(path)


def tensor_to_uint8(x) -> np.ndarray:
    """float N x C x H x W tensor/array in [-1, 1] -> uint8 N x H x W (x C) for grids."""
    x = np.asarray(x.detach().float().cpu() if hasattr(x, "detach") else x, dtype=np.float32)
    x = np.rint((x.clip(-1, 1) + 1) * 127.5).astype(np.uint8)
    return x[:, 0] if x.shape[1] == 1 else np.moveaxis(x[:, :3], 1, -1)
