"""COCO / LIVECell instance annotations -> canonical samples.

Reads a COCO JSON (``images``, ``annotations``, optional ``categories``) whose segmentations are
polygons, uncompressed RLE (``counts`` a list) or compressed RLE (``counts`` a string), and turns
each image's annotations into one uint16 instance-label array.

Rasterisation (exact, deterministic): COCO coordinates put pixel ``(row r, col c)`` on the square
``[c, c+1) x [r, r+1)``; a pixel belongs to a polygon when its centre ``(c + 0.5, r + 0.5)`` lies
inside the polygon (points exactly on an edge count as inside). A multi-part polygon is the union
of its parts; parts with fewer than 3 points are ignored. RLE is decoded exactly (column-major
runs, starting with background).

Overlaps (LIVECell annotations overlap) are resolved by one documented rule, shared with the
DSB2018 reader (:func:`resolve_overlaps`):

1. every instance's centroid is the mean (row, col) of all the pixels it claims;
2. a pixel claimed by several instances goes to the claimant whose centroid is nearest
   (squared Euclidean distance); ties go to the instance that comes first (for COCO: the lower
   annotation id; for DSB2018: the mask file name that sorts first);
3. an instance is then dropped when it claims no pixel at all (``empty``), when it had fewer
   than ``min_pixels`` pixels to begin with (``small``), or when it keeps fewer than
   ``min_pixels`` pixels or less than ``min_fraction`` of its own area after step 2
   (``overlap``);
4. the dropped instances are removed and step 2 is applied once more among the kept ones, so
   their pixels go to the remaining claimants (removing instances only enlarges the others, so
   no further instance falls below the limits); kept instances are numbered 1..N in order.

Crowd annotations (``iscrowd: 1``) are not instances and are skipped (counted as ``crowd``).
Annotations whose ``image_id`` names no image of the JSON are dropped (counted as ``orphan``).
Every dropped instance is counted in the statistics; for each image, the annotations read
equal the instances kept plus those dropped.

LIVECell: the cell type is the file-name prefix before the first ``_`` (``BT474_Phase_...`` ->
``"BT474"``), stored in ``meta["cell_type"]``; category names are stored in
``meta["categories"]``. LIVECell's ``annotations`` may be a dict keyed by id; both forms are read.
Images are looked up as ``images_dir/file_name``, then by base name anywhere below
``images_dir`` (the LIVECell archive nests them in per-cell-type folders).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cellsynth.datasets.canonical import Sample
from cellsynth.datasets.folders import SourceItem, normalise_image
from cellsynth.datasets.io import read_image
from cellsynth.errors import CellsynthError

DROP_REASONS = ("empty", "small", "overlap", "crowd", "orphan")


def new_stats() -> dict:
    """An empty statistics dict, filled in by the readers as samples load."""
    stats = {"images": 0, "annotations": 0, "instances": 0, "overlap_pixels": 0, "dropped": 0}
    stats.update({f"dropped_{r}": 0 for r in DROP_REASONS})
    stats["missing_images"] = 0
    return stats


def add_drops(stats: dict, counts: dict) -> None:
    """Add the ``counts`` returned by :func:`resolve_overlaps` to ``stats``."""
    for reason in DROP_REASONS:
        n = int(counts.get(reason, 0))
        stats[f"dropped_{reason}"] += n
        stats["dropped"] += n
    stats["overlap_pixels"] += int(counts.get("overlap_pixels", 0))


def _assign(
    instances: list[np.ndarray],
    centroids: np.ndarray,
    order: list[int],
    width: int,
    size: int,
) -> np.ndarray:
    """Owner (index + 1, 0 = none) of each flat pixel: nearest centroid, first wins ties."""
    owner = np.zeros(size, dtype=np.int64)
    best = np.full(size, np.inf)
    for k in order:
        pix = instances[k]
        d = (pix // width - centroids[k, 0]) ** 2 + (pix % width - centroids[k, 1]) ** 2
        win = d < best[pix]  # strict: an earlier instance keeps a tie
        owner[pix[win]] = k + 1
        best[pix[win]] = d[win]
    return owner


def resolve_overlaps(
    instances: list[np.ndarray],
    shape: tuple[int, int],
    min_pixels: int = 10,
    min_fraction: float = 0.5,
) -> tuple[np.ndarray, list[int], dict]:
    """Merge possibly overlapping instances into one label image (rule: module docstring).

    Args:
        instances: per instance, the flat indices (``row * W + col``) of its pixels, in priority
            order (ties go to the earlier one); duplicates are allowed.
        shape: (H, W) of the image.
        min_pixels: instances with fewer pixels (before or after resolution) are dropped.
        min_fraction: instances keeping less than this fraction of their area are dropped.

    Returns:
        labels (uint16, uint32 if needed) numbered 1..N in input order, the input index of
        each kept instance (``kept[k - 1]`` is label ``k``), and counts
        ``{"empty", "small", "overlap", "overlap_pixels"}``.
    """
    h, w = int(shape[0]), int(shape[1])
    if min_pixels < 0 or not 0.0 <= min_fraction <= 1.0:
        raise CellsynthError(
            f"min_pixels must be >= 0 and min_fraction in [0, 1], got {min_pixels}, {min_fraction}"
        )
    size = h * w
    pix = []
    for p in instances:
        p = np.unique(np.asarray(p, dtype=np.int64))
        if p.size and (p[0] < 0 or p[-1] >= size):
            raise CellsynthError(f"instance pixel index out of range for an image of {h}x{w}")
        pix.append(p)
    n = len(pix)
    areas = np.array([p.size for p in pix], dtype=np.int64)
    centroids = np.zeros((n, 2))
    for k, p in enumerate(pix):
        if p.size:
            centroids[k] = (p // w).mean(), (p % w).mean()
    claims = np.zeros(size, dtype=np.int32)
    for p in pix:
        claims[p] += 1
    counts = {"empty": 0, "small": 0, "overlap": 0, "overlap_pixels": int((claims > 1).sum())}
    nonempty = [k for k in range(n) if areas[k] > 0]
    owner = _assign(pix, centroids, nonempty, w, size)
    kept_area = np.bincount(owner, minlength=n + 1)[1:]
    kept = []
    for k in range(n):
        if areas[k] == 0:
            counts["empty"] += 1
        elif areas[k] < min_pixels:
            counts["small"] += 1
        elif kept_area[k] < min_pixels or kept_area[k] < min_fraction * areas[k]:
            counts["overlap"] += 1
        else:
            kept.append(k)
    if len(kept) < len(nonempty):
        owner = _assign(pix, centroids, kept, w, size)
    lut = np.zeros(n + 1, dtype=np.int64)
    lut[np.array(kept, dtype=np.int64) + 1] = np.arange(1, len(kept) + 1)
    dtype = np.uint16 if len(kept) <= 65535 else np.uint32
    labels = lut[owner].reshape(h, w).astype(dtype)
    return labels, kept, counts


def polygon_pixels(polygons: list, shape: tuple[int, int], where: str = "polygon") -> np.ndarray:
    """Flat indices of the pixels whose centres lie inside any of ``polygons``.

    ``polygons`` is a COCO polygon list ``[[x0, y0, x1, y1, ...], ...]`` in pixel coordinates.
    """
    from skimage.draw import polygon as draw_polygon

    h, w = int(shape[0]), int(shape[1])
    parts = []
    for poly in polygons:
        xy = np.asarray(poly, dtype=np.float64).ravel()
        if xy.size % 2 or not np.all(np.isfinite(xy)):
            raise CellsynthError(f"{where}: polygon needs finite x, y pairs, got {xy.size} values")
        if xy.size < 6:
            continue
        rr, cc = draw_polygon(xy[1::2] - 0.5, xy[0::2] - 0.5, shape=(h, w))
        parts.append(rr.astype(np.int64) * w + cc)
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.concatenate(parts))


def rle_string_to_counts(s: str | bytes) -> list[int]:
    """Decode COCO's compressed RLE string (LEB128-like, 6 bits a char, offset 48, counts after
    the second stored as differences from the count two before) into run lengths."""
    if isinstance(s, bytes):
        s = s.decode("ascii")
    counts: list[int] = []
    pos = 0
    while pos < len(s):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(s):
                raise CellsynthError("compressed RLE string ends in the middle of a number")
            c = ord(s[pos]) - 48
            if not 0 <= c < 64:
                raise CellsynthError(f"compressed RLE string has an invalid character {s[pos]!r}")
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                value -= 1 << shift  # sign-extend
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def rle_pixels(seg: dict, shape: tuple[int, int], where: str = "RLE") -> np.ndarray:
    """Flat (row-major) indices of the foreground of a COCO RLE ``{"size": [h, w], "counts"}``."""
    h, w = int(shape[0]), int(shape[1])
    size = seg.get("size")
    if size is None or [int(v) for v in size] != [h, w]:
        raise CellsynthError(f"{where}: RLE size {size} does not match the image size [{h}, {w}]")
    raw = seg.get("counts")
    counts = rle_string_to_counts(raw) if isinstance(raw, (str, bytes)) else list(raw or [])
    counts = np.asarray(counts, dtype=np.int64)
    if counts.size and (counts.min() < 0 or counts.sum() != h * w):
        raise CellsynthError(
            f"{where}: RLE runs sum to {int(counts.sum())} (negative runs?), expected {h * w}"
        )
    if counts.size == 0:
        return np.zeros(0, dtype=np.int64)
    fg = np.repeat(np.arange(counts.size) % 2 == 1, counts)  # column-major, background first
    return np.flatnonzero(fg.reshape(w, h).T)


def segmentation_pixels(seg, shape: tuple[int, int], where: str) -> np.ndarray:
    """Flat pixel indices of one COCO segmentation (polygon list or RLE dict)."""
    if isinstance(seg, dict):
        return rle_pixels(seg, shape, where)
    if isinstance(seg, list):
        if seg and not isinstance(seg[0], (list, tuple)):
            seg = [seg]  # a single polygon written without the outer list
        return polygon_pixels(seg, shape, where)
    raise CellsynthError(f"{where}: segmentation must be a polygon list or an RLE dict")


def cell_type_from_name(file_name: str) -> str | None:
    """LIVECell cell type: the base file name's prefix before the first ``_`` (None if none)."""
    base = Path(file_name).name
    return base.split("_", 1)[0] if "_" in base else None


def read_coco_json(path: str | os.PathLike) -> dict:
    """Load and check a COCO JSON; returns it with ``annotations`` as a list."""
    path = Path(path)
    if not path.is_file():
        raise CellsynthError(f"{path}: no such annotation file")
    try:
        with open(path, "rb") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise CellsynthError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CellsynthError(f"{path}: not a COCO annotation file (top level is not an object)")
    missing = [k for k in ("images", "annotations") if k not in data]
    if missing:
        raise CellsynthError(
            f"{path}: not a COCO annotation file (missing {', '.join(repr(k) for k in missing)}); "
            "pass a COCO/LIVECell JSON with 'images' and 'annotations'"
        )
    anns = data["annotations"]
    if isinstance(anns, dict):  # LIVECell writes {id: annotation}
        anns = list(anns.values())
    if not isinstance(anns, list) or not isinstance(data["images"], list):
        raise CellsynthError(f"{path}: 'images' and 'annotations' must be lists")
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise CellsynthError(f"{path}: images[{i}] lacks 'id' or 'file_name'")
    for i, ann in enumerate(anns):
        if not isinstance(ann, dict) or "image_id" not in ann or "segmentation" not in ann:
            raise CellsynthError(f"{path}: annotations[{i}] lacks 'image_id' or 'segmentation'")
    data["annotations"] = anns
    return data


class _ImageFinder:
    """Finds ``file_name`` under ``images_dir`` directly or by base name anywhere below it."""

    def __init__(self, images_dir: Path):
        self.images_dir = images_dir
        self._index: dict[str, list[Path]] | None = None

    def __call__(self, file_name: str) -> Path | None:
        direct = self.images_dir / file_name
        if direct.is_file():
            return direct
        base = Path(file_name).name
        if (self.images_dir / base).is_file():
            return self.images_dir / base
        if self._index is None:
            self._index = {}
            for p in sorted(self.images_dir.rglob("*")):
                if p.is_file():
                    self._index.setdefault(p.name, []).append(p)
        found = self._index.get(base, [])
        if len(found) > 1:
            raise CellsynthError(
                f"{self.images_dir}: several files named {base} ({found[0]}, {found[1]}); "
                "pass the folder that holds the right one"
            )
        return found[0] if found else None


def _coco_load(
    json_path: Path,
    img: dict,
    path: Path,
    anns: list[dict],
    cat_names: dict,
    multi_cat: bool,
    cell_type: bool,
    min_pixels: int,
    min_fraction: float,
    skip_crowd: bool,
    stats: dict,
) -> Sample:
    image = normalise_image(read_image(path), str(path))
    h, w = image.shape[:2]
    jh, jw = img.get("height"), img.get("width")
    if jh is not None and jw is not None and (int(jh), int(jw)) != (h, w):
        raise CellsynthError(
            f"{path}: image is {h}x{w} but {json_path.name} says {jh}x{jw} (height x width); "
            "is this the right image folder?"
        )
    crowd = [a for a in anns if skip_crowd and a.get("iscrowd", 0)]
    objs = [a for a in anns if not (skip_crowd and a.get("iscrowd", 0))]
    pix = [
        segmentation_pixels(a["segmentation"], (h, w), f"{json_path}: annotation {a.get('id')}")
        for a in objs
    ]
    labels, kept, counts = resolve_overlaps(pix, (h, w), min_pixels, min_fraction)
    counts["crowd"] = len(crowd)
    stats["images"] += 1
    stats["annotations"] += len(anns)
    stats["instances"] += len(kept)
    add_drops(stats, counts)
    file_name = str(img["file_name"])
    meta: dict = {
        "source": "coco",
        "annotation_file": str(json_path),
        "file_name": file_name,
        "image_id": img["id"],
        "annotation_ids": [objs[k].get("id") for k in kept],
        "dropped": {r: int(counts[r]) for r in DROP_REASONS if counts.get(r)},
    }
    cats = sorted({cat_names.get(objs[k].get("category_id")) for k in kept} - {None})
    if cats:
        meta["categories"] = cats
    if multi_cat:
        meta["instance_categories"] = [cat_names.get(objs[k].get("category_id")) for k in kept]
    if cell_type and cell_type_from_name(file_name):
        meta["cell_type"] = cell_type_from_name(file_name)
    return Sample(Path(file_name).stem, image, labels, meta).check()


def coco_items(
    json_path: str | os.PathLike,
    images_dir: str | os.PathLike,
    *,
    split: str | None = None,
    min_pixels: int = 10,
    min_fraction: float = 0.5,
    skip_missing: bool = False,
    skip_crowd: bool = True,
    cell_type: bool | None = None,
    stats: dict | None = None,
) -> list[SourceItem]:
    """One :class:`SourceItem` per image of a COCO JSON, sorted by name (nothing is rasterised
    until ``item.load()``).

    Args:
        json_path: the COCO / LIVECell annotation file.
        images_dir: folder holding the images (searched recursively by base name).
        split: split to record on every item (None: let the importer assign one).
        min_pixels, min_fraction: overlap / size limits (module docstring).
        skip_missing: skip images listed in the JSON but absent on disk (counted in
            ``stats["missing_images"]``) instead of raising.
        skip_crowd: skip ``iscrowd`` annotations (counted as dropped ``crowd``).
        cell_type: store the file-name prefix as ``meta["cell_type"]``; None = when the JSON's
            ``info.description`` mentions LIVECell.
        stats: dict from :func:`new_stats` updated as items load (and with missing images now).
    """
    json_path, images_dir = Path(json_path), Path(images_dir)
    if not images_dir.is_dir():
        raise CellsynthError(f"{images_dir}: no such image folder")
    data = read_coco_json(json_path)
    stats = new_stats() if stats is None else stats
    if cell_type is None:
        info = data.get("info") if isinstance(data.get("info"), dict) else {}
        cell_type = "livecell" in str(info.get("description", "")).lower()
    cats = data.get("categories") or []
    cat_names = {c.get("id"): c.get("name") for c in cats if isinstance(c, dict)}
    multi_cat = len(cat_names) > 1
    by_image: dict = {}
    known = {img["id"] for img in data["images"]}
    orphans = 0
    for ann in data["annotations"]:
        if ann["image_id"] not in known:
            orphans += 1  # names no image of this JSON: nothing to draw it on
            continue
        by_image.setdefault(ann["image_id"], []).append(ann)
    for anns in by_image.values():
        anns.sort(key=lambda a: (a.get("id") is None, a.get("id") or 0))
    find = _ImageFinder(images_dir)
    items, seen, missing = [], {}, []
    for img in data["images"]:
        name = Path(str(img["file_name"])).stem
        if name in seen:
            raise CellsynthError(
                f"{json_path}: two images share the name {name!r} ({seen[name]}, "
                f"{img['file_name']}); sample names must be unique"
            )
        seen[name] = img["file_name"]
        path = find(str(img["file_name"]))
        if path is None:
            missing.append(str(img["file_name"]))
            continue
        anns = by_image.get(img["id"], [])

        def load(img=img, path=path, anns=anns) -> Sample:
            return _coco_load(
                json_path, img, path, anns, cat_names, multi_cat, bool(cell_type),
                min_pixels, min_fraction, skip_crowd, stats,
            )  # fmt: skip

        items.append(SourceItem(name, load, split))
    if missing and not skip_missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise CellsynthError(
            f"{json_path}: {len(missing)} listed image(s) not found under {images_dir}: "
            f"{', '.join(missing[:3])}{more}; pass the right image folder or --skip-missing"
        )
    stats["missing_images"] += len(missing)
    stats["annotations"] += orphans
    add_drops(stats, {"orphan": orphans})
    if not items:
        raise CellsynthError(f"{json_path}: no images to import")
    return sorted(items, key=lambda it: it.name)


def load_coco_samples(
    json_path: str | os.PathLike, images_dir: str | os.PathLike, **opts
) -> tuple[list[Sample], dict]:
    """Read every image of a COCO / LIVECell JSON as a :class:`Sample` (sorted by name).

    ``opts`` are those of :func:`coco_items` (``min_pixels``, ``min_fraction``,
    ``skip_missing``, ``skip_crowd``, ``cell_type``). Returns the samples and the statistics
    (``images``, ``annotations``, ``instances``, ``dropped`` and ``dropped_<reason>``,
    ``overlap_pixels``, ``missing_images``).
    """
    stats = new_stats()
    items = coco_items(json_path, images_dir, stats=stats, **opts)
    return [item.load() for item in items], stats
