"""2018 Data Science Bowl (BBBC038) layout -> canonical samples.

Layout (``stage1_train`` and the community-corrected copies)::

    ROOT/ID/images/ID.png      the image (RGBA PNG, often gray)
    ROOT/ID/masks/*.png        one binary PNG per nucleus (nonzero = nucleus)

Images: the alpha channel is dropped; when the red, green and blue channels are identical the
image is stored as one gray channel, otherwise it keeps its colour. Masks: the per-nucleus PNGs
are read in file-name order and merged with the overlap rule of
:func:`cellsynth.datasets.coco.resolve_overlaps` (a pixel claimed by several nuclei goes to the
one whose centroid is nearest, ties to the file name that sorts first; nuclei left with fewer
than ``min_pixels`` pixels or less than ``min_fraction`` of their area are dropped and counted).
The sample name is the image ID.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cellsynth.datasets.canonical import Sample
from cellsynth.datasets.coco import add_drops, new_stats, resolve_overlaps
from cellsynth.datasets.folders import SourceItem, normalise_image
from cellsynth.datasets.io import IMAGE_SUFFIXES, list_images, read_image
from cellsynth.errors import CellsynthError


def gray_or_colour(image: np.ndarray) -> np.ndarray:
    """Drop an alpha channel; return one channel when the colour channels are all equal."""
    image = np.asarray(image)
    if image.ndim == 3:
        if image.shape[-1] in (2, 4):
            image = image[..., :-1]  # LA -> L, RGBA -> RGB
        if all(np.array_equal(image[..., 0], image[..., c]) for c in range(1, image.shape[-1])):
            image = image[..., 0]
    return np.ascontiguousarray(image)


def _load(
    folder: Path,
    image_path: Path,
    mask_paths: list[Path],
    min_pixels: int,
    min_fraction: float,
    stats: dict,
) -> Sample:
    image = normalise_image(gray_or_colour(read_image(image_path)), str(image_path))
    h, w = image.shape[:2]
    pix = []
    for mp in mask_paths:
        m = np.asarray(read_image(mp))
        if m.ndim == 3:
            m = m[..., :3].max(axis=-1) if m.shape[-1] >= 3 else m[..., 0]
        if m.shape != (h, w):
            raise CellsynthError(
                f"{mp}: mask is {m.shape[0]}x{m.shape[1]} but image {image_path.name} is "
                f"{h}x{w}; they must be the same size"
            )
        if np.issubdtype(m.dtype, np.floating) or (m.size and m.min() < 0):
            raise CellsynthError(f"{mp}: nucleus mask must be a non-negative integer image")
        pix.append(np.flatnonzero(m))
    labels, kept, counts = resolve_overlaps(pix, (h, w), min_pixels, min_fraction)
    stats["images"] += 1
    stats["annotations"] += len(mask_paths)
    stats["instances"] += len(kept)
    add_drops(stats, counts)
    meta = {
        "source": "dsb2018",
        "image_file": str(image_path),
        "mask_files": [mask_paths[k].name for k in kept],
    }
    dropped = {r: int(counts[r]) for r in ("empty", "small", "overlap") if counts[r]}
    if dropped:
        meta["dropped"] = dropped
    return Sample(folder.name, image, labels, meta).check()


def dsb2018_items(
    root: str | os.PathLike,
    *,
    min_pixels: int = 10,
    min_fraction: float = 0.5,
    skip_missing: bool = False,
    stats: dict | None = None,
) -> list[SourceItem]:
    """One :class:`SourceItem` per ``ROOT/ID`` folder, sorted by ID (split None).

    Folders without ``masks/`` (e.g. ``stage1_test``) raise, or are skipped and counted in
    ``stats["missing_images"]`` with ``skip_missing``; ``stats`` (from
    :func:`cellsynth.datasets.coco.new_stats`) is updated as items load.
    """
    root = Path(root)
    if not root.is_dir():
        raise CellsynthError(f"{root}: no such folder")
    stats = new_stats() if stats is None else stats
    folders = sorted(p for p in root.iterdir() if p.is_dir() and (p / "images").is_dir())
    if not folders:
        raise CellsynthError(
            f"{root}: no DSB2018 samples found (expected ROOT/ID/images/ID.png and "
            "ROOT/ID/masks/*.png; pass the folder that holds the ID folders, e.g. stage1_train)"
        )
    items = []
    for folder in folders:
        images = list_images(folder / "images")
        preferred = [p for p in images if p.stem == folder.name]
        if len(preferred) != 1 and len(images) != 1:
            raise CellsynthError(
                f"{folder / 'images'}: expected one image named {folder.name}.png, "
                f"found {len(images)} files"
            )
        image_path = preferred[0] if len(preferred) == 1 else images[0]
        mask_dir = folder / "masks"
        masks = sorted(mask_dir.iterdir()) if mask_dir.is_dir() else []
        masks = [p for p in masks if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not masks:
            if skip_missing:
                stats["missing_images"] += 1
                continue
            raise CellsynthError(
                f"{folder}: no masks/*.png (test images have no annotations); remove the folder "
                "or pass --skip-missing"
            )

        def load(folder=folder, image_path=image_path, masks=masks) -> Sample:
            return _load(folder, image_path, masks, min_pixels, min_fraction, stats)

        items.append(SourceItem(folder.name, load, None))
    if not items:
        raise CellsynthError(f"{root}: no DSB2018 sample has masks")
    return items


def load_dsb2018_samples(root: str | os.PathLike, **opts) -> tuple[list[Sample], dict]:
    """Read every sample of a DSB2018 folder; returns (samples sorted by ID, statistics)."""
    stats = new_stats()
    items = dsb2018_items(root, stats=stats, **opts)
    return [item.load() for item in items], stats
