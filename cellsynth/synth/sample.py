"""The work on one sample, as the worker processes run it.

:func:`make_labels` turns a seed (and the generator's soft mask, for GAN masks) into filtered
instance labels and their puncta; :func:`finish_sample` renders the image (when no translator
made it), adds the puncta and writes the three files; :func:`done_sample` reads back a sample
already on disk (resume). Each returns its per-stage seconds. Everything a worker needs is in
one picklable :class:`Plan`.

The files of a sample are written under ``OUT/.partial`` and renamed into place, mask last, so
a sample exists exactly when its mask does.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cellsynth.atomic import write_text
from cellsynth.errors import CellsynthError
from cellsynth.synth.coco import coco_annotations
from cellsynth.synth.options import BORDER, SynthOptions

PARTIAL = ".partial"
SUBFOLDERS = (("images", ".tif"), ("spots", ".csv"), ("masks", ".tif"))  # mask last


@dataclass(frozen=True)
class Plan:
    """What the per-sample work needs: the checked options and what the inputs told."""

    out: str
    options: SynthOptions
    mask_files: tuple[str, ...] = ()  # --masks DIR: its mask files
    encoding: str | None = None  # --masks stylegan3:PATH: the generator's mask encoding
    seed_class: dict | None = None  # a conditional generator: each seed's class name
    decode_defaults: dict | None = None  # the generator file's recorded decoder thresholds

    @property
    def masks_kind(self) -> str:
        return self.options.sources.masks_kind


def sample_name(seed: int) -> str:
    """File stem of the sample made from ``seed``."""
    return f"seed{seed:06d}"


def spot_seed(seed: int) -> int:
    """The seed of a sample's puncta and noise (independent of its mask and image)."""
    return int(np.random.SeedSequence([seed, 0x5907]).generate_state(1)[0])


# ---- labels ----------------------------------------------------------------------------------
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


def decode_generated(plan: Plan, raw: np.ndarray) -> np.ndarray:
    """A generator's soft uint8 mask -> instance labels (upscaled, thresholded, decoded)."""
    from cellsynth.tools.codec import decode_mask

    dec = plan.options.decode
    if dec.upscale > 1:
        raw = upscale_soft(raw, dec.upscale)
    kwargs = {**(plan.decode_defaults or {}), **dec.codec_kwargs()}
    if dec.threshold_method != "fixed":
        from cellsynth.tools.threshold import threshold_value

        fg = raw if raw.ndim == 2 else raw[..., 0]
        kwargs["fg_thresh"] = threshold_value(fg.astype(np.float32) / 255.0, dec.threshold_method)
    return decode_mask(raw, plan.encoding, **kwargs)


def _mask_file(plan: Plan, seed: int) -> str:
    return plan.mask_files[seed % len(plan.mask_files)]


def make_labels(plan: Plan, seed: int, raw) -> tuple:
    """Mask -> filtered instance labels, and the puncta. Returns (labels, spots, times)."""
    from cellsynth.tools.points import SPOT_DTYPE, simulate_spots

    t0 = time.perf_counter()
    opts = plan.options
    if plan.masks_kind == "simulate":
        from cellsynth.datasets.simulate import simulate_labels

        labels = simulate_labels(seed, **dataclasses.asdict(opts.simulate))
    elif plan.masks_kind == "dir":
        from cellsynth.datasets.io import read_labels

        labels = read_labels(_mask_file(plan, seed))
    else:
        labels = decode_generated(plan, raw)
    labels = filter_cells(labels, opts.cells.min_size, opts.cells.border)
    t1 = time.perf_counter()
    if opts.spots.count > 0:
        spots = simulate_spots(labels, spot_seed(seed), **opts.spots.placement())
    else:
        spots = np.zeros(0, SPOT_DTYPE)
    t2 = time.perf_counter()
    return labels, spots, {"masks": t1 - t0, "spots": t2 - t1}


# ---- image, puncta, files --------------------------------------------------------------------
def add_puncta(plan: Plan, seed: int, labels, spots, image, spot_image) -> np.ndarray:
    """The image with the puncta in it (rendered as Gaussian PSFs, or the spots model's image)."""
    from cellsynth.tools.combine import combine
    from cellsynth.tools.points import render_spots

    sp = plan.options.spots
    if spot_image is None:
        spot_image = render_spots(labels.shape, spots, sp.psf_sigma)
    else:
        spot_image = np.asarray(spot_image)
        spot_image = (spot_image if spot_image.ndim == 2 else spot_image[..., 0]) / 255.0
    return combine(image, spot_image, seed=spot_seed(seed), **sp.combine_kwargs())


def write_partial(out: Path, name: str, image, spots, labels) -> None:
    """Write a sample's three files under ``out/.partial`` (see :func:`commit_sample`)."""
    from cellsynth.datasets.io import write_image, write_labels
    from cellsynth.tools.points import spots_to_csv

    part = out / PARTIAL
    write_image(part / f"{name}.image.tif", image)
    write_text(part / f"{name}.csv", spots_to_csv(spots))
    write_labels(part / f"{name}.mask.tif", labels)


def commit_sample(out: Path, name: str) -> None:
    """Move a sample's complete files into place, mask last (a sample exists once its mask
    does)."""
    part = out / PARTIAL
    os.replace(part / f"{name}.csv", out / "spots" / f"{name}.csv")
    os.replace(part / f"{name}.image.tif", out / "images" / f"{name}.tif")
    os.replace(part / f"{name}.mask.tif", out / "masks" / f"{name}.tif")


def finish_sample(plan: Plan, seed: int, labels, spots, image, spot_image) -> tuple:
    """Render (when no translator), add puncta, write the files. Returns (record, anns, times)."""
    t0 = time.perf_counter()
    if image is None:
        from cellsynth.datasets.simulate import render_image

        image = render_image(labels, seed, **dataclasses.asdict(plan.options.render))
    t1 = time.perf_counter()
    if spots.size:
        image = add_puncta(plan, seed, labels, spots, image, spot_image)
    t2 = time.perf_counter()
    out, name = Path(plan.out), sample_name(seed)
    write_partial(out, name, image, spots, labels)
    anns = coco_annotations(labels)
    commit_sample(out, name)
    t3 = time.perf_counter()
    record = sample_record(plan, seed, labels, spots.size)
    return record, anns, {"images": t1 - t0, "spots": t2 - t1, "write": t3 - t2}


def full_sample(plan: Plan, seed: int, raw) -> tuple:
    """:func:`make_labels` then :func:`finish_sample` (no translator between them)."""
    labels, spots, ta = make_labels(plan, seed, raw)
    record, anns, tb = finish_sample(plan, seed, labels, spots, None, None)
    return record, anns, {k: ta.get(k, 0.0) + tb.get(k, 0.0) for k in {*ta, *tb}}


def sample_record(plan: Plan, seed: int, labels, n_spots: int) -> dict:
    """The manifest entry of a sample."""
    rec = {
        "name": sample_name(seed),
        "seed": int(seed),
        "height": int(labels.shape[0]),
        "width": int(labels.shape[1]),
        "cells": int(labels.max(initial=0)),
        "spots": int(n_spots),
    }
    if plan.masks_kind == "dir":
        rec["mask_source"] = Path(_mask_file(plan, seed)).name
    if plan.seed_class is not None:
        rec["class"] = plan.seed_class[int(seed)]
    return rec


def done_sample(plan: Plan, seed: int) -> tuple:
    """Record and annotations of a sample already on disk (resume)."""
    from cellsynth.datasets.io import read_labels
    from cellsynth.tools.points import spots_from_csv

    out = Path(plan.out)
    name = sample_name(seed)
    labels = read_labels(out / "masks" / f"{name}.tif")
    csv = out / "spots" / f"{name}.csv"
    n_spots = spots_from_csv(csv.read_text(), str(csv)).size
    return sample_record(plan, seed, labels, n_spots), coco_annotations(labels), {}


def is_done(out: Path, seed: int) -> bool:
    """Whether all three files of the sample of ``seed`` exist."""
    name = sample_name(seed)
    return all((out / d / f"{name}{e}").is_file() for d, e in SUBFOLDERS)


TASKS = {"labels": make_labels, "finish": finish_sample, "full": full_sample, "done": done_sample}
