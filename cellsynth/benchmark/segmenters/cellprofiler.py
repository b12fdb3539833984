"""CellProfiler's IdentifyPrimaryObjects, on CellProfiler's own algorithm library (centrosome).

What is real and what is written here: the CellProfiler application itself (4.2.8, the newest
on PyPI) cannot share this environment: it pins scipy 1.9.0, scikit-image 0.18.3, tifffile
< 2022.4, h5py 3.6 and needs wxPython, mysqlclient and python-javabridge (a JDK), so it cannot
be installed beside numpy 2, torch and TensorFlow. Its image-processing library,
``centrosome`` (BSD, the package CellProfiler's modules call), installs fine, so this module
rebuilds the module's steps from the CellProfiler manual and calls what CellProfiler 4 calls:
scikit-image's Li (minimum cross-entropy) and Otsu thresholds, and centrosome's
``fill_labeled_holes``, ``strel_disk``, ``is_local_maximum``, ``binary_shrink`` of touching
maxima and ``propagate`` for the propagate dividing lines. (centrosome's own threshold
functions are not used: its minimum cross-entropy returns the image minimum under numpy 2.) The report calls it ``cellprofiler``; its
results are those of IdentifyPrimaryObjects' algorithm with the settings below, not of a
CellProfiler pipeline file.

The steps, with CellProfiler's names:

1. *Threshold*: the plane (``classical.intensity_plane``) smoothed with sigma =
   ``threshold_smoothing_scale`` / 0.6744 / 2 (1.3488 -> sigma 1, CellProfiler's default) is
   compared with the threshold of ``threshold_method`` (``otsu``, ``mct`` = minimum
   cross-entropy, ``robust_background`` = mean + 2 SD of the 5-95 % trimmed pixels) computed
   by ``threshold_strategy`` ``global`` or ``adaptive`` (blocks of ``adaptive_window`` px,
   each kept within 0.7..1.5 x the global threshold, interpolated between block centres),
   times ``correction_factor``, kept within ``threshold_bounds``.
2. *Fill holes* of the thresholded objects (``fill_holes``).
3. *Declump*: maxima of the image smoothed with a Gaussian of filter size 2.35 x min
   diameter / 3.5 (``unclump`` = ``intensity``), or of the distance transform (``shape``), at
   least ``min_diameter`` / 1.5 apart (on a 10 / min-diameter down-scaled image when the min
   diameter exceeds 10 px, as CellProfiler's "speed up by using lower-resolution image");
   *dividing lines* by a watershed of the inverted intensity (``watershed`` = ``intensity``),
   of the negated distance (``shape``), or by ``propagate``.
4. Holes filled again; objects whose area is outside the typical diameter range (pi d^2 / 4)
   are discarded; objects touching the border too when ``discard_border`` (CellProfiler's
   default is to discard them; here the default keeps them, because benchmark ground truth
   keeps cells cut by the image border).

``fit`` grid-searches the typical diameter range, the threshold method and the declumping
methods on training images (pooled AP@0.5), as a CellProfiler user sets them by eye for a new
data set.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from cellsynth.benchmark.segmenters.base import register
from cellsynth.benchmark.segmenters.classical import Classical, intensity_plane
from cellsynth.datasets.io import relabel_sequential
from cellsynth.errors import CellsynthError

DEFAULTS = {
    "channel": "mean",
    "invert": False,
    "min_diameter": 8,  # typical diameter of objects, in pixels (CellProfiler: 10-40)
    "max_diameter": 80,
    "discard_outside_diameter": True,
    "discard_border": False,
    "threshold_strategy": "global",  # global | adaptive
    "threshold_method": "mct",  # otsu | mct | robust_background (CellProfiler's default: mct)
    "threshold_smoothing_scale": 1.3488,
    "correction_factor": 1.0,
    "threshold_bounds": [0.0, 1.0],
    "adaptive_window": 50,
    "unclump": "intensity",  # intensity | shape | none
    "watershed": "intensity",  # intensity | shape | propagate | none
    "low_res_maxima": True,
    "fill_holes": True,
    "tune": True,
    "tune_images": 24,
}
METHODS = ("otsu", "mct", "robust_background")


def _centrosome():
    try:
        import centrosome.cpmorphology as morph
        import centrosome.propagate as propagate
    except ImportError as exc:
        raise CellsynthError(
            f"cellprofiler needs centrosome, CellProfiler's algorithm library ({exc}); "
            "install it: pip install 'cellsynth[benchmark]'"
        ) from None
    return morph, propagate


def _choice(opts: dict, key: str, allowed) -> str:
    value = opts[key]
    if value not in allowed:
        raise CellsynthError(
            f"cellprofiler: unknown {key} {value!r}; use one of {', '.join(allowed)}"
        )
    return value


def _global_threshold(values: np.ndarray, method: str) -> float:
    """One threshold of ``values`` (1-D), as CellProfiler 4 computes it: scikit-image's Li
    minimum cross-entropy or Otsu; robust background = mean + 2 SD of the values left after
    trimming the lowest and highest 5 %."""
    from skimage.filters import threshold_li, threshold_otsu

    if values.size == 0:
        return 0.0
    if np.all(values == values[0]):
        return float(values[0])
    if method == "mct":
        steps = np.diff(np.unique(values))
        return float(threshold_li(values, tolerance=max(float(steps.min()) / 2, 0.5 / 65536)))
    if method == "otsu":
        return float(threshold_otsu(values))
    ordered = np.sort(values)
    n = ordered.size
    kept = ordered[int(n * 0.05) : max(int(np.ceil(n * 0.95)), int(n * 0.05) + 1)]
    return float(kept.mean() + 2.0 * kept.std())


def threshold_mask(plane: np.ndarray, opts: dict) -> np.ndarray:
    """Step 1: the thresholded plane (bool H x W)."""
    method = _choice(opts, "threshold_method", METHODS)
    strategy = _choice(opts, "threshold_strategy", ("global", "adaptive"))
    if plane.min() == plane.max():
        return np.zeros(plane.shape, bool)
    t = _global_threshold(plane.ravel(), method)
    if strategy == "adaptive":
        # a threshold per block of about adaptive_window pixels, kept within 0.7..1.5 x the
        # global one, spread smoothly over the pixels
        window = max(int(opts["adaptive_window"]), 4)
        blocks = np.maximum(np.array(plane.shape) // window, 1)
        edges = [np.linspace(0, size, b + 1).astype(int) for size, b in zip(plane.shape, blocks)]
        grid = np.empty(tuple(blocks))
        for i in range(blocks[0]):
            for j in range(blocks[1]):
                block = plane[edges[0][i] : edges[0][i + 1], edges[1][j] : edges[1][j + 1]]
                grid[i, j] = _global_threshold(block.ravel(), method)
        grid = grid.clip(0.7 * t, 1.5 * t)
        factors = np.array(plane.shape) / blocks
        t = ndi.zoom(grid, factors, order=1, mode="nearest", grid_mode=True)[
            : plane.shape[0], : plane.shape[1]
        ]
    lo, hi = (float(v) for v in opts["threshold_bounds"])
    t = np.clip(t * float(opts["correction_factor"]), lo, hi)
    scale = float(opts["threshold_smoothing_scale"])
    smoothed = ndi.gaussian_filter(plane, scale / 0.6744 / 2.0) if scale > 0 else plane
    return smoothed >= t


def _maxima(image: np.ndarray, labels: np.ndarray, min_diameter: float, low_res: bool):
    """Local maxima of ``image`` inside ``labels`` at least about min_diameter / 1.5 apart,
    each blob of touching maxima shrunk to one point (bool H x W)."""
    morph, _ = _centrosome()
    factor = 10.0 / min_diameter if (low_res and min_diameter > 10) else 1.0
    suppression = 7.0 if factor < 1.0 else min_diameter / 1.5
    disk = morph.strel_disk(max(1.0, suppression - 0.5))
    if factor < 1.0:
        shape = np.maximum(np.round(np.array(image.shape) * factor).astype(int), 1)
        grid = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float) / factor
        small = ndi.map_coordinates(image, grid, order=1)
        small_labels = ndi.map_coordinates(labels, grid, order=0).astype(labels.dtype)
        peaks = morph.is_local_maximum(small, small_labels, disk) & (small > 0)
        back = np.mgrid[0 : image.shape[0], 0 : image.shape[1]].astype(float)
        back[0] *= (shape[0] - 1) / max(image.shape[0] - 1, 1)
        back[1] *= (shape[1] - 1) / max(image.shape[1] - 1, 1)
        peaks = ndi.map_coordinates(peaks.astype(float), back, order=1) > 0.5
    else:
        peaks = morph.is_local_maximum(image, labels, disk) & (image > 0)
    return morph.binary_shrink(peaks & (labels > 0))


def declump(image: np.ndarray, labels: np.ndarray, opts: dict) -> np.ndarray:
    """Step 3: split touching objects of ``labels`` (int H x W) into one object per maximum."""
    _, propagate = _centrosome()
    unclump = _choice(opts, "unclump", ("intensity", "shape", "none"))
    lines = _choice(opts, "watershed", ("intensity", "shape", "propagate", "none"))
    if unclump == "none" or lines == "none" or not labels.any():
        return labels
    from skimage.segmentation import watershed

    dmin = float(opts["min_diameter"])
    fg = labels > 0
    dist = None
    if unclump == "intensity":
        size = 2.35 * dmin / 3.5
        source = ndi.gaussian_filter(image, size / 2.35) if size > 0 else image
    else:
        dist = ndi.distance_transform_edt(fg)
        # a tiny fixed jitter so plateaus of the distance give one maximum each
        dist = dist + np.random.default_rng(0).uniform(0, 1e-3, dist.shape)
        source = dist
    seeds, n = ndi.label(
        _maxima(source, labels, dmin, bool(opts["low_res_maxima"])), np.ones((3, 3), bool)
    )
    if n == 0:
        return labels
    if lines == "propagate":
        out, _ = propagate.propagate(np.zeros(image.shape), seeds, fg, 1.0)
        out = out * fg
    else:
        if lines == "intensity":
            surface = 1.0 - image
        else:
            surface = -(dist if dist is not None else ndi.distance_transform_edt(fg))
        out = watershed(surface, markers=seeds, mask=fg, connectivity=np.ones((3, 3), bool))
    # thresholded objects that received no maximum keep their own label
    orphan = fg & (out == 0)
    if orphan.any():
        extra, _ = ndi.label(orphan)
        out = np.where(orphan, extra + out.max(), out)
    return out


def filter_objects(labels: np.ndarray, opts: dict) -> np.ndarray:
    """Step 4: the diameter range and, optionally, the border objects."""
    sizes = np.bincount(labels.ravel())
    drop = np.zeros(sizes.shape, bool)
    if opts["discard_outside_diameter"]:
        lo = np.pi * float(opts["min_diameter"]) ** 2 / 4.0
        hi = np.pi * float(opts["max_diameter"]) ** 2 / 4.0
        drop |= (sizes < lo) | (sizes > hi)
    if opts["discard_border"]:
        edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        drop[np.unique(edge)] = True
    drop[0] = False
    return np.where(drop[labels], 0, labels)


@register
class CellProfilerSegmenter(Classical):
    """IdentifyPrimaryObjects (threshold, declump, fill holes, size filter) on centrosome."""

    name = "cellprofiler"
    requires = "centrosome (pip install 'cellsynth[benchmark]')"
    trainable = False
    DEFAULTS = DEFAULTS

    def __init__(self, **options):
        super().__init__(**options)
        o = self.options
        if not 0 < float(o["min_diameter"]) <= float(o["max_diameter"]):
            raise CellsynthError(
                f"cellprofiler: need 0 < min_diameter <= max_diameter, got "
                f"{o['min_diameter']} and {o['max_diameter']}"
            )

    def tune_grid(self) -> list[dict]:
        """Typical diameter ranges x threshold methods x declumping methods (what a user of
        CellProfiler sets by eye for a new data set)."""
        ranges = [(8, 80), (4, 40), (6, 60), (12, 120)]
        declumps = [("intensity", "intensity"), ("shape", "shape"), ("shape", "intensity")]
        return [
            {
                "min_diameter": lo,
                "max_diameter": hi,
                "threshold_method": m,
                "unclump": u,
                "watershed": w,
            }
            for m in ("mct", "otsu")
            for u, w in declumps
            for lo, hi in ranges
        ]

    def segment(self, image: np.ndarray, **override) -> np.ndarray:
        morph, _ = _centrosome()
        opts = {**self.options, **override}
        plane = intensity_plane(image, opts["channel"]).astype(np.float64)
        if opts["invert"]:
            plane = 1.0 - plane
        mask = threshold_mask(plane, opts)
        labels, _ = ndi.label(mask, np.ones((3, 3), bool))
        if opts["fill_holes"]:
            labels = morph.fill_labeled_holes(labels)
        labels = declump(plane, labels, opts)
        if opts["fill_holes"]:
            labels = morph.fill_labeled_holes(labels)
        out = relabel_sequential(filter_objects(labels, opts))
        return out.astype(np.uint16 if out.max() <= 65535 else np.uint32)
