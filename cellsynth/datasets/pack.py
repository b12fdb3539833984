"""The dataset tool's packing half: canonical dataset -> GAN training sets, and their readers.

- :func:`pack_masks` writes the StyleGAN3 masks zip: ``00000/img00000000.png`` ... (uint8, gray
  "L" for the binary encoding or RGB for fbd, square, power-of-two side), ``dataset.json``
  ``{"labels": [[name, class_idx], ...]}`` or ``{"labels": null}``, and ``cellsynth.json``
  ``{"encoding", "channels", "resolution", "classes", "source", ...}``.
- :func:`pack_pairs` writes the Pix2PixHD folder: ``ROOT/{split}_label/NAME.png`` (uint8
  semantic label, 0 background, 1 cell or 1 + class index), ``ROOT/{split}_inst/NAME.png``
  (uint16 instance ids), ``ROOT/{split}_img/NAME.tif`` (the image) and ``ROOT/pairs.json``.
- :class:`MaskZipDataset` and :class:`PairsDataset` read them back (validated) for the trainers.

Label maps are cropped and resized with nearest neighbour *before* encoding
(:func:`cellsynth.tools.codec.transform_labels`); images with area averaging / bilinear.
Both writers are atomic: a failure leaves nothing at ``dest``. Source images smaller than
:data:`~cellsynth.datasets.canonical.MIN_IMAGE_SIDE` a side are refused (resizing them would
invent the training data); items without a cell are skipped and counted (``skipped_empty``)
unless ``keep_empty``.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from cellsynth.atomic import atomic_dir, atomic_path, check_writable
from cellsynth.datasets.canonical import SPLITS, CanonicalDataset, check_min_size, is_split_dir
from cellsynth.datasets.io import list_images, read_image, write_image
from cellsynth.errors import CellsynthError
from cellsynth.tools.codec import (
    ENCODINGS,
    TRANSFORMS,
    check_encoding,
    crop_windows,
    encode_mask,
    transform_labels,
)
from cellsynth.tools.parse import parse_size  # noqa: F401 (re-exported)

MASKS_META = "cellsynth.json"
LABELS_JSON = "dataset.json"
PAIRS_META = "pairs.json"


# ----------------------------------------------------------------------------- arguments


def check_resolution(resolution) -> int:
    """Return ``resolution`` as an int; raise unless it is a power of two >= 4."""
    try:
        r = int(resolution)
    except (TypeError, ValueError):
        raise CellsynthError(f"resolution must be an integer, got {resolution!r}") from None
    if r < 4 or r & (r - 1):
        raise CellsynthError(
            f"resolution must be a power of two (e.g. 64, 128, 256, 512), got {resolution}"
        )
    return r


def parse_repeat_crowded(spec) -> list[tuple[int, int]]:
    """``"14:4,10:2"`` (or pairs) -> [(14, 4), (10, 2)], sorted by MIN, densest first: a tile with
    at least MIN objects is packed TIMES times (the first rule it meets). Raises CellsynthError
    for anything but MIN >= 1 and TIMES >= 1 integer pairs with distinct MINs."""
    if spec is None or spec == "" or spec == []:
        return []
    if isinstance(spec, str):
        try:
            pairs = [tuple(int(v) for v in part.split(":")) for part in spec.split(",")]
        except ValueError:
            pairs = None
    else:
        try:
            pairs = [tuple(p) for p in spec]
        except TypeError:
            pairs = None

    def whole(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    if not pairs or any(len(p) != 2 or not (whole(p[0]) and whole(p[1])) for p in pairs):
        raise CellsynthError(
            f"--repeat-crowded {spec!r}: expected MIN:TIMES pairs separated by commas, e.g. "
            "14:4,10:2 (integers >= 1: a tile with at least MIN objects is packed TIMES times)"
        )
    if len({m for m, _ in pairs}) != len(pairs):
        raise CellsynthError(f"--repeat-crowded {spec!r}: each MIN may appear once")
    return sorted(((int(m), int(t)) for m, t in pairs), reverse=True)


def recorded_repeat_crowded(value) -> list[tuple[int, int]]:
    """The rules a file records (``[[MIN, TIMES], ...]`` or None) as
    :func:`parse_repeat_crowded` gives them; ValueError for anything else."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"not a list: {value!r}")
    try:
        return parse_repeat_crowded(value)
    except (CellsynthError, TypeError) as exc:
        raise ValueError(str(exc)) from None


def repeat_times(objects: int, rules: list[tuple[int, int]]) -> int:
    """TIMES of the densest rule (:func:`parse_repeat_crowded`) that a tile with ``objects``
    objects meets, else 1: how often packing repeats it, and what sampling divides out."""
    return next((t for m, t in rules if objects >= m), 1)


def repeats(labels: np.ndarray, rules: list[tuple[int, int]]) -> int:
    """How many times :func:`pack_masks` packs a tile of ``labels`` under ``rules``."""
    if not rules:
        return 1
    return repeat_times(len(np.unique(labels[labels > 0])), rules)


def _check_transform(transform: str) -> str:
    if transform not in TRANSFORMS:
        raise CellsynthError(f"unknown transform {transform!r}; use one of {', '.join(TRANSFORMS)}")
    return transform


def source_splits(source, split: str | None = None, default_all: bool = True) -> list:
    """The (split name, split folder) pairs to read from ``source``.

    Args: source a canonical root or a split folder; split a split to pick (or None);
    default_all with no ``split`` and a root: every split (True) or only ``train`` when the root
    has one (False).
    Returns a non-empty list; raises CellsynthError for a missing or non-canonical source.
    """
    source = Path(source)
    if not source.exists():
        raise CellsynthError(f"{source}: no such source dataset; give a canonical dataset folder")
    if is_split_dir(source):
        name = split or (source.name if source.name in SPLITS else "train")
        return [(name, source)]
    found = [s for s in SPLITS if is_split_dir(source / s)]
    found += sorted(p.name for p in source.iterdir() if p.name not in SPLITS and is_split_dir(p))
    if split is not None:
        if split not in found:
            raise CellsynthError(
                f"{source}: no split {split!r} (found: {', '.join(found) or 'none'})"
            )
        return [(split, source / split)]
    if not found:
        raise CellsynthError(
            f"{source}: not a canonical dataset (expected images/ and masks/, or train/ val/ "
            "test/ folders with them); import it first with `cellsynth dataset import`"
        )
    if not default_all and "train" in found:
        return [("train", source / "train")]
    return [(s, source / s) for s in found]


def resize_image(image: np.ndarray, size) -> np.ndarray:
    """Resize an H x W (x C) image to ``size`` (int or (h, w)), keeping its dtype.

    Area averaging (anti-aliased bilinear) when shrinking, bilinear when enlarging.
    """
    from skimage.transform import resize

    h, w = parse_size(size)
    image = np.asarray(image)
    if image.shape[:2] == (h, w):
        return image.copy()
    shrink = h < image.shape[0] or w < image.shape[1]
    out = resize(
        image.astype(np.float64),
        (h, w) + image.shape[2:],
        order=1,
        mode="reflect",
        anti_aliasing=shrink,
        preserve_range=True,
    )
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(image.dtype)
    if image.dtype == bool:
        return out >= 0.5
    return out.astype(image.dtype)


SIZE_KEY = "nucleus_size"  # a class derived from the masks, for any dataset
SIZE_BINS = ((250, "small"), (700, "medium"), (None, "large"))  # median cell area, full scale


def size_class(labels: np.ndarray) -> str:
    """The ``nucleus_size`` class of one image: its median cell area (pixels, at full scale)
    below 250 is "small", below 700 "medium", else "large" (DSB2018 train: 1,614 / 2,472 /
    2,138 tiles of 128 px at stride 64). An image without cells is "small"."""
    areas = np.bincount(np.asarray(labels).ravel())[1:]
    areas = areas[areas > 0]
    median = float(np.median(areas)) if areas.size else 0.0
    for top, name in SIZE_BINS:
        if top is None or median < top:
            return name
    raise AssertionError("unreachable")


def _class_of(sample, cond: str | None, where: Path) -> str | None:
    """The class of ``sample`` under ``--cond``: its metadata value, or the derived
    ``nucleus_size`` class when the metadata has no such key."""
    if cond is None:
        return None
    meta = sample.meta
    if cond == SIZE_KEY and meta.get(cond) is None:
        return size_class(sample.labels)
    if cond not in meta or meta[cond] is None:
        raise CellsynthError(
            f"{where}: sample {sample.name!r} has no {cond!r} in metadata.json; every sample needs "
            f"it for --cond (or drop --cond; --cond {SIZE_KEY} derives a class from the masks)"
        )
    return str(meta[cond])


def _sources(source, split, default_all, transform, max_images, dest, overwrite) -> list:
    """The checks both writers make before writing anything (the transform, ``max_images``,
    the source splits, ``dest``); returns (split name, CanonicalDataset, length) per split."""
    _check_transform(transform)
    if max_images is not None and int(max_images) < 1:
        raise CellsynthError(f"--max-images must be >= 1, got {max_images}")
    datasets = []
    for name, d in source_splits(source, split, default_all=default_all):
        ds = CanonicalDataset(d)
        datasets.append((name, ds, len(ds)))
    check_writable(dest, overwrite)
    return datasets


def _sample(ds: CanonicalDataset, i: int, bar):
    """Sample ``i`` of ``ds``, refused when smaller than MIN_IMAGE_SIDE; counted on ``bar``."""
    sample = ds[i]
    check_min_size(sample.labels.shape, f"{ds.root}: sample {sample.name!r}")
    bar.update(1)
    return sample


def _png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


# ----------------------------------------------------------------------------- writers


def pack_masks(
    source,
    dest,
    resolution: int,
    encoding: str = "fbd",
    transform: str = "center-crop",
    max_images: int | None = None,
    cond: str | None = None,
    split: str | None = None,
    overwrite: bool = False,
    tile=None,
    stride=None,
    keep_empty: bool = False,
    boundary_width: int = 2,
    repeat_crowded=None,
    progress: bool = False,
) -> dict:
    """Write the StyleGAN3 masks zip from a canonical dataset (atomically).

    Args: source canonical root or split folder; dest the .zip to write; resolution power of
    two; encoding "fbd" | "binary"; transform "center-crop" | "tiles" | "resize"; max_images
    stop after this many items; cond metadata key giving the class (e.g. "cell_type");
    split the split to read (default: a split folder as given, else ``train`` when present,
    else every split); tile, stride for ``tiles`` (tile defaults to resolution); keep_empty
    keep items (images or tiles) without cells; boundary_width of the fbd boundary band;
    repeat_crowded ``"MIN:TIMES,..."`` (:func:`parse_repeat_crowded`): pack each item with at
    least MIN objects TIMES times in a row, so a generator sees crowded tiles, a rare mode it
    tends to drop, more often (the copies count as items; ``cellsynth.json`` records the rules
    and the summary the copies added, ``repeated``).
    Returns a summary dict (items, images, skipped_small, skipped_empty, repeated, classes,
    dest).
    """
    from tqdm import tqdm

    rules = parse_repeat_crowded(repeat_crowded)
    resolution = check_resolution(resolution)
    channels = check_encoding(encoding)
    datasets = _sources(source, split, False, transform, max_images, dest, overwrite)
    if Path(dest).suffix.lower() != ".zip":
        raise CellsynthError(f"{dest}: the masks dataset is a zip file; give a name ending in .zip")

    items, labels, sources, classes = 0, [], [], {}
    images = skipped_small = skipped_empty = repeated = 0
    total = sum(n for _, _, n in datasets)
    with atomic_path(dest, overwrite) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        bar = tqdm(total=total, desc="pack masks", unit="img", disable=not progress)
        for split_name, ds, n in datasets:
            for i in range(n):
                if max_images is not None and items >= max_images:
                    break
                sample = _sample(ds, i, bar)
                images += 1
                cls = _class_of(sample, cond, ds.root)
                parts = transform_labels(
                    sample.labels, resolution, transform, tile, stride, keep_empty
                )
                if not keep_empty and transform != "tiles" and not any(p.any() for _, p in parts):
                    skipped_empty += 1
                    continue
                if not parts and transform == "tiles":
                    skipped_small += int(
                        not crop_windows(sample.labels.shape, resolution, transform, tile, stride)
                    )
                for (y, x, _, _), small in parts:
                    png = _png_bytes(encode_mask(small, encoding, boundary_width))
                    tag = f"_y{y:04d}x{x:04d}" if transform == "tiles" else ""
                    for copy in range(repeats(small, rules)):
                        if max_images is not None and items >= max_images:
                            break
                        arcname = f"{items // 1000:05d}/img{items:08d}.png"
                        zf.writestr(arcname, png)
                        if cls is not None:
                            labels.append([arcname, classes.setdefault(cls, len(classes))])
                        again = f"#{copy + 1}" if copy else ""
                        sources.append(f"{split_name}/{sample.name}{tag}{again}")
                        items += 1
                        repeated += int(copy > 0)
        bar.close()
        if items == 0:
            empty = f"; {skipped_empty} image(s) without cells" if skipped_empty else ""
            raise CellsynthError(
                f"{source}: nothing to pack (no images gave an item{empty}; images may have no "
                "cells or, for tiles, be smaller than the tile: try --keep-empty or center-crop)"
            )
        if cond is not None:
            # class indices in sorted order of the class names, so they do not depend on order;
            # the derived size classes are always all three, so their indices never change
            names = sorted(classes)
            if cond == SIZE_KEY and set(classes) <= {n for _, n in SIZE_BINS}:
                names = sorted(n for _, n in SIZE_BINS)
            remap = {classes[c]: names.index(c) for c in classes}
            labels = [[a, remap[c]] for a, c in labels]
            class_names = names
        else:
            class_names = None
        zf.writestr(LABELS_JSON, json.dumps({"labels": labels if cond else None}))
        meta = {
            "format": "cellsynth-masks",
            "encoding": encoding,
            "channels": channels,
            "resolution": resolution,
            "classes": class_names,
            "cond": cond,
            "source": str(source),
            "splits": [s for s, _, _ in datasets],
            "transform": transform,
            "boundary_width": boundary_width if encoding == "fbd" else None,
            "repeat_crowded": [list(r) for r in rules] or None,
            "items": sources,
        }
        zf.writestr(MASKS_META, json.dumps(meta, indent=1))
    return {
        "dest": str(dest),
        "items": items,
        "images": images,
        "skipped_small": skipped_small,
        "skipped_empty": skipped_empty,
        "repeated": repeated,
        "classes": class_names,
    }


def pack_pairs(
    source,
    dest,
    size,
    transform: str = "center-crop",
    max_images: int | None = None,
    cond: str | None = None,
    split: str | None = None,
    overwrite: bool = False,
    tile=None,
    stride=None,
    keep_empty: bool = False,
    progress: bool = False,
) -> dict:
    """Write the Pix2PixHD pairs folder from a canonical dataset (atomically).

    Args: source canonical root or split folder; dest folder to write; size N or HxW of the
    pairs; transform "center-crop" | "tiles" | "resize"; max_images items per split at most;
    cond metadata key whose value becomes the semantic class (label = 1 + class index);
    split only this split (default every split); tile, stride for ``tiles``; keep_empty keep
    items (images or tiles) without cells.
    Returns a summary dict (splits, skipped_empty, label_nc, channels, size, dest).
    """
    from tqdm import tqdm

    h, w = parse_size(size)
    datasets = _sources(source, split, True, transform, max_images, dest, overwrite)

    counts, classes, channels, skipped_empty = {}, {}, None, 0
    with atomic_dir(dest, overwrite) as tmp:
        for split_name, ds, n in datasets:
            dirs = {k: tmp / f"{split_name}_{k}" for k in ("label", "inst", "img")}
            for d in dirs.values():
                d.mkdir(parents=True, exist_ok=True)
            count = 0
            bar = tqdm(total=n, desc=f"pack pairs {split_name}", unit="img", disable=not progress)
            for i in range(n):
                if max_images is not None and count >= max_images:
                    break
                sample = _sample(ds, i, bar)
                if not keep_empty and transform != "tiles" and not sample.labels.any():
                    skipped_empty += 1
                    continue
                cls = _class_of(sample, cond, ds.root)
                value = 1 if cls is None else 1 + classes.setdefault(cls, len(classes))
                c = 1 if sample.image.ndim == 2 else sample.image.shape[-1]
                if channels is None:
                    channels = c
                elif c != channels:
                    raise CellsynthError(
                        f"{ds.root}: sample {sample.name!r} has {c} channels but earlier images "
                        f"have {channels}; all images of a pairs set need the same channels"
                    )
                parts = transform_labels(sample.labels, (h, w), transform, tile, stride, keep_empty)
                for (y, x, wh, ww), small in parts:
                    if max_images is not None and count >= max_images:
                        break
                    if int(small.max(initial=0)) > 65535:
                        raise CellsynthError(
                            f"{ds.root}: sample {sample.name!r} has more than 65535 cells"
                        )
                    name = (
                        f"{sample.name}_y{y:04d}x{x:04d}" if transform == "tiles" else sample.name
                    )
                    img = resize_image(sample.image[y : y + wh, x : x + ww], (h, w))
                    sem = np.where(small > 0, value, 0).astype(np.uint8)
                    write_image(dirs["label"] / f"{name}.png", sem)
                    write_image(dirs["inst"] / f"{name}.png", small.astype(np.uint16))
                    write_image(dirs["img"] / f"{name}.tif", img)
                    count += 1
            bar.close()
            counts[split_name] = count
            if count == 0:  # no empty folders: readers treat a split without pairs as absent
                for d in dirs.values():
                    d.rmdir()
        if not any(counts.values()):
            empty = f"; {skipped_empty} image(s) without cells" if skipped_empty else ""
            raise CellsynthError(
                f"{source}: nothing to pack (no image gave a pair{empty}; pass --keep-empty to "
                "pack images without cells)"
            )
        class_names = sorted(classes) if cond else None
        if cond:  # rewrite labels so class values follow the sorted class names
            order = {classes[c] + 1: class_names.index(c) + 1 for c in classes}
            if any(a != b for a, b in order.items()):
                lut = np.arange(256, dtype=np.uint8)
                for a, b in order.items():
                    lut[a] = b
                for split_name in counts:
                    for p in sorted((tmp / f"{split_name}_label").glob("*.png")):
                        write_image(p, lut[read_image(p)])
        label_nc = 1 + (len(class_names) if cond else 1)
        meta = {
            "format": "cellsynth-pairs",
            "label_nc": label_nc,
            "channels": channels,
            "size": [h, w],
            "splits": counts,
            "classes": class_names,
            "cond": cond,
            "source": str(source),
            "transform": transform,
        }
        (tmp / PAIRS_META).write_text(json.dumps(meta, indent=1))
    return {
        "dest": str(dest),
        "splits": counts,
        "skipped_empty": skipped_empty,
        "label_nc": label_nc,
        "channels": channels,
        "size": [h, w],
        "classes": class_names,
    }


# ----------------------------------------------------------------------------- readers


def _read_png(data: bytes, where: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.asarray(im)
    except Exception as exc:  # corrupt members surface as many exception types
        raise CellsynthError(f"{where}: corrupt image ({type(exc).__name__}: {exc})") from None


class MaskZipDataset:
    """Reader of a masks zip (cellsynth or plain StyleGAN dataset zip of PNGs).

    ``len(ds)``; ``ds[i]`` -> (uint8 array C x R x R, int label; 0 without labels);
    ``.resolution``, ``.channels``, ``.encoding``, ``.num_classes``, ``.label_dim``,
    ``.has_labels``, ``.names`` (member names), ``.labels`` (int64 array), ``.classes``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise CellsynthError(
                f"{self.path}: no such masks dataset; write one with `cellsynth dataset pack "
                "--kind masks`"
            )
        if not zipfile.is_zipfile(self.path):
            raise CellsynthError(
                f"{self.path}: not a zip file; a masks dataset is the zip written by "
                "`cellsynth dataset pack --kind masks`"
            )
        self._zf, self._pid = None, None
        try:
            members = set(self._zip().namelist())
        except (zipfile.BadZipFile, OSError) as exc:
            raise CellsynthError(f"{self.path}: corrupt zip ({exc})") from None
        self.names = sorted(m for m in members if m.lower().endswith(".png"))
        if not self.names:
            raise CellsynthError(
                f"{self.path}: no PNG images inside; not a cellsynth/StyleGAN masks dataset"
            )
        meta = self._json(MASKS_META) if MASKS_META in members else {}
        first = self._load(0)
        if meta:
            self.encoding = meta.get("encoding")
            if self.encoding not in ENCODINGS:
                raise CellsynthError(
                    f"{self.path}: {MASKS_META} has unknown encoding {self.encoding!r}"
                )
            self.channels = int(meta.get("channels", ENCODINGS[self.encoding]))
            self.resolution = int(meta.get("resolution", first.shape[-1]))
            self.classes = meta.get("classes")
            try:
                self.repeat_crowded = recorded_repeat_crowded(meta.get("repeat_crowded"))
            except ValueError:
                raise CellsynthError(
                    f"{self.path}: {MASKS_META} has a bad repeat_crowded "
                    f"{meta.get('repeat_crowded')!r}; expected [[MIN, TIMES], ...]"
                ) from None
        else:  # a plain StyleGAN zip: infer from the first image
            self.channels = first.shape[0]
            self.resolution = first.shape[-1]
            self.encoding = {1: "binary", 3: "fbd"}.get(self.channels)
            if self.encoding is None:
                raise CellsynthError(
                    f"{self.path}: images have {self.channels} channels; masks need 1 (binary) "
                    "or 3 (fbd)"
                )
            self.classes = None
            self.repeat_crowded = []
        if self.channels != ENCODINGS[self.encoding]:
            raise CellsynthError(
                f"{self.path}: encoding {self.encoding!r} needs {ENCODINGS[self.encoding]} "
                f"channels but {MASKS_META} says {self.channels}"
            )
        check_resolution(self.resolution)
        self._check_shape(first, self.names[0])
        labels = self._json(LABELS_JSON).get("labels") if LABELS_JSON in members else None
        self.has_labels = labels is not None
        self.labels = np.zeros(len(self.names), dtype=np.int64)
        if self.has_labels:
            try:
                table = {str(k): int(v) for k, v in labels}
            except (TypeError, ValueError):
                raise CellsynthError(
                    f"{self.path}: {LABELS_JSON} labels must be [[name, class_idx], ...]"
                ) from None
            missing = [n for n in self.names if n not in table]
            if missing:
                raise CellsynthError(
                    f"{self.path}: {LABELS_JSON} has no label for {', '.join(missing[:3])}"
                )
            self.labels = np.array([table[n] for n in self.names], dtype=np.int64)
            if self.labels.min() < 0:
                raise CellsynthError(f"{self.path}: negative class index in {LABELS_JSON}")
        if self.has_labels:
            self.num_classes = max(int(self.labels.max()) + 1, len(self.classes or []))
        else:
            self.num_classes = 0
        self.label_dim = self.num_classes

    def _zip(self) -> zipfile.ZipFile:
        # one handle per process: data-loader workers must not share the parent's file offset
        if self._zf is None or self._pid != os.getpid():
            self._zf, self._pid = zipfile.ZipFile(self.path), os.getpid()
        return self._zf

    def _json(self, member: str) -> dict:
        try:
            doc = json.loads(self._zip().read(member))
        except (json.JSONDecodeError, UnicodeDecodeError, zipfile.BadZipFile, OSError) as exc:
            raise CellsynthError(f"{self.path}: {member} is not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise CellsynthError(f"{self.path}: {member} must hold a JSON object")
        return doc

    def _load(self, index: int) -> np.ndarray:
        name = self.names[index]
        where = f"{self.path}:{name}"
        try:
            data = self._zip().read(name)
        except (zipfile.BadZipFile, OSError, KeyError) as exc:
            raise CellsynthError(f"{where}: cannot read ({exc})") from None
        arr = _read_png(data, where)
        if arr.dtype != np.uint8:
            raise CellsynthError(f"{where}: masks must be uint8 PNGs, got {arr.dtype}")
        return arr[None] if arr.ndim == 2 else np.ascontiguousarray(np.moveaxis(arr, -1, 0))

    def _check_shape(self, arr: np.ndarray, name: str) -> None:
        want = (self.channels, self.resolution, self.resolution)
        if arr.shape != want:
            raise CellsynthError(
                f"{self.path}:{name}: image is {arr.shape} (C x H x W) but the dataset is {want}; "
                "repack it with `cellsynth dataset pack`"
            )

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        arr = self._load(index)
        self._check_shape(arr, self.names[index])
        return arr, int(self.labels[index])

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_zf"], state["_pid"] = None, None
        return state

    def close(self) -> None:
        if self._zf is not None:
            self._zf.close()
            self._zf = None


class PairsDataset:
    """Reader of one split of a pairs folder written by :func:`pack_pairs`.

    ``len(ds)``; ``ds[i]`` -> dict(name, label (H x W uint8), inst (H x W uint16/32),
    image (H x W (x C))); ``.names``, ``.label_nc``, ``.channels``, ``.size``, ``.classes``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train"):
        self.root = Path(root)
        self.split = split
        meta_path = self.root / PAIRS_META
        if not self.root.is_dir():
            raise CellsynthError(
                f"{self.root}: no such pairs folder; write one with `cellsynth dataset pack "
                "--kind pairs`"
            )
        if not meta_path.is_file():
            raise CellsynthError(
                f"{self.root}: no {PAIRS_META}; not a cellsynth pairs folder (write one with "
                "`cellsynth dataset pack --kind pairs`)"
            )
        try:
            meta = json.loads(meta_path.read_text())
            self.label_nc = int(meta["label_nc"])
            self.channels = int(meta["channels"])
            self.size = tuple(int(s) for s in meta["size"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CellsynthError(f"{meta_path}: invalid pairs metadata ({exc})") from None
        self.meta = meta
        self.classes = meta.get("classes")
        dirs = {k: self.root / f"{split}_{k}" for k in ("label", "inst", "img")}
        missing = [str(d.name) for d in dirs.values() if not d.is_dir()]
        if missing:
            have = sorted(p.name[: -len("_label")] for p in self.root.glob("*_label"))
            raise CellsynthError(
                f"{self.root}: split {split!r} is missing {', '.join(missing)} "
                f"(splits present: {', '.join(have) or 'none'})"
            )
        self.dirs = dirs
        stems = {
            k: {p.stem: p for p in list_images(d, f"{split} {k} images")} for k, d in dirs.items()
        }
        names = set(stems["label"])
        for k in ("inst", "img"):
            if set(stems[k]) != names:
                odd = sorted(set(stems[k]) ^ names)
                raise CellsynthError(
                    f"{self.root}: unpaired names between {split}_label and {split}_{k}: "
                    f"{', '.join(odd[:5])}; every pair needs a label, inst and img file"
                )
        self.names = sorted(names)
        self._files = stems

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        name = self.names[index]
        label = read_image(self._files["label"][name])
        inst = read_image(self._files["inst"][name])
        image = read_image(self._files["img"][name])
        where = f"{self.root}: pair {name!r}"
        if label.ndim != 2 or label.dtype != np.uint8:
            raise CellsynthError(
                f"{where}: label must be a 2-D uint8 PNG, got {label.dtype} {label.shape}"
            )
        if inst.ndim != 2 or not np.issubdtype(inst.dtype, np.integer):
            raise CellsynthError(f"{where}: inst must be a 2-D integer image, got {inst.shape}")
        if label.shape != inst.shape or image.shape[:2] != label.shape:
            raise CellsynthError(
                f"{where}: sizes differ (label {label.shape}, inst {inst.shape}, image "
                f"{image.shape[:2]}); repack with `cellsynth dataset pack --kind pairs`"
            )
        if label.shape != self.size:
            raise CellsynthError(f"{where}: size {label.shape} but {PAIRS_META} says {self.size}")
        if int(label.max(initial=0)) >= self.label_nc:
            raise CellsynthError(
                f"{where}: label value {int(label.max())} >= label_nc {self.label_nc}"
            )
        return {"name": name, "label": label, "inst": inst, "image": image}
