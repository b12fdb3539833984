"""The canonical dataset: the hub every stage reads or writes.

Layout (also the EmbedSeg layout)::

    ROOT/{train,val,test}/images/NAME.tif     image, H x W (x C), uint8/uint16/float32
    ROOT/{train,val,test}/masks/NAME.tif      uint16 instance labels (uint32 when N > 65535)
    ROOT/{split}/metadata.json                optional: {"samples": {NAME: {...}}}

A *split folder* is any folder with ``images/`` and ``masks/`` (for example
``ROOT/train``, or a folder written by ``cellsynth synth``); readers accept a split folder or a
root (then ``split`` picks the sub-folder).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cellsynth.atomic import atomic_dir, write_text
from cellsynth.datasets.io import check_labels, list_images, read_image, read_labels, write_image
from cellsynth.errors import CellsynthError

SPLITS = ("train", "val", "test")
METADATA = "metadata.json"

# The smallest image side that `dataset import` and `dataset pack` accept: one cell of the
# default --min-pixels (10 pixels, about 4 across) with the 2-pixel boundary band of the fbd
# encoding on each side. Anything smaller holds no cell with background around it, and packing
# would only blow it up by interpolation into invented training data.
MIN_IMAGE_SIDE = 8


def check_min_size(shape, where: str) -> None:
    """Raise unless an image of ``shape`` (H, W, ...) is at least MIN_IMAGE_SIDE a side."""
    h, w = int(shape[0]), int(shape[1])
    if min(h, w) < MIN_IMAGE_SIDE:
        raise CellsynthError(
            f"{where}: image is {h}x{w} pixels, smaller than the {MIN_IMAGE_SIDE}x"
            f"{MIN_IMAGE_SIDE} minimum (too small to hold a cell with background around it); "
            "remove it from the source"
        )


@dataclass
class Sample:
    """One annotated image: ``image`` H x W (x C), ``labels`` uint16 H x W, ``meta`` JSON-able."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    meta: dict = field(default_factory=dict)

    def check(self) -> Sample:
        """Validate shapes and label values; return self (raises CellsynthError)."""
        self.labels = check_labels(self.labels, where=f"sample {self.name!r} mask")
        if self.image.shape[:2] != self.labels.shape:
            raise CellsynthError(
                f"sample {self.name!r}: image is {self.image.shape[:2]} but mask is "
                f"{self.labels.shape}; image and mask must have the same size"
            )
        return self


def is_split_dir(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / "images").is_dir() and (path / "masks").is_dir()


def resolve_split(path: str | os.PathLike, split: str | None = None) -> Path:
    """Return the split folder for ``path`` (a split folder, or a root plus ``split``)."""
    path = Path(path)
    if not path.exists():
        raise CellsynthError(f"{path}: no such dataset folder")
    if split is not None and is_split_dir(path / split):
        return path / split
    if is_split_dir(path):
        return path
    found = [s for s in SPLITS if is_split_dir(path / s)]
    hint = f" (it has splits: {', '.join(found)}; choose one)" if found else ""
    raise CellsynthError(
        f"{path}: not a canonical dataset folder: expected images/ and masks/ inside{hint}"
    )


def split_names(split_dir: str | os.PathLike) -> list[str]:
    """Names of the samples in a split folder; raises if images and masks do not pair up."""
    split_dir = Path(split_dir)
    images = {p.stem: p for p in list_images(split_dir / "images")}
    masks = {p.stem: p for p in list_images(split_dir / "masks", what="masks")}
    missing = sorted(set(images) - set(masks))
    extra = sorted(set(masks) - set(images))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"images without masks: {', '.join(missing[:5])}")
        if extra:
            parts.append(f"masks without images: {', '.join(extra[:5])}")
        raise CellsynthError(f"{split_dir}: unpaired files ({'; '.join(parts)})")
    return sorted(images)


def read_metadata(split_dir: str | os.PathLike) -> dict:
    path = Path(split_dir) / METADATA
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CellsynthError(f"{path}: not valid JSON ({exc})") from None
    return dict(data.get("samples", {}))


def _find(folder: Path, name: str) -> Path:
    for suffix in (".tif", ".tiff", ".png", ".jpg", ".jpeg"):
        p = folder / f"{name}{suffix}"
        if p.is_file():
            return p
    raise CellsynthError(f"{folder}: no image named {name!r}")


def read_sample(split_dir: str | os.PathLike, name: str, meta: dict | None = None) -> Sample:
    split_dir = Path(split_dir)
    image = read_image(_find(split_dir / "images", name))
    labels = read_labels(_find(split_dir / "masks", name))
    return Sample(name, image, labels, dict(meta or {})).check()


class CanonicalDataset:
    """Lazy reader of one split folder: ``len(ds)``, ``ds[i]`` -> :class:`Sample`, iteration."""

    def __init__(self, path: str | os.PathLike, split: str | None = None):
        self.root = resolve_split(path, split)
        self.names = split_names(self.root)
        self.meta = read_metadata(self.root)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Sample:
        name = self.names[index]
        return read_sample(self.root, name, self.meta.get(name))

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]


def write_sample(split_dir: str | os.PathLike, sample: Sample, overwrite: bool = True) -> None:
    """Write one sample's image and mask as TIFF into ``split_dir`` (atomically, per file)."""
    split_dir = Path(split_dir)
    sample.check()
    write_image(split_dir / "images" / f"{sample.name}.tif", sample.image, overwrite)
    write_image(split_dir / "masks" / f"{sample.name}.tif", sample.labels, overwrite)


def write_split(split_dir: str | os.PathLike, samples: Iterable[Sample]) -> int:
    """Write samples and their metadata into an existing (temporary) split folder."""
    split_dir = Path(split_dir)
    (split_dir / "images").mkdir(parents=True, exist_ok=True)
    (split_dir / "masks").mkdir(parents=True, exist_ok=True)
    meta, seen = {}, set()
    for sample in samples:
        if sample.name in seen:
            raise CellsynthError(f"duplicate sample name {sample.name!r}")
        seen.add(sample.name)
        write_sample(split_dir, sample)
        if sample.meta:
            meta[sample.name] = sample.meta
    if meta:
        write_text(split_dir / METADATA, json.dumps({"samples": meta}, indent=1, sort_keys=True))
    return len(seen)


def write_dataset(
    root: str | os.PathLike,
    splits: dict[str, Iterable[Sample]],
    overwrite: bool = False,
    info: dict | None = None,
) -> dict[str, int]:
    """Write a whole canonical dataset atomically (a temporary folder renamed at the end).

    ``splits`` maps split names to samples; ``info`` (JSON-able) goes to ``ROOT/dataset.json``.
    Returns the number of samples per split. Nothing is left behind if writing fails.
    """
    counts = {}
    with atomic_dir(root, overwrite=overwrite) as tmp:
        for split, samples in splits.items():
            counts[split] = write_split(tmp / split, samples)
        if not any(counts.values()):
            raise CellsynthError(f"{root}: nothing to write (no samples)")
        doc = {"format": "cellsynth-canonical", "splits": counts, **(info or {})}
        write_text(tmp / "dataset.json", json.dumps(doc, indent=1, sort_keys=True))
    return counts
