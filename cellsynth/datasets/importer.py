"""``cellsynth dataset import``: any supported real-data layout -> one canonical dataset.

Formats (aliases in brackets) and their sources:

- ``coco`` [``livecell``]: COCO / LIVECell JSON(s) + image folder (:mod:`cellsynth.datasets.coco`).
  JSONs come from ``annotations`` (``PATH`` or ``SPLIT=PATH`` to keep a split), from ``.json``
  sources, or are found in a source folder (its ``*.json``; with several, names containing
  train/val/test keep those splits). Images come from ``images``, else ``SOURCE/images``, else
  the source (or JSON) folder.
- ``dsb2018`` [``bbbc038``]: ``ROOT/ID/images/ID.png`` + ``ROOT/ID/masks/*.png``
  (:mod:`cellsynth.datasets.dsb2018`).
- ``embedseg`` [``canonical``]: ``ROOT/{train,val,test}/{images,masks}`` (splits kept) or one
  ``DIR/{images,masks}``.
- ``cellpose``: ``DIR/X.ext`` + ``DIR/X_masks.ext`` (train/val/test sub-folders kept).
- ``folders``: ``images`` + ``masks`` folders paired by file stem.

Samples without a split of their own are assigned one deterministically: names are sorted,
shuffled by ``numpy.random.default_rng(seed)``, and cut by ``split_fractions`` (counts by the
largest-remainder rule, so they add up). ``max_images`` keeps the first N names (sorted) of the
pool, and of each kept split. The output is written atomically with
:func:`cellsynth.datasets.canonical.write_dataset`; ``dataset.json`` records the provenance
(format, sources, options) and the counts (images, instances, dropped overlaps).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from cellsynth.atomic import check_writable
from cellsynth.datasets.canonical import SPLITS, Sample, check_min_size, write_dataset
from cellsynth.datasets.coco import DROP_REASONS, coco_items, new_stats
from cellsynth.datasets.dsb2018 import dsb2018_items
from cellsynth.datasets.folders import (
    SourceItem,
    cellpose_items,
    embedseg_items,
    folder_pairs,
    index_unique,
)
from cellsynth.errors import CellsynthError

FORMATS = {
    "coco": "coco",
    "livecell": "coco",
    "dsb2018": "dsb2018",
    "bbbc038": "dsb2018",
    "embedseg": "embedseg",
    "canonical": "embedseg",
    "cellpose": "cellpose",
    "folders": "folders",
}


def canonical_format(fmt: str) -> str:
    """Resolve a format name or alias; raise listing the known ones."""
    key = str(fmt).lower()
    if key not in FORMATS:
        raise CellsynthError(f"unknown dataset format {fmt!r}; use one of {', '.join(FORMATS)}")
    return FORMATS[key]


def parse_fractions(value: str | Sequence[float]) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` or three numbers -> (train, val, test) fractions that sum to 1."""
    if isinstance(value, str):
        try:
            value = [float(v) for v in value.replace(" ", "").split(",") if v]
        except ValueError:
            raise CellsynthError(
                f"split fractions {value!r}: expected three numbers such as 0.8,0.1,0.1"
            ) from None
    fr = tuple(float(v) for v in value)
    if len(fr) != 3 or any(not np.isfinite(v) or v < 0 for v in fr) or abs(sum(fr) - 1) > 1e-6:
        raise CellsynthError(
            f"split fractions {value}: need three non-negative numbers (train, val, test) "
            "that sum to 1, such as 0.8,0.1,0.1"
        )
    return fr  # type: ignore[return-value]


def assign_splits(
    names: Sequence[str], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, str]:
    """Deterministic split of ``names``: sort, shuffle with ``default_rng(seed)``, cut.

    The number of samples per split is ``floor(f * n)`` plus one for the largest remainders
    (ties: train, then val, then test). Returns ``{name: split}``.
    """
    fractions = parse_fractions(fractions)
    names = sorted(names)
    n = len(names)
    exact = np.array(fractions) * n
    counts = np.floor(exact).astype(int)
    rest = exact - counts
    for i in sorted(range(3), key=lambda i: (-rest[i], i))[: n - int(counts.sum())]:
        counts[i] += 1
    order = np.random.default_rng(seed).permutation(n)
    out = {}
    bounds = np.cumsum(counts)
    for pos, idx in enumerate(order):
        split = SPLITS[int(np.searchsorted(bounds, pos, side="right"))]
        out[names[idx]] = split
    return out


def _split_from_name(path: Path) -> str | None:
    stem = path.stem.lower()
    for split, keys in (("train", ("train",)), ("val", ("val",)), ("test", ("test",))):
        if any(k in stem for k in keys):
            return split
    return None


def _coco_sources(
    sources: Sequence[Path], annotations: Sequence[str], images: Path | None
) -> list[tuple[str | None, Path, Path]]:
    """(split or None, json, images folder) for every annotation file."""
    dirs = [s for s in sources if s.is_dir()]
    for s in sources:
        if not s.exists():
            raise CellsynthError(f"{s}: no such file or folder")
        if s.is_file() and s.suffix.lower() != ".json":
            raise CellsynthError(f"{s}: expected a COCO .json file or a folder")
    jsons: list[tuple[str | None, Path]] = []
    for entry in annotations:
        split, sep, path = str(entry).partition("=")
        if sep and split in SPLITS:
            jsons.append((split, Path(path)))
        elif sep and not Path(entry).exists():
            raise CellsynthError(
                f"--annotations {entry}: the part before '=' must be train, val or test"
            )
        else:
            jsons.append((None, Path(entry)))
    jsons += [(None, s) for s in sources if s.is_file()]
    if not jsons:
        found = sorted(p for d in dirs for p in d.glob("*.json"))
        if not found:
            where = ", ".join(str(d) for d in dirs) or "(no source given)"
            raise CellsynthError(
                f"{where}: no COCO .json annotation file found; pass --annotations FILE.json"
            )
        if len(found) == 1:
            jsons = [(None, found[0])]
        else:
            jsons = [(_split_from_name(p), p) for p in found]
    out = []
    for split, path in jsons:
        if not path.is_file():
            raise CellsynthError(f"{path}: no such annotation file")
        if images is not None:
            img_dir = images
        else:
            base = dirs[0] if dirs else path.parent
            img_dir = base / "images" if (base / "images").is_dir() else base
        out.append((split, path, img_dir))
    return out


def _need(sources: Sequence[Path], fmt: str) -> None:
    if not sources:
        raise CellsynthError(f"format {fmt} needs at least one SOURCE folder")
    for s in sources:
        if not s.is_dir():
            raise CellsynthError(f"{s}: no such folder")


def collect_items(
    fmt: str,
    sources: Sequence[str | os.PathLike] = (),
    *,
    images: str | os.PathLike | None = None,
    masks: str | os.PathLike | None = None,
    annotations: Sequence[str] = (),
    skip_missing: bool = False,
    min_pixels: int = 10,
    min_fraction: float = 0.5,
    label_components: bool = False,
    img_filter: str = "",
    mask_filter: str = "_masks",
    stats: dict | None = None,
) -> list[SourceItem]:
    """All :class:`SourceItem` of a source in format ``fmt`` (see the module docstring)."""
    kind = canonical_format(fmt)
    srcs = [Path(s) for s in sources]
    images = Path(images) if images is not None else None
    masks = Path(masks) if masks is not None else None
    stats = new_stats() if stats is None else stats
    if masks is not None and kind != "folders":
        raise CellsynthError("--masks is only used by the folders format")
    if images is not None and kind not in ("folders", "coco"):
        raise CellsynthError("--images is only used by the coco and folders formats")
    if annotations and kind != "coco":
        raise CellsynthError("--annotations is only used by the coco/livecell format")
    items: list[SourceItem] = []
    if kind == "coco":
        if images is not None and not images.is_dir():
            raise CellsynthError(f"{images}: no such image folder")
        for split, path, img_dir in _coco_sources(srcs, annotations, images):
            items += coco_items(
                path,
                img_dir,
                split=split,
                min_pixels=min_pixels,
                min_fraction=min_fraction,
                skip_missing=skip_missing,
                cell_type=True if str(fmt).lower() == "livecell" else None,
                stats=stats,
            )
    elif kind == "dsb2018":
        _need(srcs, fmt)
        for s in srcs:
            items += dsb2018_items(
                s,
                min_pixels=min_pixels,
                min_fraction=min_fraction,
                skip_missing=skip_missing,
                stats=stats,
            )
    elif kind == "embedseg":
        _need(srcs, fmt)
        for s in srcs:
            items += embedseg_items(s, skip_missing, label_components)
    elif kind == "cellpose":
        _need(srcs, fmt)
        for s in srcs:
            items += cellpose_items(s, img_filter, mask_filter, skip_missing, label_components)
    else:
        if srcs:
            raise CellsynthError("the folders format takes --images DIR --masks DIR, no SOURCE")
        if images is None or masks is None:
            raise CellsynthError("the folders format needs both --images DIR and --masks DIR")
        items = folder_pairs(images, masks, None, skip_missing, label_components)
    index_unique(
        items,
        lambda it: it.name,
        lambda _, it: (
            f"two samples are named {it.name!r} (in several sources or splits); "
            "sample names must be unique"
        ),
    )
    return items


def plan_splits(
    items: Sequence[SourceItem],
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    max_images: int | None = None,
) -> dict[str, list[SourceItem]]:
    """Group items by split: kept splits stay, the pool (split None) is assigned by
    :func:`assign_splits`. ``max_images`` keeps the first N names of the pool and of each kept
    split. Empty splits are left out; items within a split are sorted by name."""
    if max_images is not None and max_images < 1:
        raise CellsynthError(f"--max-images must be at least 1, got {max_images}")
    groups: dict[str | None, list[SourceItem]] = {}
    for it in sorted(items, key=lambda it: it.name):
        groups.setdefault(it.split, []).append(it)
    if max_images is not None:
        groups = {k: v[:max_images] for k, v in groups.items()}
    out: dict[str, list[SourceItem]] = {s: [] for s in SPLITS}
    for split, group in groups.items():
        if split is not None:
            out[split] += group
    pool = groups.get(None, [])
    if pool:
        where = assign_splits([it.name for it in pool], split_fractions, seed)
        for it in pool:
            out[where[it.name]].append(it)
    return {s: sorted(v, key=lambda it: it.name) for s, v in out.items() if v}


def _stream(
    items: Iterable[SourceItem], bar, instances: dict, split: str, fmt: str, finish=None
) -> Iterator[Sample]:
    """Load items one by one (counting instances, refusing images below the minimum size);
    call ``finish()`` once all are loaded."""
    for it in items:
        sample = it.load()
        check_min_size(sample.image.shape, f"sample {it.name!r}")
        sample.meta.setdefault("import_format", fmt)
        instances[split] = instances.get(split, 0) + int(sample.labels.max(initial=0))
        bar.update(1)
        yield sample
    if finish is not None:
        finish()


def import_dataset(
    fmt: str,
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    masks: str | os.PathLike | None = None,
    annotations: Sequence[str] = (),
    split_fractions: Sequence[float] | str = (0.8, 0.1, 0.1),
    seed: int = 0,
    overwrite: bool = False,
    max_images: int | None = None,
    progress: bool = True,
    skip_missing: bool = False,
    min_pixels: int = 10,
    min_fraction: float = 0.5,
    label_components: bool = False,
    img_filter: str = "",
    mask_filter: str = "_masks",
    allow_empty: bool = False,
) -> dict:
    """Import a dataset in format ``fmt`` from ``sources`` into a canonical dataset at ``out``.

    Args: see the module docstring for formats and sources; ``skip_missing`` skips unpaired
    images/masks (and COCO images missing on disk) instead of raising; ``min_pixels`` and
    ``min_fraction`` are the overlap limits of :func:`cellsynth.datasets.coco.resolve_overlaps`;
    ``label_components`` labels binary masks' connected components (pair formats);
    ``img_filter``/``mask_filter`` are Cellpose's name suffixes. Images smaller than
    :data:`~cellsynth.datasets.canonical.MIN_IMAGE_SIDE` a side are refused; an import that
    keeps no instance at all is an error unless ``allow_empty``.

    Returns a summary: ``out``, ``format``, ``splits`` (images per split), ``instances``
    (per split), ``instances_total``, ``annotations``, ``dropped`` (per reason),
    ``dropped_total``, ``overlap_pixels``, ``missing_images``. Nothing is written on error.
    """
    from tqdm import tqdm

    kind = canonical_format(fmt)
    fractions = parse_fractions(split_fractions)
    out = check_writable(out, overwrite)
    stats = new_stats()
    items = collect_items(
        fmt,
        sources,
        images=images,
        masks=masks,
        annotations=annotations,
        skip_missing=skip_missing,
        min_pixels=min_pixels,
        min_fraction=min_fraction,
        label_components=label_components,
        img_filter=img_filter,
        mask_filter=mask_filter,
        stats=stats,
    )
    plan = plan_splits(items, fractions, seed, max_images)
    total = sum(len(v) for v in plan.values())
    kept = sorted({it.split for it in items if it.split is not None})
    provenance = {
        "format": kind,
        "requested_format": str(fmt),
        "sources": [str(Path(s).resolve()) for s in sources],
        "images": str(Path(images).resolve()) if images is not None else None,
        "masks": str(Path(masks).resolve()) if masks is not None else None,
        "annotations": [str(a) for a in annotations],
        "kept_splits": kept,
        "split_fractions": list(fractions),
        "seed": int(seed),
        "max_images": max_images,
        "min_pixels": int(min_pixels),
        "min_fraction": float(min_fraction),
        "label_components": bool(label_components),
        "skip_missing": bool(skip_missing),
        "allow_empty": bool(allow_empty),
    }
    summary: dict = {}
    instances: dict[str, int] = {}
    planned = {s: len(v) for s, v in plan.items()}

    def finish() -> None:
        _summarise(summary, out, kind, planned, instances, stats)
        if summary["instances_total"] == 0 and not allow_empty:
            why = ""
            if stats["annotations"]:
                why = f" ({stats['annotations']} annotations read, {stats['dropped']} dropped)"
            raise CellsynthError(
                f"no instances kept in {total} images{why}; check the masks (and --min-pixels, "
                "--min-fraction), or pass --allow-empty to import images without cells"
            )

    # write_dataset reads ``info`` after every sample is written, so the counts that ``finish``
    # fills in at the end of the last split reach dataset.json (tests/datasets/test_import_cli.py checks).
    info = {"source": provenance, "import": summary}
    bar = tqdm(
        total=total, desc=f"import {kind}", unit="img", disable=not progress, file=sys.stderr
    )
    last = list(plan)[-1]
    try:
        streams = {
            s: _stream(v, bar, instances, s, kind, finish if s == last else None)
            for s, v in plan.items()
        }
        written = write_dataset(out, streams, overwrite=overwrite, info=info)
    finally:
        bar.close()
    return _summarise(summary, out, kind, written, instances, stats)


def _summarise(
    summary: dict, out: Path, kind: str, written: dict, instances: dict, stats: dict
) -> dict:
    summary.update(
        {
            "out": str(out),
            "format": kind,
            "splits": dict(written),
            "instances": {s: instances.get(s, 0) for s in written},
            "instances_total": int(sum(instances.values())),
        }
    )
    if kind in ("coco", "dsb2018"):
        summary["annotations"] = int(stats["annotations"])
        summary["dropped"] = {r: int(stats[f"dropped_{r}"]) for r in DROP_REASONS}
        summary["dropped_total"] = int(stats["dropped"])
        summary["overlap_pixels"] = int(stats["overlap_pixels"])
    summary["missing_images"] = int(stats["missing_images"])
    return summary
