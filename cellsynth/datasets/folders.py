"""Readers for image/mask pairs on disk: the EmbedSeg (canonical) layout, Cellpose naming and
plain ``--images DIR --masks DIR`` folders, plus the helpers every reader shares.

Layouts:

- EmbedSeg / canonical: ``ROOT/{train,val,test}/{images,masks}/NAME.tif`` (splits are kept), or
  one split folder ``DIR/{images,masks}`` (pooled).
- Cellpose: ``DIR/X.tif`` + ``DIR/X_masks.tif`` (any of .tif/.tiff/.png/.jpg); the image may carry
  an ``img_filter`` suffix (Cellpose's ``--img_filter``, e.g. ``X_img.png`` + ``X_masks.png``).
  Cellpose outputs (``_cp_masks``, ``_flows``, ``_outlines``, ``_seg.npy``) are ignored. A folder
  with ``train/``, ``val/`` or ``test/`` sub-folders keeps those splits.
- Folders: ``--images DIR --masks DIR`` paired by file stem; a mask stem may end in ``_masks``,
  ``_mask``, ``_labels`` or ``_label``.

Every reader returns a list of :class:`SourceItem` (a name, the split it came from if any, and a
function that loads the :class:`~cellsynth.datasets.canonical.Sample`), so importers can assign
splits before reading pixels. Loaded samples always have an image of dtype uint8, uint16 or
float32 and sequential uint16 instance labels 1..N.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from cellsynth.datasets.canonical import SPLITS, Sample, is_split_dir
from cellsynth.datasets.io import check_labels, list_images, read_image, relabel_sequential
from cellsynth.errors import CellsynthError

MASK_SUFFIXES = ("_masks", "_mask", "_labels", "_label")
CELLPOSE_OUTPUTS = ("_cp_masks", "_cp_outlines", "_outlines", "_flows", "_seg")
T = TypeVar("T")


@dataclass(frozen=True)
class SourceItem:
    """One sample of a source: ``name``, the ``split`` it came from (None = to be assigned) and
    ``load()`` -> :class:`Sample`."""

    name: str
    load: Callable[[], Sample] = field(repr=False)
    split: str | None = None


def normalise_image(image: np.ndarray, where: str) -> np.ndarray:
    """Return ``image`` as uint8, uint16 or float32 (1..4 channels), or raise naming ``where``.

    Booleans become uint8 0/255; other integer types must fit uint16 (no negative values);
    float64 becomes float32; non-finite floats are rejected.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] > 4):
        raise CellsynthError(
            f"{where}: expected a 2-D image with 1 to 4 channels, got {image.shape}"
        )
    if image.dtype in (np.uint8, np.uint16, np.float32):
        out = image
    elif image.dtype == bool:
        out = image.astype(np.uint8) * 255
    elif np.issubdtype(image.dtype, np.integer):
        lo, hi = int(image.min()), int(image.max())
        if lo < 0 or hi > 65535:
            raise CellsynthError(
                f"{where}: {image.dtype} image with values {lo}..{hi} does not fit uint16; "
                "convert it to uint8/uint16/float32 first"
            )
        out = image.astype(np.uint16)
    elif np.issubdtype(image.dtype, np.floating):
        out = image.astype(np.float32)
    else:
        raise CellsynthError(f"{where}: unsupported image dtype {image.dtype}")
    if out.dtype == np.float32 and not np.all(np.isfinite(out)):
        raise CellsynthError(f"{where}: image has NaN or infinite values")
    return out


def read_mask(path: str | os.PathLike, label_components: bool = False) -> np.ndarray:
    """Read an instance-label image as a 2-D array (uint16/uint32) with labels 1..N.

    A multi-channel mask is accepted only when all channels are equal. With
    ``label_components`` the mask is treated as binary/semantic (nonzero = cell) and its
    8-connected components become the instances. Without it, a mask whose only nonzero value
    covers several separate blobs is taken for a binary mask and refused, with a hint.
    """
    path = Path(path)
    arr = np.asarray(read_image(path))
    if arr.ndim == 3:
        if not all(np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, arr.shape[-1])):
            raise CellsynthError(
                f"{path}: mask has {arr.shape[-1]} different channels; expected a single-channel "
                "instance label image (0 = background, 1..N = cells)"
            )
        arr = arr[..., 0]
    if label_components:
        from scipy import ndimage

        fg = check_labels(arr, where=str(path)) > 0
        labels, _ = ndimage.label(fg, structure=np.ones((3, 3), dtype=bool))
        return relabel_sequential(check_labels(labels, where=str(path)))
    labels = check_labels(arr, where=str(path))
    values = np.unique(labels)
    values = values[values != 0]
    if values.size == 1:
        from scipy import ndimage

        _, n = ndimage.label(labels > 0, structure=np.ones((3, 3), dtype=bool))
        if n > 1:
            raise CellsynthError(
                f"{path}: looks like a binary mask ({n} separate objects share the value "
                f"{int(values[0])}); pass --label-components to label connected components"
            )
    return relabel_sequential(labels)


def load_pair(
    image_path: Path,
    mask_path: Path,
    name: str,
    meta: dict | None = None,
    label_components: bool = False,
) -> Sample:
    """Read one image and its instance mask into a checked :class:`Sample`."""
    image = normalise_image(read_image(image_path), str(image_path))
    labels = read_mask(mask_path, label_components)
    if image.shape[:2] != labels.shape:
        raise CellsynthError(
            f"{mask_path}: mask is {labels.shape[0]}x{labels.shape[1]} but its image "
            f"{image_path.name} is {image.shape[0]}x{image.shape[1]}; they must be the same size"
        )
    info = {"image_file": str(image_path), "mask_file": str(mask_path), **(meta or {})}
    return Sample(name, image, labels, info).check()


def _pair_item(
    image_path: Path,
    mask_path: Path,
    name: str,
    split: str | None,
    meta: dict,
    label_components: bool,
) -> SourceItem:
    def load() -> Sample:
        return load_pair(image_path, mask_path, name, meta, label_components)

    return SourceItem(name, load, split)


def _unpaired_error(folder: Path, images: list[str], masks: list[str]) -> CellsynthError:
    parts = []
    if images:
        more = f" (+{len(images) - 5} more)" if len(images) > 5 else ""
        parts.append(f"images without a mask: {', '.join(images[:5])}{more}")
    if masks:
        more = f" (+{len(masks) - 5} more)" if len(masks) > 5 else ""
        parts.append(f"masks without an image: {', '.join(masks[:5])}{more}")
    return CellsynthError(
        f"{folder}: unpaired files ({'; '.join(parts)}); fix the names or pass --skip-missing"
    )


def index_unique(
    items: Iterable[T], key: Callable[[T], str], clash: Callable[[T, T], str]
) -> dict[str, T]:
    """``{key(item): item}``; CellsynthError(``clash(earlier, item)``) when two share a key."""
    out: dict[str, T] = {}
    for it in items:
        k = key(it)
        if k in out:
            raise CellsynthError(clash(out[k], it))
        out[k] = it
    return out


def _by_stem(files: list[Path], folder: Path, what: str) -> dict[str, Path]:
    return index_unique(
        files,
        lambda p: p.stem,
        lambda a, b: (
            f"{folder}: two {what} share the name {b.stem!r} ({a.name}, {b.name}); keep one"
        ),
    )


def _strip_mask_suffix(stem: str) -> str:
    for suffix in MASK_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def folder_pairs(
    images_dir: str | os.PathLike,
    masks_dir: str | os.PathLike,
    split: str | None = None,
    skip_missing: bool = False,
    label_components: bool = False,
    meta: dict | None = None,
) -> list[SourceItem]:
    """Pair ``images_dir/X.ext`` with ``masks_dir/X[_masks|_mask|_labels|_label].ext``.

    Returns items sorted by name. Unpaired files raise (or are skipped with ``skip_missing``);
    two masks that would pair with the same image raise.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    images = _by_stem(list_images(images_dir), images_dir, "images")
    masks: dict[str, Path] = {}
    for p in list_images(masks_dir, what="masks"):
        key = p.stem if p.stem in images else _strip_mask_suffix(p.stem)
        if key in masks:
            raise CellsynthError(
                f"{masks_dir}: masks {masks[key].name} and {p.name} both pair with image "
                f"{key!r}; keep one"
            )
        masks[key] = p
    lonely_images = sorted(set(images) - set(masks))
    lonely_masks = sorted(masks[k].name for k in set(masks) - set(images))
    if (lonely_images or lonely_masks) and not skip_missing:
        raise _unpaired_error(
            images_dir if lonely_images else masks_dir, lonely_images, lonely_masks
        )
    names = sorted(set(images) & set(masks))
    if not names:
        raise CellsynthError(f"{images_dir}: no image has a mask in {masks_dir}")
    return [
        _pair_item(images[n], masks[n], n, split, dict(meta or {}), label_components) for n in names
    ]


def embedseg_items(
    root: str | os.PathLike,
    skip_missing: bool = False,
    label_components: bool = False,
) -> list[SourceItem]:
    """Items of an EmbedSeg / canonical dataset: ``ROOT/{train,val,test}/{images,masks}``
    (each item keeps its split) or a single split folder ``DIR/{images,masks}`` (split None)."""
    root = Path(root)
    if not root.is_dir():
        raise CellsynthError(f"{root}: no such dataset folder")
    splits = [s for s in SPLITS if is_split_dir(root / s)]
    if splits:
        items = []
        for s in splits:
            items += folder_pairs(
                root / s / "images", root / s / "masks", s, skip_missing, label_components
            )
        return items
    if is_split_dir(root):
        return folder_pairs(root / "images", root / "masks", None, skip_missing, label_components)
    raise CellsynthError(
        f"{root}: not an EmbedSeg/canonical dataset: expected train/, val/ or test/ with images/ "
        "and masks/ inside, or images/ and masks/ directly"
    )


def _cellpose_folder(
    folder: Path,
    split: str | None,
    img_filter: str,
    mask_filter: str,
    skip_missing: bool,
    label_components: bool,
) -> list[SourceItem]:
    files = list_images(folder)
    masks: dict[str, Path] = {}
    images: dict[str, Path] = {}
    for p in files:
        stem = p.stem
        if stem.endswith(mask_filter) and len(stem) > len(mask_filter):
            base = stem[: -len(mask_filter)]
            if base.endswith("_cp"):
                continue  # Cellpose predictions (X_cp_masks), not annotations
            if base in masks:
                raise CellsynthError(f"{folder}: two masks for {base!r}; keep one")
            masks[base] = p
        elif any(stem.endswith(s) for s in CELLPOSE_OUTPUTS):
            continue
        else:
            base = stem[: -len(img_filter)] if img_filter and stem.endswith(img_filter) else stem
            if base in images:
                raise CellsynthError(
                    f"{folder}: two images named {base!r} ({images[base].name}, {p.name}); keep one"
                )
            images[base] = p
    lonely_images = sorted(images[k].name for k in set(images) - set(masks))
    lonely_masks = sorted(masks[k].name for k in set(masks) - set(images))
    if (lonely_images or lonely_masks) and not skip_missing:
        raise _unpaired_error(folder, lonely_images, lonely_masks)
    names = sorted(set(images) & set(masks))
    if not names:
        raise CellsynthError(
            f"{folder}: no Cellpose pairs found (expected X.tif with X{mask_filter}.tif)"
        )
    return [_pair_item(images[n], masks[n], n, split, {}, label_components) for n in names]


def cellpose_items(
    folder: str | os.PathLike,
    img_filter: str = "",
    mask_filter: str = "_masks",
    skip_missing: bool = False,
    label_components: bool = False,
) -> list[SourceItem]:
    """Items of a Cellpose-style folder (``X`` + ``X_masks``); sub-folders named train/val/test
    are read as those splits, otherwise the folder itself is one pool (split None)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CellsynthError(f"{folder}: no such folder")
    splits = [s for s in SPLITS if (folder / s).is_dir()]
    if splits:
        items = []
        for s in splits:
            items += _cellpose_folder(
                folder / s, s, img_filter, mask_filter, skip_missing, label_components
            )
        return items
    return _cellpose_folder(folder, None, img_filter, mask_filter, skip_missing, label_components)
