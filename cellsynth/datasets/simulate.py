"""The procedural cell simulator: the embedded default data, and the ``simulate`` image source.

Cells are star-shaped blobs (a random radius, an elongation, and a smooth Fourier-perturbed
boundary) around seeded centres. Where blobs overlap, a pixel belongs to the cell whose blob
reaches it at the smallest *normalised* distance ``|p - c| / R(theta)``: a multiplicatively
weighted Voronoi diagram clipped by the blobs, so dense settings give touching, irregular,
confluent cells and sparse settings give isolated ones. Every function is seeded: the same seed
and parameters give the same arrays.

- :func:`simulate_labels` -> uint16 instance labels;
- :func:`simulate_nuclei` -> nuclei labels (same ids, inside their cells);
- :func:`render_image` -> a fluorescence image of labels (textured per-cell intensity, brighter
  nuclei, PSF blur, uneven illumination, Poisson-Gaussian noise; uint8/uint16, 1-4 channels);
- :func:`simulate_sample` -> :class:`~cellsynth.datasets.canonical.Sample`;
- :func:`simulate_dataset` -> a canonical dataset on disk.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from scipy import ndimage

from cellsynth.datasets.canonical import Sample, write_dataset
from cellsynth.datasets.io import relabel_sequential
from cellsynth.errors import CellsynthError, require

OBJECTS = ("cells", "nuclei")
MAX_SEED = 2**32 - 1


def _check_seed(seed) -> int:
    require(
        isinstance(seed, (int, np.integer)) and 0 <= int(seed) <= MAX_SEED,
        f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}",
    )
    return int(seed)


def _check_size(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise CellsynthError(f"size must be an int or (height, width), got {size!r}") from None
    require(8 <= h <= 16384 and 8 <= w <= 16384, f"size must be 8..16384 pixels, got {(h, w)}")
    return h, w


def _place_centres(rng, h, w, n, min_dist, margin) -> np.ndarray:
    """Dart throwing: up to ``n`` points in the (margin-extended) image, ``min_dist`` apart."""
    cand = rng.uniform(
        (-margin, -margin), (h + margin, w + margin), size=(max(6 * n, 16), 2)
    ).astype(np.float64)
    if n == 0:
        return np.zeros((0, 2))
    # Grid buckets of side min_dist: a point only needs checking against 3x3 neighbouring buckets.
    cell = max(min_dist, 1e-6)
    buckets: dict[tuple[int, int], list[int]] = {}
    kept: list[np.ndarray] = []
    md2 = min_dist * min_dist
    for p in cand:
        by, bx = int(p[0] // cell), int(p[1] // cell)
        ok = True
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                for j in buckets.get((by + dy, bx + dx), ()):
                    q = kept[j]
                    if (p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 < md2:
                        ok = False
                        break
                if not ok:
                    break
            if not ok:
                break
        if ok:
            buckets.setdefault((by, bx), []).append(len(kept))
            kept.append(p)
            if len(kept) == n:
                break
    return np.array(kept).reshape(-1, 2)


def simulate_labels(
    seed: int,
    size=(256, 256),
    density: float = 0.5,
    mean_radius: float = 12.0,
    radius_cv: float = 0.25,
    elongation: float = 0.3,
    roughness: float = 0.15,
    harmonics: int = 6,
    min_area: int = 12,
) -> np.ndarray:
    """Simulate instance labels of irregular, possibly touching cells.

    Args:
        seed: integer 0..2**32-1.
        size: int or (height, width).
        density: 0 < density <= 1.5; the expected covered fraction grows from sparse (0.1) to
            confluent (1.0: cells tile the image and touch).
        mean_radius: mean cell radius in pixels.
        radius_cv: coefficient of variation of the cell radius (lognormal).
        elongation: maximum aspect-ratio excess (0 = round on average, 0.3 = up to 1.3:1).
        roughness: amplitude of the Fourier boundary perturbation (0 = smooth ellipses).
        harmonics: highest Fourier harmonic of the boundary.
        min_area: cells smaller than this (after clipping and overlaps) are removed.

    Returns:
        uint16 H x W labels, 0 background, 1..N cells in placement order (sequential ids).
    """
    seed = _check_seed(seed)
    h, w = _check_size(size)
    require(0.0 < float(density) <= 1.5, f"density must be in (0, 1.5], got {density}")
    require(1.0 <= float(mean_radius) <= min(h, w), f"mean_radius must be 1..{min(h, w)}")
    require(0.0 <= radius_cv <= 1.0, f"radius_cv must be in [0, 1], got {radius_cv}")
    require(0.0 <= elongation <= 2.0, f"elongation must be in [0, 2], got {elongation}")
    require(0.0 <= roughness <= 0.5, f"roughness must be in [0, 0.5], got {roughness}")
    require(1 <= int(harmonics) <= 16, f"harmonics must be 1..16, got {harmonics}")
    rng = np.random.default_rng(seed)

    density = float(density)
    margin = 0.5 * mean_radius
    area = (h + 2 * margin) * (w + 2 * margin)
    n_target = int(round(density * area / (np.pi * mean_radius**2)))
    # Dense packings need closer centres; blobs are inflated a little so confluent cells touch.
    min_dist = mean_radius * (1.6 - 0.85 * min(density, 1.0))
    centres = _place_centres(rng, h, w, n_target, min_dist, margin)
    n = len(centres)
    inflate = 1.0 + 0.35 * min(density, 1.0) ** 2

    sigma = np.sqrt(np.log1p(radius_cv**2))
    radii = mean_radius * inflate * rng.lognormal(-0.5 * sigma**2, sigma, size=n)
    aspect = 1.0 + elongation * rng.uniform(0, 1, size=n)
    angle = rng.uniform(0, np.pi, size=n)
    ks = np.arange(2, int(harmonics) + 2)
    amps = roughness * rng.uniform(0, 1, size=(n, ks.size)) / ks
    amps *= np.minimum(1.0, 0.6 / np.maximum(amps.sum(1, keepdims=True), 1e-12))
    phases = rng.uniform(0, 2 * np.pi, size=(n, ks.size))

    best = np.full((h, w), np.inf, dtype=np.float32)
    labels = np.zeros((h, w), dtype=np.uint16)
    for i in range(n):
        cy, cx = centres[i]
        reach = radii[i] * np.sqrt(aspect[i]) * (1.0 + amps[i].sum()) + 1.0
        y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, h)
        x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, w)
        if y0 >= y1 or x0 >= x1:
            continue
        dy = (np.arange(y0, y1, dtype=np.float32) - cy)[:, None]
        dx = (np.arange(x0, x1, dtype=np.float32) - cx)[None, :]
        ca, sa = np.cos(angle[i]), np.sin(angle[i])
        sq = np.sqrt(aspect[i])
        u = (dx * ca + dy * sa) / sq  # along the long axis, shrunk
        v = (dy * ca - dx * sa) * sq
        theta = np.arctan2(v, u)
        rho = np.hypot(u, v)
        bound = 1.0 + (
            amps[i][:, None, None] * np.cos(ks[:, None, None] * theta + phases[i][:, None, None])
        ).sum(0)
        d = rho / (radii[i] * bound)
        win = best[y0:y1, x0:x1]
        take = (d < 1.0) & (d < win)
        win[take] = d[take]
        labels[y0:y1, x0:x1][take] = i + 1

    # Keep the largest connected piece of each cell, drop tiny cells, number 1..N.
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        sub = labels[sl]
        own = sub == i
        comp, k = ndimage.label(own)
        if k > 1:
            sizes = np.bincount(comp.ravel())[1:]
            sub[own & (comp != 1 + int(np.argmax(sizes)))] = 0
            own = sub == i
        if own.sum() < min_area:
            sub[own] = 0
    return relabel_sequential(labels).astype(np.uint16)


def simulate_nuclei(
    labels: np.ndarray, seed: int, scale: float = 0.5, offset: float = 0.15
) -> np.ndarray:
    """One nucleus per cell: an ellipse shaped like the cell (its second moments), scaled.

    Args:
        labels: H x W instance labels.
        seed: integer seed (random offsets and size jitter).
        scale: nucleus size relative to its cell (linear), 0.1..1.
        offset: random shift of the nucleus centre, as a fraction of the cell radius.

    Returns:
        uint16 H x W nuclei labels; nucleus k lies inside cell k (same ids).
    """
    seed = _check_seed(seed)
    labels = np.asarray(labels)
    require(labels.ndim == 2, f"labels must be 2-D, got shape {labels.shape}")
    require(0.1 <= scale <= 1.0, f"nucleus scale must be in [0.1, 1], got {scale}")
    rng = np.random.default_rng(seed)
    out = np.zeros(labels.shape, dtype=np.uint16)
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        own = labels[sl] == i
        yy, xx = np.nonzero(own)
        if yy.size < 3:
            continue
        cy, cx = yy.mean(), xx.mean()
        cov = np.cov(np.stack([yy, xx]).astype(np.float64)) + np.eye(2) * 0.25
        radius = np.sqrt(yy.size / np.pi)
        s = scale * rng.uniform(0.85, 1.15)
        shift = rng.normal(0.0, offset * radius, size=2)
        gy = np.arange(own.shape[0])[:, None] - (cy + shift[0])
        gx = np.arange(own.shape[1])[None, :] - (cx + shift[1])
        inv = np.linalg.inv(cov)
        m = inv[0, 0] * gy * gy + 2 * inv[0, 1] * gy * gx + inv[1, 1] * gx * gx
        nuc = own & (m <= (2.0 * s) ** 2)
        if not nuc.any():  # too small to shift: keep at least the cell's central pixel
            nuc = own & (m <= m[own].min())
        out[sl][nuc] = i
    return out


def _smooth_noise(rng, shape, sigma) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered white noise."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return f / max(float(f.std()), 1e-6)


def _boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels of a cell with a 4-neighbour of a different label (background included)."""
    b = np.zeros(labels.shape, dtype=bool)
    dv = labels[1:, :] != labels[:-1, :]
    dh = labels[:, 1:] != labels[:, :-1]
    b[1:, :] |= dv
    b[:-1, :] |= dv
    b[:, 1:] |= dh
    b[:, :-1] |= dh
    return b & (labels > 0)


def render_image(
    labels: np.ndarray,
    seed: int,
    nuclei: np.ndarray | None = None,
    channels: int = 1,
    bit_depth: int = 8,
    psf_sigma: float = 1.2,
    background: float = 0.06,
    brightness: float = 0.4,
    brightness_cv: float = 0.35,
    texture: float = 0.25,
    nucleus_gain: float = 1.8,
    illumination: float = 0.3,
    photons: float = 200.0,
    read_noise: float = 0.01,
) -> np.ndarray:
    """Render instance labels as a fluorescence micrograph.

    Channel 0 is a cytoplasm stain (per-cell brightness, smooth texture, dimmer cell edges,
    nuclei ``nucleus_gain`` times brighter); further channels are a nuclear stain (1), a
    membrane stain (2) and a second cytoplasm stain (3).

    Args:
        labels: H x W instance labels.
        seed: integer seed.
        nuclei: optional H x W nuclei labels; simulated (seeded) when needed and not given.
        channels: 1..4.
        bit_depth: 8 (uint8) or 16 (uint16).
        psf_sigma: Gaussian PSF sigma in pixels (0 = no blur).
        background: background level (fraction of full scale).
        brightness: mean cell brightness (fraction of full scale).
        brightness_cv: cell-to-cell brightness variation.
        texture: strength of the smooth intracellular texture.
        nucleus_gain: brightness factor of nuclei in channel 0 (1 = no nuclei visible).
        illumination: strength of the uneven illumination (0 = flat).
        photons: photons at full scale (Poisson noise; higher = cleaner; 0 = no shot noise).
        read_noise: std of the Gaussian read noise (fraction of full scale).

    Returns:
        H x W (channels == 1) or H x W x C image, uint8 or uint16.
    """
    seed = _check_seed(seed)
    labels = np.asarray(labels)
    require(labels.ndim == 2, f"labels must be 2-D, got shape {labels.shape}")
    require(np.issubdtype(labels.dtype, np.integer), f"labels must be integers, not {labels.dtype}")
    require(1 <= int(channels) <= 4, f"channels must be 1..4, got {channels}")
    require(bit_depth in (8, 16), f"bit depth must be 8 or 16, got {bit_depth}")
    require(
        psf_sigma >= 0 and photons >= 0 and read_noise >= 0,
        "psf_sigma, photons and read_noise must be >= 0",
    )
    h, w = labels.shape
    rng = np.random.default_rng((seed, 7))
    top = int(labels.max()) if labels.size else 0
    fg = labels > 0
    if nuclei is None and (channels >= 2 or nucleus_gain != 1.0):
        nuclei = simulate_nuclei(labels, seed)
    if nuclei is not None:
        nuclei = np.asarray(nuclei)
        require(nuclei.shape == labels.shape, f"nuclei {nuclei.shape} != labels {labels.shape}")

    # Interior profile: 0.55 at the cell edge rising to 1 a few pixels inside.
    inner = ndimage.distance_transform_edt(fg & ~_boundaries(labels)) if top else np.zeros((h, w))
    profile = (1.0 - 0.45 * np.exp(-inner / 3.0)).astype(np.float32)

    yy = (np.arange(h, dtype=np.float32)[:, None] / max(h - 1, 1)) - rng.uniform(0.2, 0.8)
    xx = (np.arange(w, dtype=np.float32)[None, :] / max(w - 1, 1)) - rng.uniform(0.2, 0.8)
    tilt = rng.uniform(-1, 1, size=2)
    light = 1.0 - illumination * (0.6 * (yy * yy + xx * xx) + 0.4 * (tilt[0] * yy + tilt[1] * xx))
    light = np.clip(light, 0.2, None).astype(np.float32)

    planes = []
    for c in range(int(channels)):
        sigma = np.sqrt(np.log1p(brightness_cv**2))
        per_cell = np.concatenate(
            [[0.0], brightness * rng.lognormal(-0.5 * sigma**2, sigma, size=top)]
        ).astype(np.float32)
        tex = np.clip(1.0 + texture * _smooth_noise(rng, (h, w), 2.0), 0.05, None)
        if c == 0 or c == 3:
            sig = per_cell[labels] * profile * tex
            if c == 0 and nuclei is not None:
                sig = sig * np.where(nuclei > 0, np.float32(nucleus_gain), np.float32(1.0))
        elif c == 1:
            sig = per_cell[nuclei] * 1.4 * tex
        else:
            sig = per_cell[labels] * _boundaries(labels) * 1.5 * tex
        if psf_sigma > 0:
            sig = ndimage.gaussian_filter(sig.astype(np.float32), psf_sigma)
        plane = (background + sig) * light
        if photons > 0:
            plane = rng.poisson(np.clip(plane, 0, None) * photons).astype(np.float32) / photons
        plane = plane + rng.normal(0.0, read_noise, size=(h, w)).astype(np.float32)
        planes.append(plane)
    img = np.stack(planes, axis=-1) if channels > 1 else planes[0]
    top_value = 255 if bit_depth == 8 else 65535
    out = np.rint(np.clip(img, 0.0, 1.0) * top_value)
    return out.astype(np.uint8 if bit_depth == 8 else np.uint16)


_LABEL_KEYS = (
    "density",
    "mean_radius",
    "radius_cv",
    "elongation",
    "roughness",
    "harmonics",
    "min_area",
)


def simulate_sample(
    seed: int,
    size=(256, 256),
    density: float = 0.5,
    nuclei: bool = False,
    objects: str = "cells",
    nucleus_scale: float = 0.5,
    channels: int = 1,
    bit_depth: int = 8,
    name: str | None = None,
    **options,
) -> Sample:
    """Simulate one annotated image.

    Args:
        seed: integer 0..2**32-1 (labels, nuclei and rendering each derive their own stream).
        size: int or (height, width).
        density: see :func:`simulate_labels`.
        nuclei: draw nuclei (brighter in channel 0; channel 1 when channels >= 2).
        objects: "cells" (the mask holds cells) or "nuclei" (the mask holds nuclei).
        nucleus_scale: nucleus size relative to the cell.
        channels, bit_depth: see :func:`render_image`.
        name: sample name (default ``sim{seed:010d}``).
        **options: further keyword arguments of :func:`simulate_labels` (mean_radius, ...) and
            :func:`render_image` (psf_sigma, photons, ...).

    Returns:
        :class:`Sample` whose ``meta["simulator"]`` records every parameter.
    """
    seed = _check_seed(seed)
    h, w = _check_size(size)
    if objects not in OBJECTS:
        raise CellsynthError(f"unknown objects {objects!r}; choose one of {', '.join(OBJECTS)}")
    label_opts = {k: options.pop(k) for k in list(options) if k in _LABEL_KEYS}
    render_keys = set(inspect.signature(render_image).parameters) - {"labels", "seed", "nuclei"}
    unknown = sorted(set(options) - render_keys)
    if unknown:
        raise CellsynthError(f"unknown simulator option(s): {', '.join(unknown)}")
    labels = simulate_labels(seed, (h, w), density=density, **label_opts)
    nuc = None
    if nuclei or objects == "nuclei":
        nuc = simulate_nuclei(labels, seed, scale=nucleus_scale)
    render_opts = dict(options)
    if nuc is None:
        render_opts.setdefault("nucleus_gain", 1.0)
    image = render_image(
        labels, seed, nuclei=nuc, channels=channels, bit_depth=bit_depth, **render_opts
    )
    mask = labels if objects == "cells" else relabel_sequential(nuc)
    meta = {
        "simulator": {
            "seed": seed,
            "size": [h, w],
            "density": float(density),
            "nuclei": bool(nuclei),
            "objects": objects,
            "nucleus_scale": float(nucleus_scale),
            "channels": int(channels),
            "bit_depth": int(bit_depth),
            **{k: v for k, v in label_opts.items()},
            **render_opts,
        }
    }
    return Sample(name or f"sim{seed:010d}", image, mask.astype(np.uint16), meta).check()


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index`` of a dataset simulated with ``seed`` (a 32-bit integer)."""
    return int(np.random.SeedSequence([_check_seed(seed), int(index)]).generate_state(1)[0])


def split_counts(num: int, fractions=(0.8, 0.1, 0.1)) -> dict[str, int]:
    """Split ``num`` samples over train/val/test by ``fractions`` (rounded; the rest to train)."""
    fr = [float(f) for f in fractions]
    require(len(fr) in (1, 2, 3), f"give 1 to 3 split fractions, got {fractions!r}")
    require(all(f >= 0 for f in fr) and sum(fr) > 0, f"bad split fractions {fractions!r}")
    require(num >= 1, f"number of samples must be >= 1, got {num}")
    fr = [f / sum(fr) for f in fr]
    counts = [int(round(num * f)) for f in fr]
    counts[0] += num - sum(counts)
    if counts[0] < 0:
        counts[0] = 0
    names = ("train", "val", "test")
    return {names[i]: c for i, c in enumerate(counts) if c > 0}


def simulate_dataset(
    out: str | os.PathLike,
    n_train: int,
    n_val: int = 0,
    n_test: int = 0,
    seed: int = 0,
    size=(256, 256),
    overwrite: bool = False,
    progress: bool = False,
    **options,
) -> dict[str, int]:
    """Write a simulated canonical dataset to ``out`` (atomically).

    Sample ``i`` (numbered across train, val, test) is ``simulate_sample(sample_seed(seed, i),
    name=f"sim{i:05d}", ...)``. ``options`` go to :func:`simulate_sample`.

    Returns:
        the number of samples per split.
    """
    from tqdm import tqdm

    seed = _check_seed(seed)
    size = _check_size(size)
    counts = {"train": int(n_train), "val": int(n_val), "test": int(n_test)}
    require(all(c >= 0 for c in counts.values()), f"sample counts must be >= 0, got {counts}")
    require(sum(counts.values()) > 0, "nothing to simulate: all sample counts are 0")
    simulate_sample(0, size, **{**options, "name": "check"})  # fail early on bad options
    bar = tqdm(total=sum(counts.values()), desc="simulate", unit="img", disable=not progress)

    def gen(start: int, count: int) -> Iterator[Sample]:
        for i in range(start, start + count):
            yield simulate_sample(sample_seed(seed, i), size, name=f"sim{i:05d}", **options)
            bar.update(1)

    splits, start = {}, 0
    for split, count in counts.items():
        if count:
            splits[split] = gen(start, count)
        start += count
    info = {"source": "cellsynth simulator", "seed": seed, "size": list(size), "options": options}
    try:
        return write_dataset(Path(out), splits, overwrite=overwrite, info=info)
    finally:
        bar.close()
