"""The end-to-end generator behind ``cellsynth synth``.

Per seed: make a mask (a trained StyleGAN3 generator, the procedural simulator, or a real mask
from a canonical split folder), decode it to instance labels, filter cells, translate labels +
instances into an image (a trained Pix2PixHD translator, or the simulator's renderer), add
Gaussian puncta, and write. The output folder ``OUT`` is a canonical split folder::

    OUT/images/seedNNNNNN.tif     the image
    OUT/masks/seedNNNNNN.tif      uint16 instance labels
    OUT/spots/seedNNNNNN.csv      x,y,cell_id,intensity of every punctum
    OUT/annotations.json          COCO instances, one RLE per cell
    OUT/manifest.json             version, checkpoint sha256s, every option, every seed
    OUT/synth_options.json        the options and seeds (checked by --resume and --shard)
    OUT/.cellsynth.lock           while a run writes OUT (see :mod:`cellsynth.lock`)

The files of one sample are written completely under ``OUT/.partial`` and then renamed into
place, mask last, so a sample exists only when its mask does; ``resume`` skips those. Shards
(``shard=(i, n)``) take every n-th seed and write ``manifest.shard-i-of-n.json`` and
``annotations.shard-i-of-n.json``; :func:`merge_shards` joins them into the final files, which
are byte-identical to those of a single run. Decoding, rendering, puncta and writing run in
worker processes while the main process drives the GAN(s), batch by batch.

One run writes ``OUT`` at a time: it holds ``OUT/.cellsynth.lock`` (a shard holds
``OUT/.cellsynth.shard-i-of-n.lock``, so the shards of one run may write together), and a second
run stops with one line. ``--resume`` and ``--shard`` continue the seed list the folder was
started with and refuse another one (so manifest.json and annotations.json always list every
sample on disk); more seeds go into a new folder. A run that fails before its first sample is
complete removes the folder it created.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections import deque
from pathlib import Path

import numpy as np

from cellsynth import __version__
from cellsynth.atomic import check_folder_target, output_folder, write_text
from cellsynth.errors import CellsynthError, require
from cellsynth.lock import LOCK_NAME, describe, holder, lock_folder
from cellsynth.tools.parse import MAX_SEED, parse_seeds  # noqa: F401 (re-exported)

BORDER = ("keep", "drop")
THRESHOLD_METHODS = ("fixed", "otsu", "li", "triangle", "mean")
OPTIONS_FILE = "synth_options.json"
PARTIAL = ".partial"


# ----------------------------------------------------------------------------------- parsing
def parse_shard(text) -> tuple[int, int] | None:
    """``"0/4"`` -> (0, 4); None stays None."""
    if text is None:
        return None
    if isinstance(text, (tuple, list)):
        i, n = (int(v) for v in text)
    else:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if m is None:
            raise CellsynthError(f"--shard {text!r}: give i/N, e.g. 0/4")
        i, n = int(m.group(1)), int(m.group(2))
    require(n >= 1 and 0 <= i < n, f"--shard {i}/{n}: need 0 <= i < N")
    return i, n


def sample_name(seed: int) -> str:
    """File stem of the sample made from ``seed``."""
    return f"seed{seed:06d}"


def _spot_seed(seed: int) -> int:
    return int(np.random.SeedSequence([seed, 0x5907]).generate_state(1)[0])


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _source(spec: str, what: str) -> tuple[str, str | None]:
    """'stylegan3:PATH' -> ('stylegan3', PATH); 'simulate' -> ('simulate', None);
    anything else -> ('dir', spec) for masks."""
    spec = str(spec)
    if spec == "simulate":
        return "simulate", None
    for kind in ("stylegan3", "pix2pixhd"):
        if spec.startswith(kind + ":"):
            path = spec[len(kind) + 1 :]
            require(bool(path), f"--{what} {spec!r}: give a checkpoint path after '{kind}:'")
            return kind, path
    if what == "masks":
        return "dir", spec
    raise CellsynthError(f"--images {spec!r}: use simulate or pix2pixhd:PATH")


# ------------------------------------------------------------------------- per-sample stages
def upscale_soft(raw: np.ndarray, factor: int) -> np.ndarray:
    """Resize a generated (soft) H x W (x C) uint8 mask by an integer factor, bilinearly."""
    from skimage.transform import resize

    h, w = raw.shape[:2]
    big = resize(
        raw.astype(np.float32),
        (h * factor, w * factor, *raw.shape[2:]),
        order=1,
        mode="edge",
        anti_aliasing=False,
        preserve_range=True,
    )
    return np.rint(big).clip(0, 255).astype(np.uint8)


def filter_cells(labels: np.ndarray, min_size: int = 0, border: str = "keep") -> np.ndarray:
    """Drop cells smaller than ``min_size`` pixels and (``border="drop"``) cells touching the
    image border; renumber 1..N. Returns uint16 (uint32 when N > 65535) labels."""
    from cellsynth.datasets.io import relabel_sequential

    if border not in BORDER:
        raise CellsynthError(f"unknown border rule {border!r}; use {', '.join(BORDER)}")
    labels = np.asarray(labels)
    drop = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=bool)
    if min_size > 0:
        drop |= np.bincount(labels.ravel(), minlength=drop.size) < min_size
    if border == "drop":
        edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        drop[np.unique(edge)] = True
    drop[0] = False
    if drop.any():
        labels = np.where(drop[labels], 0, labels)
    out = relabel_sequential(labels)
    return out.astype(np.uint16 if out.max(initial=0) <= 65535 else np.uint32)


def coco_annotations(labels: np.ndarray) -> list[dict]:
    """One COCO annotation (without ids) per label 1..N: RLE segmentation, area, bbox.

    Needs pycocotools (the ``benchmark`` extra).
    """
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise CellsynthError(
            "writing annotations.json needs pycocotools; install it with "
            "`pip install pycocotools` (or `pip install cellsynth[benchmark]`)"
        ) from None
    from scipy import ndimage

    anns = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        m = np.asfortranarray((labels == i).astype(np.uint8))
        rle = mask_utils.encode(m)
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        anns.append(
            {
                "label": i,
                "segmentation": {
                    "size": [int(s) for s in rle["size"]],
                    "counts": rle["counts"].decode("ascii"),
                },
                "area": int(m.sum()),
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            }
        )
    return anns


def _labels_task(plan: dict, seed: int, raw) -> tuple:
    """Mask -> filtered instance labels, and the puncta. Returns (labels, spots, times)."""
    from cellsynth.tools.points import simulate_spots

    t0 = time.perf_counter()
    kind = plan["masks_kind"]
    if kind == "simulate":
        from cellsynth.datasets.simulate import simulate_labels

        labels = simulate_labels(seed, plan["size"], **plan["simulate"])
    elif kind == "dir":
        from cellsynth.datasets.io import read_labels

        files = plan["mask_files"]
        labels = read_labels(files[seed % len(files)])
    else:
        from cellsynth.tools.codec import decode_mask

        if plan["upscale"] > 1:
            raw = upscale_soft(raw, plan["upscale"])
        dec = {k: v for k, v in plan["decode"].items() if v is not None}  # None: codec default
        method = dec.pop("threshold_method")
        if method != "fixed":
            from cellsynth.tools.threshold import threshold_value

            fg = raw if raw.ndim == 2 else raw[..., 0]
            dec["fg_thresh"] = threshold_value(fg.astype(np.float32) / 255.0, method)
        labels = decode_mask(raw, plan["encoding"], **dec)
    labels = filter_cells(labels, plan["min_size"], plan["border"])
    t1 = time.perf_counter()
    sp = plan["spots"]
    spots = simulate_spots(labels, _spot_seed(seed), **sp["place"]) if sp["count"] > 0 else None
    if sp["count"] <= 0:
        from cellsynth.tools.points import SPOT_DTYPE

        spots = np.zeros(0, SPOT_DTYPE)
    t2 = time.perf_counter()
    return labels, spots, {"masks": t1 - t0, "spots": t2 - t1}


def _finish_task(plan: dict, seed: int, labels, spots, image, spot_image) -> tuple:
    """Render (when no translator), add puncta, write the files. Returns (record, anns, times)."""
    from cellsynth.datasets.io import write_image, write_labels
    from cellsynth.tools.combine import combine
    from cellsynth.tools.points import render_spots, spots_to_csv

    t0 = time.perf_counter()
    if image is None:
        from cellsynth.datasets.simulate import render_image

        image = render_image(labels, seed, **plan["render"])
    t1 = time.perf_counter()
    sp = plan["spots"]
    if spots.size:
        if spot_image is None:
            spot_image = render_spots(labels.shape, spots, sp["psf_sigma"])
        else:
            spot_image = np.asarray(spot_image)
            spot_image = (spot_image if spot_image.ndim == 2 else spot_image[..., 0]) / 255.0
        image = combine(
            image,
            spot_image,
            mode=sp["mode"],
            channel=sp["channel"],
            scale=sp["scale"],
            photons=sp["photons"],
            read_noise=sp["read_noise"],
            seed=_spot_seed(seed),
        )
    t2 = time.perf_counter()
    out = Path(plan["out"])
    name = sample_name(seed)
    part = out / PARTIAL
    write_image(part / f"{name}.image.tif", image)
    write_text(part / f"{name}.csv", spots_to_csv(spots))
    write_labels(part / f"{name}.mask.tif", labels)
    anns = coco_annotations(labels)
    # all complete: move into place, mask last (a sample exists once its mask does)
    os.replace(part / f"{name}.csv", out / "spots" / f"{name}.csv")
    os.replace(part / f"{name}.image.tif", out / "images" / f"{name}.tif")
    os.replace(part / f"{name}.mask.tif", out / "masks" / f"{name}.tif")
    t3 = time.perf_counter()
    record = _record(plan, seed, labels, spots.size, image)
    return record, anns, {"images": t1 - t0, "spots": t2 - t1, "write": t3 - t2}


def _full_task(plan: dict, seed: int, raw) -> tuple:
    labels, spots, ta = _labels_task(plan, seed, raw)
    record, anns, tb = _finish_task(plan, seed, labels, spots, None, None)
    return record, anns, {k: ta.get(k, 0.0) + tb.get(k, 0.0) for k in {*ta, *tb}}


def _record(plan, seed, labels, n_spots, image) -> dict:
    rec = {
        "name": sample_name(seed),
        "seed": int(seed),
        "height": int(labels.shape[0]),
        "width": int(labels.shape[1]),
        "cells": int(labels.max(initial=0)),
        "spots": int(n_spots),
    }
    if plan["masks_kind"] == "dir":
        files = plan["mask_files"]
        rec["mask_source"] = Path(files[seed % len(files)]).name
    return rec


def _done_task(plan: dict, seed: int) -> tuple:
    """Record and annotations of a sample already on disk (resume)."""
    from cellsynth.datasets.io import read_labels
    from cellsynth.tools.points import spots_from_csv

    out = Path(plan["out"])
    name = sample_name(seed)
    labels = read_labels(out / "masks" / f"{name}.tif")
    csv = out / "spots" / f"{name}.csv"
    n_spots = spots_from_csv(csv.read_text(), str(csv)).size
    return _record(plan, seed, labels, n_spots, None), coco_annotations(labels), {}


_TASKS = {"labels": _labels_task, "finish": _finish_task, "full": _full_task, "done": _done_task}
_PLAN: dict | None = None


def _init_worker(plan: dict) -> None:
    global _PLAN
    _PLAN = plan


def _run_task(name: str, args: tuple):
    return _TASKS[name](_PLAN, *args)


class _Ready:
    def __init__(self, value):
        self.value = value

    def get(self):
        return self.value

    def ready(self):
        return True


class _InlinePool:
    """The pool interface, run in this process (``workers=0``)."""

    def __init__(self, plan):
        self.plan = plan

    def submit(self, name, args):
        return _Ready(_TASKS[name](self.plan, *args))

    def close(self):
        pass


class _ProcessPool:
    def __init__(self, plan, workers):
        import multiprocessing as mp

        self.pool = mp.get_context("spawn").Pool(workers, _init_worker, (plan,))

    def submit(self, name, args):
        return self.pool.apply_async(_run_task, (name, args))

    def close(self):
        self.pool.terminate()
        self.pool.join()


# ------------------------------------------------------------------------------- COCO, files
def build_coco(records: list[dict], anns_by_seed: dict[int, list[dict]], seed_index) -> dict:
    """COCO document: images in seed-list order (id = position + 1), annotations numbered in
    that order, then by label."""
    images, annotations = [], []
    for rec in sorted(records, key=lambda r: seed_index[r["seed"]]):
        image_id = seed_index[rec["seed"]] + 1
        images.append(
            {
                "id": image_id,
                "file_name": f"images/{rec['name']}.tif",
                "height": rec["height"],
                "width": rec["width"],
                "seed": rec["seed"],
            }
        )
        for a in anns_by_seed[rec["seed"]]:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "iscrowd": 0,
                    "instance_id": a["label"],
                    "segmentation": a["segmentation"],
                    "area": a["area"],
                    "bbox": a["bbox"],
                }
            )
    return {
        "info": {"description": "cellsynth synthetic cells", "version": __version__},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "cell", "supercategory": "cell"}],
    }


def _dumps(doc) -> str:
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def _manifest(run: dict, records: list[dict], seed_index, shard=None) -> dict:
    doc = {
        "format": "cellsynth-synth",
        "cellsynth_version": __version__,
        "options": run["options"],
        "checkpoints": run["checkpoints"],
        "count": len(records),
        "samples": sorted(records, key=lambda r: seed_index[r["seed"]]),
    }
    if shard is not None:
        doc["shard"] = list(shard)
    return doc


# ------------------------------------------------------------------------------------ synth
def _load_generator(path, device):
    from cellsynth.tools.codec import ENCODINGS

    if not Path(path).is_file():
        raise CellsynthError(
            f"{path}: no such stylegan3 checkpoint; train one with `cellsynth stylegan3 train` "
            "and give its network-snapshot-*.pt"
        )
    try:
        from cellsynth.stylegan3.generate import MaskGenerator
    except ImportError as exc:
        raise CellsynthError(f"the stylegan3 generator is not available ({exc})") from None
    gen = MaskGenerator.load(path, device=device)
    if not gen.encoding:
        raise CellsynthError(
            f"{path}: the snapshot does not record its mask encoding; cannot decode its masks"
        )
    if gen.encoding not in ENCODINGS or ENCODINGS[gen.encoding] != gen.channels:
        raise CellsynthError(
            f"{path}: {gen.channels}-channel generator but encoding {gen.encoding!r} needs "
            f"{ENCODINGS.get(gen.encoding, '?')} channels; the snapshot is inconsistent"
        )
    return gen


def _load_translator(path, device, what):
    if not Path(path).exists():
        raise CellsynthError(
            f"{path}: no such pix2pixhd checkpoint ({what}); train one with "
            "`cellsynth pix2pixhd train` and give its latest.pt or run folder"
        )
    try:
        from cellsynth.pix2pixhd.translator import Translator
    except ImportError as exc:
        raise CellsynthError(f"the pix2pixhd translator is not available ({exc})") from None
    tr = Translator.load(path, device=device)
    if tr.label_nc == 1:
        raise CellsynthError(
            f"{path}: the {what} model takes label_nc=1, but masks carry 2 classes "
            "(0 background, 1 object); retrain with label_nc >= 2"
        )
    return tr


def _checkpoint_path(path) -> Path:
    p = Path(path)
    if p.is_dir():
        for cand in ("latest.pt",):
            if (p / cand).is_file():
                return p / cand
    return p


def synth(
    out,
    masks: str = "simulate",
    images: str = "simulate",
    seeds="0-9",
    *,
    size: int | tuple = 256,
    density: float = 0.5,
    mean_radius: float = 12.0,
    trunc: float = 1.0,
    class_idx: int | None = None,
    noise_mode: str = "const",
    threshold_method: str = "fixed",
    fg_thresh: float | None = None,
    boundary_thresh: float | None = None,
    marker_thresh: float | None = None,
    smooth: float = 0.0,
    min_size: int = 0,
    border: str = "keep",
    upscale: int = 1,
    channels: int = 1,
    bit_depth: int = 8,
    spots_count: float = 0.0,
    spots_fixed: bool = False,
    spots_spread: str = "isotropic",
    spots_sigma: float = 2.0,
    spots_scale: float = 0.5,
    spots_matrix=None,
    spots_intensity: str = "lognormal",
    spots_intensity_mean: float = 3.0,
    spots_intensity_spread: float = 0.3,
    spots_psf: float = 1.0,
    spots_mode: str = "add",
    spots_channel: int | None = 0,
    spots_model: str | None = None,
    spots_scale_image: float = 1.0,
    photons: float = 0.0,
    read_noise: float = 0.0,
    resume: bool = False,
    shard=None,
    batch: int = 8,
    workers: int = 0,
    overwrite: bool = False,
    device: str | None = None,
    progress: bool = False,
) -> dict:
    """Generate a synthetic dataset into ``out`` (see the module docstring for the layout).

    Args:
        out: output folder.
        masks: "simulate", "stylegan3:PATH" (a snapshot) or a canonical split folder (its masks
            are re-rendered; seed s uses mask number s modulo their count).
        images: "simulate" or "pix2pixhd:PATH" (a checkpoint or run folder).
        seeds: "0-99,120", an int, or a list of ints.
        size, density, mean_radius: the simulator's masks.
        trunc, class_idx, noise_mode: StyleGAN3 sampling.
        threshold_method, fg_thresh, boundary_thresh, marker_thresh, smooth: decoding of
            generated masks (None: the codec's defaults; ``threshold_method`` other than
            "fixed" sets fg_thresh per mask).
        min_size, border: cell filters ("keep" or "drop" cells touching the border).
        upscale: StyleGAN masks only: the generator's soft output is resized by this integer
            factor (bilinear) before decoding, so a low-resolution mask generator can feed a
            translator trained at a larger size (cell outlines stay smooth).
        channels, bit_depth: the simulator's images.
        spots_*: puncta (count 0 = none): see :func:`cellsynth.tools.points.simulate_spots`,
            ``spots_psf`` the PSF sigma, ``spots_mode``/``spots_channel`` where they go,
            ``spots_model`` "pix2pixhd:PATH" to render spot masks with a trained model,
            ``spots_scale_image`` the factor on the spots image.
        photons, read_noise: Poisson-Gaussian noise added with the puncta.
        resume: skip seeds whose files exist. shard: "i/N" or (i, N).
        batch: masks per GAN batch. workers: worker processes (0 = in this process).
        overwrite: replace an existing output folder. device: torch device for the GANs.
        progress: show a progress bar.

    Returns:
        summary dict: written, skipped, seconds, per-stage seconds, paths.
    """
    from cellsynth.tools.combine import MODES
    from cellsynth.tools.points import INTENSITIES, SPREADS

    t_start = time.perf_counter()
    out = check_folder_target(out)
    seed_list = parse_seeds(seeds)
    shard = parse_shard(shard)
    masks_kind, masks_path = _source(masks, "masks")
    images_kind, images_path = _source(images, "images")
    require(images_kind in ("simulate", "pix2pixhd"), f"--images {images!r}: unknown source")
    require(masks_kind in ("simulate", "stylegan3", "dir"), f"--masks {masks!r}: unknown source")
    require(batch >= 1, f"--batch must be >= 1, got {batch}")
    require(workers >= 0, f"--workers must be >= 0, got {workers}")
    require(border in BORDER, f"unknown border rule {border!r}; use {', '.join(BORDER)}")
    require(
        threshold_method in THRESHOLD_METHODS,
        f"unknown threshold method {threshold_method!r}; use {', '.join(THRESHOLD_METHODS)}",
    )
    require(min_size >= 0, f"--min-size must be >= 0, got {min_size}")
    require(
        int(upscale) == upscale and 1 <= upscale <= 16, f"--upscale must be 1..16, got {upscale}"
    )
    require(spots_spread in SPREADS, f"unknown spots spread {spots_spread!r}")
    require(spots_intensity in INTENSITIES, f"unknown spots intensity {spots_intensity!r}")
    require(spots_mode in MODES, f"unknown spots mode {spots_mode!r}; use {', '.join(MODES)}")
    require(spots_count >= 0, f"--spots-count must be >= 0, got {spots_count}")
    require(not (overwrite and shard), "--overwrite with --shard would delete other shards' work")
    require(not (overwrite and resume), "give --resume or --overwrite, not both")
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    size = tuple(int(s) for s in size)
    if spots_matrix is not None:
        spots_matrix = np.asarray(spots_matrix, dtype=float).reshape(2, 2).tolist()

    options = {
        "masks": str(masks),
        "images": str(images),
        "seeds": seeds if isinstance(seeds, str) else ",".join(str(s) for s in seed_list),
        "trunc": float(trunc),
        "class": class_idx,
        "noise_mode": noise_mode,
        "threshold_method": threshold_method,
        "fg_thresh": None if fg_thresh is None else float(fg_thresh),
        "boundary_thresh": None if boundary_thresh is None else float(boundary_thresh),
        "marker_thresh": None if marker_thresh is None else float(marker_thresh),
        "smooth": float(smooth),
        "min_size": int(min_size),
        "border": border,
        "upscale": int(upscale),
        "spots": {
            "count": float(spots_count),
            "fixed": bool(spots_fixed),
            "spread": spots_spread,
            "sigma": float(spots_sigma),
            "scale": float(spots_scale),
            "matrix": spots_matrix,
            "intensity": spots_intensity,
            "intensity_mean": float(spots_intensity_mean),
            "intensity_spread": float(spots_intensity_spread),
            "psf_sigma": float(spots_psf),
            "mode": spots_mode,
            "channel": spots_channel,
            "model": spots_model,
            "image_scale": float(spots_scale_image),
            "photons": float(photons),
            "read_noise": float(read_noise),
        },
    }
    if masks_kind == "simulate":
        options["simulate"] = {
            "size": list(size),
            "density": float(density),
            "mean_radius": float(mean_radius),
        }
    if masks_kind == "stylegan3":
        options["batch"] = int(batch)  # GAN batches are fixed groups of the seed list
    if images_kind == "simulate":
        options["render"] = {"channels": int(channels), "bit_depth": int(bit_depth)}

    # --- load and check every input before anything is written
    checkpoints: dict = {}
    plan: dict = {
        "out": str(out),
        "masks_kind": masks_kind,
        "size": size,
        "simulate": {"density": float(density), "mean_radius": float(mean_radius)},
        "decode": {
            "threshold_method": threshold_method,
            "fg_thresh": None if fg_thresh is None else float(fg_thresh),
            "boundary_thresh": None if boundary_thresh is None else float(boundary_thresh),
            "marker_thresh": None if marker_thresh is None else float(marker_thresh),
            "smooth": float(smooth),
        },
        "min_size": int(min_size),
        "border": border,
        "upscale": int(upscale),
        "render": {"channels": int(channels), "bit_depth": int(bit_depth)},
        "spots": {
            "count": float(spots_count),
            "place": {
                "count": float(spots_count),
                "count_mode": "fixed" if spots_fixed else "poisson",
                "spread": spots_spread,
                "sigma": float(spots_sigma),
                "scale": float(spots_scale),
                "matrix": spots_matrix,
                "intensity": spots_intensity,
                "intensity_mean": float(spots_intensity_mean),
                "intensity_spread": float(spots_intensity_spread),
            },
            "psf_sigma": float(spots_psf),
            "mode": spots_mode,
            "channel": spots_channel,
            "scale": float(spots_scale_image),
            "photons": float(photons),
            "read_noise": float(read_noise),
        },
    }
    if spots_count > 0:  # check the puncta options once, on a tiny mask
        from cellsynth.tools.points import simulate_spots

        probe = np.zeros((4, 4), np.uint16)
        probe[1:3, 1:3] = 1
        simulate_spots(probe, 0, **plan["spots"]["place"])
    require(spots_count > 0 or spots_model is None, "--spots-model needs --spots-count > 0")
    require(
        spots_fixed is False or float(spots_count).is_integer(),
        "--spots-fixed needs an integer --spots-count",
    )
    if masks_kind == "simulate":
        from cellsynth.datasets.simulate import simulate_labels

        simulate_labels(0, size, density=density, mean_radius=mean_radius)  # checks options
    if images_kind == "simulate":
        require(1 <= int(channels) <= 4, f"--channels must be 1..4, got {channels}")
        require(int(bit_depth) in (8, 16), f"--bit-depth must be 8 or 16, got {bit_depth}")
    if masks_kind == "dir":
        from cellsynth.datasets.canonical import resolve_split
        from cellsynth.datasets.io import list_images

        root = resolve_split(masks_path)
        plan["mask_files"] = [str(p) for p in list_images(root / "masks", "masks")]
    need_torch = masks_kind == "stylegan3" or images_kind == "pix2pixhd" or spots_model
    if need_torch:
        import torch

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = translator = spot_translator = None
    if masks_kind == "stylegan3":
        generator = _load_generator(masks_path, device)
        if generator.num_classes and class_idx is None:
            raise CellsynthError(
                f"{masks_path}: the generator is conditional ({generator.num_classes} classes); "
                "pass --class"
            )
        if not generator.num_classes and class_idx is not None:
            raise CellsynthError(f"{masks_path}: --class given, but the generator is unconditional")
        plan["encoding"] = generator.encoding
        checkpoints["masks"] = {"path": masks_path, "sha256": file_sha256(masks_path)}
    elif class_idx is not None:
        raise CellsynthError("--class needs --masks stylegan3:PATH")
    out_channels = int(channels)
    if images_kind == "pix2pixhd":
        translator = _load_translator(images_path, device, "images")
        out_channels = translator.output_nc
        ck = _checkpoint_path(images_path)
        checkpoints["images"] = {"path": images_path, "sha256": file_sha256(ck)}
    if spots_model is not None:
        kind, spath = _source(spots_model, "spots-model")
        require(kind == "pix2pixhd", f"--spots-model {spots_model!r}: use pix2pixhd:PATH")
        spot_translator = _load_translator(spath, device, "spots")
        if spot_translator.output_nc != 1:
            raise CellsynthError(
                f"{spath}: the spots model makes {spot_translator.output_nc}-channel images; "
                "a spots model must make 1-channel images"
            )
        checkpoints["spots_model"] = {"path": spath, "sha256": file_sha256(_checkpoint_path(spath))}
    if spots_count > 0 and spots_mode == "add" and spots_channel is not None:
        require(
            -out_channels <= int(spots_channel) < out_channels,
            f"--spots-channel {spots_channel}: the images have {out_channels} channel(s)",
        )
    if spots_count > 0 and spots_mode == "channel":
        require(
            out_channels < 4,
            f"--spots-mode channel: images already have {out_channels} channels (at most 4)",
        )
    run = {"options": options, "checkpoints": checkpoints}

    # --- the output folder: created (and removed again if this run fails before a sample is
    # complete), then locked for as long as this run writes it
    opts_doc = {
        "format": "cellsynth-synth-options",
        **run,
        "options": {k: v for k, v in options.items() if k != "seeds"},
        "seeds": options["seeds"],
    }
    lock_name = LOCK_NAME if shard is None else f".cellsynth.shard-{shard[0]}-of-{shard[1]}.lock"
    with contextlib.ExitStack() as stack:
        stack.enter_context(output_folder(out, keep=_has_samples))
        stack.enter_context(lock_folder(out, "synth", lock_name))
        _check_other_locks(out, lock_name)
        existing = any(not _is_lock(p.name) for p in out.iterdir())
        if existing and not (resume or overwrite or shard):
            raise CellsynthError(
                f"{out} already exists; pass --resume to continue it, or --overwrite to replace it"
            )
        if existing and overwrite:
            if not (out / OPTIONS_FILE).is_file():
                raise CellsynthError(
                    f"{out}: not a `cellsynth synth` output (no {OPTIONS_FILE}); "
                    "refusing to delete it, choose another --out"
                )
            for p in out.iterdir():
                if p.name == lock_name:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
            existing = False
        if existing:
            _check_resumable(out, opts_doc, seed_list)
        for sub in ("images", "masks", "spots", PARTIAL):
            (out / sub).mkdir(parents=True, exist_ok=True)
        if not (out / OPTIONS_FILE).is_file():
            write_text(out / OPTIONS_FILE, _dumps(opts_doc))
        return _generate(
            out,
            plan,
            run,
            seed_list,
            shard,
            generator,
            translator,
            spot_translator,
            trunc=trunc,
            class_idx=class_idx,
            noise_mode=noise_mode,
            batch=batch,
            workers=workers,
            resume=resume,
            progress=progress,
            t_start=t_start,
        )


def _is_lock(name: str) -> bool:
    return name.startswith(".cellsynth.") and name.endswith(".lock")


def _has_samples(out: Path) -> bool:
    """Whether ``out`` holds a complete sample (worth keeping for --resume after a failure)."""
    return any((out / "masks").glob("seed*.tif"))


def _check_other_locks(out: Path, mine: str) -> None:
    """A whole run and shard runs exclude each other (shards of one run may run together)."""
    names = [LOCK_NAME] if mine != LOCK_NAME else [p.name for p in out.glob(".cellsynth.*.lock")]
    for name in names:
        if name == mine:
            continue
        doc = holder(out, name)
        if doc is not None:
            raise CellsynthError(
                f"{out} is in use by {describe(doc)} (lock {name}); wait for it to finish, or "
                f"delete {out / name} if no run is using the folder"
            )


def _check_resumable(out: Path, opts_doc: dict, seed_list: list[int]) -> None:
    """Refuse to continue ``out`` with other options, checkpoints or seeds than it was made with.

    The seed list must be the one the folder was started with, so that manifest.json and
    annotations.json always list every sample on disk.
    """
    path = out / OPTIONS_FILE
    if not path.is_file():
        raise CellsynthError(f"{out}: not a `cellsynth synth` output (no {OPTIONS_FILE})")
    try:
        prev = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CellsynthError(f"{path}: not valid JSON ({exc}); use a new --out") from None
    if not isinstance(prev, dict):
        raise CellsynthError(f"{path}: not a `cellsynth synth` options file; use a new --out")
    recorded = prev.pop("seeds", None)  # folders of earlier versions do not record them
    if _dumps(prev) != _dumps({k: v for k, v in opts_doc.items() if k != "seeds"}):
        raise CellsynthError(
            f"{out}: was made with other options or checkpoints (see {OPTIONS_FILE}); use "
            "the same options to resume, or a new --out"
        )
    given = opts_doc["seeds"]
    if recorded is not None:
        try:
            same = parse_seeds(recorded) == seed_list
        except CellsynthError:
            same = False
        if not same:
            raise CellsynthError(
                f"{out}: was started with --seeds {_clip(recorded)}, not {_clip(given)}; "
                "--resume and --shard continue the same seed list (make other seeds in a new "
                "--out)"
            )
    wanted = {sample_name(s) for s in seed_list}
    on_disk = {p.stem for sub in ("images", "masks", "spots") for p in (out / sub).glob("seed*")}
    extra = sorted(on_disk - wanted)
    if extra:
        raise CellsynthError(
            f"{out}: holds samples of seeds outside --seeds {_clip(given)} "
            f"({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}); resume with the seed "
            "list the folder was started with, or use a new --out"
        )


def _clip(text, n: int = 40) -> str:
    text = str(text)
    return text if len(text) <= n else text[: n - 3] + "..."


def _generate(
    out: Path,
    plan: dict,
    run: dict,
    seed_list: list[int],
    shard,
    generator,
    translator,
    spot_translator,
    *,
    trunc,
    class_idx,
    noise_mode,
    batch: int,
    workers: int,
    resume: bool,
    progress: bool,
    t_start: float,
) -> dict:
    """The work of :func:`synth` once its output folder is ready and locked."""
    from tqdm import tqdm

    seed_index = {s: i for i, s in enumerate(seed_list)}
    if generator is not None:
        # A GAN batch's numbers depend (in the last bits) on its other members, so batches are
        # fixed groups of the whole seed list; shards and resumed runs regenerate whole groups.
        groups = [seed_list[k : k + batch] for k in range(0, len(seed_list), batch)]
        if shard is not None:
            groups = groups[shard[0] :: shard[1]]
    else:
        mine = seed_list if shard is None else seed_list[shard[0] :: shard[1]]
        groups = [mine[k : k + batch] for k in range(0, len(mine), batch)]
    mine = [s for g in groups for s in g]
    for s in mine:  # leftovers of a killed run
        for f in (out / PARTIAL).glob(f"{sample_name(s)}.*"):
            f.unlink()

    def is_done(s):
        n = sample_name(s)
        return all(
            (out / d / f"{n}{e}").is_file()
            for d, e in (("images", ".tif"), ("spots", ".csv"), ("masks", ".tif"))
        )

    done = [s for s in mine if is_done(s)] if (resume or shard) else []
    done_set = set(done)
    todo = [s for s in mine if s not in done_set]

    times = {
        "masks": 0.0,
        "gan_masks": 0.0,
        "gan_images": 0.0,
        "images": 0.0,
        "spots": 0.0,
        "write": 0.0,
    }
    records: dict[int, dict] = {}
    anns: dict[int, list] = {}
    pool = _ProcessPool(plan, workers) if workers > 0 else _InlinePool(plan)
    bar = tqdm(total=len(mine), initial=len(done), desc="synth", unit="img", disable=not progress)

    def collect(result):
        rec, a, t = result
        records[rec["seed"]] = rec
        anns[rec["seed"]] = a
        for k, v in t.items():
            times[k] += v

    try:
        for job in [pool.submit("done", (s,)) for s in done]:
            collect(job.get())
        stage1: deque = deque()  # (seeds, jobs) waiting for the translator(s)
        stage2: deque = deque()  # jobs writing files
        max_pending = max(2, 2 * workers)

        def drain(block: bool):
            while stage2 and (block or stage2[0].ready()):
                collect(stage2.popleft().get())
                bar.update(1)

        def advance():
            chunk, jobs = stage1.popleft()
            got = [j.get() for j in jobs]
            labels = [g[0] for g in got]
            spots = [g[1] for g in got]
            for g in got:
                for k, v in g[2].items():
                    times[k] += v
            t0 = time.perf_counter()
            imgs = translator.translate_batch(
                [(lab > 0).astype(np.uint8) for lab in labels], labels, seeds=chunk
            )
            spot_imgs = [None] * len(chunk)
            if spot_translator is not None:
                from cellsynth.tools.points import spots_mask

                idx = [k for k, sp in enumerate(spots) if sp.size]
                if idx:
                    sm = [spots_mask(labels[k].shape, spots[k]) for k in idx]
                    res = spot_translator.translate_batch(
                        [(m > 0).astype(np.uint8) for m in sm], sm, seeds=[chunk[k] for k in idx]
                    )
                    for k, r in zip(idx, res):
                        spot_imgs[k] = r
            times["gan_images"] += time.perf_counter() - t0
            for s, lab, sp, im, si in zip(chunk, labels, spots, imgs, spot_imgs):
                stage2.append(pool.submit("finish", (s, lab, sp, im, si)))
            drain(False)

        for group in groups:
            chunk = [s for s in group if s not in done_set]
            if not chunk:
                continue
            raws = [None] * len(chunk)
            if generator is not None:
                t0 = time.perf_counter()
                x = generator.generate(
                    group, trunc=trunc, class_idx=class_idx, noise_mode=noise_mode, batch=batch
                )
                raws = [r for s, r in zip(group, generator.to_uint8(x)) if s not in done_set]
                times["gan_masks"] += time.perf_counter() - t0
            if translator is None:
                for s, r in zip(chunk, raws):
                    stage2.append(pool.submit("full", (s, r)))
                while len(stage2) > max_pending * batch:
                    collect(stage2.popleft().get())
                    bar.update(1)
                drain(False)
            else:
                stage1.append((chunk, [pool.submit("labels", (s, r)) for s, r in zip(chunk, raws)]))
                while len(stage1) > max_pending:
                    advance()
        while stage1:
            advance()
        drain(True)
    finally:
        pool.close()
        bar.close()
        for s in mine:
            for f in (out / PARTIAL).glob(f"{sample_name(s)}.*"):
                f.unlink(missing_ok=True)
        try:
            (out / PARTIAL).rmdir()
        except OSError:
            pass

    recs = [records[s] for s in mine]
    coco = build_coco(recs, anns, seed_index)
    if shard is None:
        write_text(out / "annotations.json", _dumps(coco))
        write_text(out / "manifest.json", _dumps(_manifest(run, recs, seed_index)))
    else:
        tag = f"shard-{shard[0]}-of-{shard[1]}"
        write_text(out / f"annotations.{tag}.json", _dumps(coco))
        write_text(out / f"manifest.{tag}.json", _dumps(_manifest(run, recs, seed_index, shard)))
    return {
        "out": str(out),
        "written": len(todo),
        "skipped": len(done),
        "seconds": time.perf_counter() - t_start,
        "stages": times,
        "shard": shard,
    }


def merge_shards(out) -> dict:
    """Join ``manifest.shard-i-of-N.json`` / ``annotations.shard-i-of-N.json`` (all N shards) in
    ``out`` into ``manifest.json`` and ``annotations.json``, as one run would have written them.

    Returns a summary dict (shards, count). Holds the folder's lock while it writes.
    """
    out = Path(out)
    require(out.is_dir(), f"{out}: no such folder")
    with lock_folder(out, "synth merge"):
        _check_other_locks(out, LOCK_NAME)
        return _merge_shards(out)


def _merge_shards(out: Path) -> dict:
    found = {}
    for p in out.glob("manifest.shard-*-of-*.json"):
        m = re.fullmatch(r"manifest\.shard-(\d+)-of-(\d+)\.json", p.name)
        if m:
            found[(int(m.group(1)), int(m.group(2)))] = p
    if not found:
        raise CellsynthError(f"{out}: no manifest.shard-i-of-N.json files to merge")
    totals = {n for _, n in found}
    if len(totals) != 1:
        raise CellsynthError(f"{out}: shard files of different shard counts {sorted(totals)}")
    n = totals.pop()
    missing = [i for i in range(n) if (i, n) not in found]
    if missing:
        raise CellsynthError(
            f"{out}: shards {missing} of {n} are missing; run them with --shard i/{n} first"
        )
    manifests, cocos = [], []
    for i in range(n):
        for kind, bucket in (("manifest", manifests), ("annotations", cocos)):
            p = out / f"{kind}.shard-{i}-of-{n}.json"
            try:
                bucket.append(json.loads(p.read_text()))
            except (OSError, json.JSONDecodeError) as exc:
                raise CellsynthError(f"{p}: cannot read ({exc}); rerun shard {i}/{n}") from None
    run = {"options": manifests[0]["options"], "checkpoints": manifests[0]["checkpoints"]}
    for i, m in enumerate(manifests):
        if m["options"] != run["options"] or m["checkpoints"] != run["checkpoints"]:
            raise CellsynthError(f"{out}: shard {i}/{n} was made with other options")
    seed_list = parse_seeds(run["options"]["seeds"])
    seed_index = {s: i for i, s in enumerate(seed_list)}
    records = [r for m in manifests for r in m["samples"]]
    have = sorted(r["seed"] for r in records)
    if have != sorted(seed_list):
        raise CellsynthError(f"{out}: the shards do not cover the seeds exactly once")
    for r in records:
        if not (out / "masks" / f"{r['name']}.tif").is_file():
            raise CellsynthError(f"{out}: {r['name']} is missing; rerun its shard with --resume")
    anns: dict[int, list] = {}
    for coco in cocos:
        by_image = {img["id"]: img["seed"] for img in coco["images"]}
        for img in coco["images"]:
            anns.setdefault(img["seed"], [])
        for a in coco["annotations"]:
            anns[by_image[a["image_id"]]].append(
                {
                    "label": a["instance_id"],
                    "segmentation": a["segmentation"],
                    "area": a["area"],
                    "bbox": a["bbox"],
                }
            )
    for v in anns.values():
        v.sort(key=lambda a: a["label"])
    write_text(out / "annotations.json", _dumps(build_coco(records, anns, seed_index)))
    write_text(out / "manifest.json", _dumps(_manifest(run, records, seed_index)))
    return {"out": str(out), "shards": n, "count": len(records)}
