"""Classical segmenter: threshold + distance-transform watershed declumping, no deep learning.

The CellProfiler ``IdentifyPrimaryObjects`` recipe on one intensity plane:

1. plane: the image scaled to [0, 1] (``cellsynth.datasets.io.image_to_float``), channels averaged
   (or one chosen with ``channel``), optionally inverted (dark objects), Gaussian-smoothed;
2. foreground: a global (Otsu, Li, Triangle, mean) or local (Gaussian-weighted mean over
   ``block_size``, kept within 0.7..1.5 x the global Otsu threshold) threshold times a correction
   factor;
3. holes filled, objects smaller than ``min_size`` removed;
4. declumping: a smoothed Euclidean distance transform of the foreground; its regional maxima
   (``peak_local_max`` at least ``min_distance`` apart, or h-maxima of height ``h``) seed a
   watershed of the inverted distance inside the foreground;
5. pieces smaller than ``min_size`` dropped, labels renumbered 1..N.

``fit`` optionally tunes ``min_distance`` and the threshold method on (a subset of) the training
split by grid search over AP at IoU 0.5; defaults suit fluorescent nuclei.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from cellsynth.benchmark.segmenters.base import Segmenter, register
from cellsynth.datasets.io import image_to_float, relabel_sequential
from cellsynth.errors import CellsynthError
from cellsynth.tools.threshold import GLOBAL_METHODS, threshold_value

DEFAULTS = {
    "channel": "mean",  # "mean" of the colour channels, or a channel index
    "invert": False,  # True: objects darker than background; "auto": decide per image
    "sigma": 1.0,  # Gaussian smoothing of the plane (pixels), 0 = none
    "method": "otsu",  # otsu | li | triangle | mean | local
    "correction": 1.0,  # threshold correction factor (CellProfiler)
    "block_size": 51,  # window of the local threshold (odd)
    "fill_holes": True,
    "min_size": 15,  # pixels; smaller objects and pieces are removed
    "max_size": 0,  # pixels; larger objects removed (0 = no limit)
    "declump": "peaks",  # peaks | hmax | none
    "min_distance": 5,  # pixels between seeds (peaks)
    "h": 1.0,  # height of the h-maxima (hmax), in distance pixels
    "smooth_distance": 1.0,  # Gaussian sigma applied to the distance transform
    "compactness": 0.0,  # watershed compactness
    "tune": True,  # fit(): grid-search min_distance and method on the training split
    "tune_images": 24,  # at most this many training images are used for tuning
}


def intensity_plane(image: np.ndarray, channel="mean") -> np.ndarray:
    """The float32 [0, 1] H x W plane to segment: ``channel`` index, or the mean of the colour
    channels (an alpha channel is ignored)."""
    image = np.asarray(image)
    if image.ndim not in (2, 3) or (image.ndim == 3 and not 1 <= image.shape[-1] <= 4):
        raise CellsynthError(
            f"classical: expected an H x W or H x W x C (C <= 4) image, got shape {image.shape}"
        )
    x = image_to_float(image)
    if x.ndim == 2:
        return x
    if channel == "mean":
        n = 3 if x.shape[-1] == 4 else x.shape[-1]
        return x[..., :n].mean(axis=-1)
    c = int(channel)
    if not 0 <= c < x.shape[-1]:
        raise CellsynthError(f"classical: channel {c} not in an image with {x.shape[-1]} channels")
    return x[..., c]


def foreground(plane: np.ndarray, opts: dict) -> np.ndarray:
    """Threshold, fill holes and size-filter ``plane``; returns a bool mask."""
    method = opts["method"]
    if method == "local":
        from skimage.filters import threshold_local

        block = int(opts["block_size"])
        if block < 3 or block % 2 == 0:
            raise CellsynthError(f"classical: block_size must be odd and >= 3, got {block}")
        if plane.min() == plane.max():
            return np.zeros(plane.shape, bool)
        # the local threshold is kept within 0.7..1.5 x the global Otsu threshold, so flat
        # background far from any object does not turn into noise (CellProfiler "adaptive")
        t_global = threshold_value(plane, "otsu")
        t_local = np.clip(
            threshold_local(plane, block, method="gaussian"), 0.7 * t_global, 1.5 * t_global
        )
        mask = plane > t_local * opts["correction"]
    elif method in GLOBAL_METHODS:
        if plane.min() == plane.max():
            return np.zeros(plane.shape, bool)
        mask = plane > threshold_value(plane, method) * opts["correction"]
    else:
        raise CellsynthError(
            f"classical: unknown threshold method {method!r}; use one of "
            f"{', '.join((*GLOBAL_METHODS, 'local'))}"
        )
    if opts["fill_holes"]:
        mask = ndi.binary_fill_holes(mask)
    return mask


def _size_filter(labels: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    sizes = np.bincount(labels.ravel())
    drop = sizes < min_size
    if max_size > 0:
        drop |= sizes > max_size
    drop[0] = False
    if drop.any():
        labels = np.where(drop[labels], 0, labels)
    return labels


def declump(mask: np.ndarray, opts: dict) -> np.ndarray:
    """Split touching objects of ``mask`` by a watershed of the smoothed distance transform.

    Returns int32 labels (objects without a seed keep their connected component).
    """
    from skimage.feature import peak_local_max
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    components, n = ndi.label(mask)
    if n == 0 or opts["declump"] == "none":
        return components
    dist = ndi.distance_transform_edt(mask)
    if opts["smooth_distance"] > 0:
        dist = ndi.gaussian_filter(dist, opts["smooth_distance"]) * mask
    if opts["declump"] == "peaks":
        peaks = peak_local_max(
            dist,
            min_distance=max(int(opts["min_distance"]), 1),
            labels=components,
            exclude_border=False,
        )
        markers = np.zeros(mask.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    elif opts["declump"] == "hmax":
        markers, _ = ndi.label(h_maxima(dist, float(opts["h"])) & mask)
    else:
        raise CellsynthError(
            f"classical: unknown declump {opts['declump']!r}; use peaks, hmax or none"
        )
    labels = watershed(-dist, markers, mask=mask, compactness=float(opts["compactness"]))
    # components that received no seed keep their own label
    orphan = mask & (labels == 0)
    if orphan.any():
        extra, k = ndi.label(orphan)
        labels = np.where(orphan, extra + labels.max(), labels)
    return labels


@register
class Classical(Segmenter):
    """Threshold + watershed declumping (CellProfiler IdentifyPrimaryObjects style)."""

    name = "classical"
    requires = ""
    trainable = False
    DEFAULTS = DEFAULTS

    def segment(self, image: np.ndarray, **override) -> np.ndarray:
        """Segment one image with the options (``override`` replaces some); uint16/32 labels."""
        opts = {**self.options, **override}
        plane = intensity_plane(image, opts["channel"])
        invert = opts["invert"]
        if invert == "auto":
            # objects are the minority: if most pixels lie above Otsu, the objects are dark
            invert = bool(np.mean(plane > threshold_value(plane, "otsu")) > 0.5)
        if invert:
            plane = 1.0 - plane
        if opts["sigma"] > 0:
            plane = ndi.gaussian_filter(plane, float(opts["sigma"]))
        mask = foreground(plane, opts)
        labels = declump(mask, opts)
        labels = _size_filter(labels, int(opts["min_size"]), int(opts["max_size"]))
        out = relabel_sequential(labels)
        return out.astype(np.uint16 if out.max() <= 65535 else np.uint32)

    def predict(self, image: np.ndarray) -> np.ndarray:
        return self.segment(image)

    def tune_grid(self) -> list[dict]:
        """The option overrides ``fit`` tries: threshold method x seed distance."""
        return [
            {"method": m, "min_distance": d} for m in ("otsu", "li", "local") for d in (3, 5, 8, 12)
        ]

    def fit(self, train, workdir=None, budget_minutes=None, epochs=None, progress=True) -> None:
        """Grid-search the options of :meth:`tune_grid` by pooled AP at IoU 0.5 on at most
        ``tune_images`` evenly spaced training images (when ``tune`` is set); the best set
        replaces the options."""
        if not self.options["tune"] or train is None or len(train) == 0:
            return
        import time

        from tqdm import tqdm

        from cellsynth.benchmark.metrics import average_precision

        n = len(train)
        k = min(int(self.options["tune_images"]), n)
        picks = np.unique(np.linspace(0, n - 1, k).round().astype(int))
        samples = [train[int(i)] for i in picks]
        grid = self.tune_grid()
        deadline = None if budget_minutes is None else time.monotonic() + 60 * budget_minutes
        best, best_score, tried = None, -1.0, 0
        start = {key: self.options[key] for key in grid[0]}
        default_score = None
        for params in tqdm(grid, desc=f"{self.name} tune", disable=not progress):
            preds = [self.segment(s.image, **params) for s in samples]
            _, tp, fp, fn = average_precision([s.labels for s in samples], preds, [0.5])
            score = tp.sum() / max(tp.sum() + fp.sum() + fn.sum(), 1)
            tried += 1
            if params == start:
                default_score = float(score)
            if score > best_score:
                best, best_score = params, score
            if deadline is not None and time.monotonic() > deadline:
                break
        self.options.update(best)
        self.options["tuned_ap50"] = float(best_score)
        self.info = {
            "validation": {"n_images": len(samples), "names": [s.name for s in samples]},
            "postprocess": {
                "params": dict(best),
                "val_ap50": float(best_score),
                "default_val_ap50": default_score,
                "tried": tried,
            },
        }

    @classmethod
    def load(cls, path):
        import json
        from pathlib import Path

        p = Path(path) / "options.json"
        if not p.is_file():
            raise CellsynthError(f"{path}: no saved {cls.name} model here (options.json missing)")
        opts = json.loads(p.read_text())
        opts.pop("tuned_ap50", None)
        return cls(**opts)
