"""Dense maps <-> instance labels for the semantic-map segmenters (u2net, unet).

Training targets are made from instance labels (:func:`instance_targets`: foreground, inner
boundary, per-object normalised distance); predicted maps are turned back into instances by a
marker-controlled watershed (:func:`maps_to_instances`). numpy / scipy / scikit-image only.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from cellsynth.errors import CellsynthError
from cellsynth.tools.labels import drop_small_objects, relabel_sequential


def _check_map(arr, name: str, shape=None) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim != 2:
        raise CellsynthError(f"{name} map must be 2-D, got shape {arr.shape}")
    if shape is not None and arr.shape != shape:
        raise CellsynthError(f"{name} map has shape {arr.shape}, expected {shape}")
    if not np.all(np.isfinite(arr)):
        raise CellsynthError(f"{name} map has NaN or infinite values")
    return arr


def boundary_map(labels: np.ndarray) -> np.ndarray:
    """Inner boundaries of the objects in ``labels``.

    Args:
        labels: H x W integer instance labels (0 = background).
    Returns:
        H x W bool: object pixels with a 4-neighbour outside the object (another object or
        background; pixels on the image edge count as inside).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise CellsynthError(f"labels must be 2-D, got shape {labels.shape}")
    padded = np.pad(labels, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    out = np.zeros(labels.shape, dtype=bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        out |= padded[dy : dy + labels.shape[0], dx : dx + labels.shape[1]] != centre
    return out & (labels > 0)


def distance_map(labels: np.ndarray) -> np.ndarray:
    """Per-object Euclidean distance to the object's edge, divided by the object's maximum.

    Args:
        labels: H x W integer instance labels.
    Returns:
        H x W float32 in [0, 1]: 0 on background, 1 at each object's most interior pixel.
    """
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, dtype=np.float32)
    for idx, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        obj = labels[sl] == idx
        d = ndi.distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1]
        top = d.max()
        if top > 0:
            out[sl][obj] = (d[obj] / top).astype(np.float32)
    return out


def instance_targets(labels: np.ndarray) -> np.ndarray:
    """Training targets for dense segmenters.

    Args:
        labels: H x W instance labels.
    Returns:
        3 x H x W float32: foreground (0/1), inner boundary (0/1), normalised distance [0, 1].
    """
    labels = np.asarray(labels)
    fg = (labels > 0).astype(np.float32)
    return np.stack([fg, boundary_map(labels).astype(np.float32), distance_map(labels)])


def maps_to_instances(
    foreground: np.ndarray,
    boundary: np.ndarray | None = None,
    distance: np.ndarray | None = None,
    fg_threshold: float = 0.5,
    boundary_threshold: float = 0.5,
    seed_threshold: float = 0.5,
    min_distance: int = 3,
    min_size: int = 8,
    seeds: str = "auto",
) -> np.ndarray:
    """Foreground (+ boundary, + distance) probability maps -> instance labels by watershed.

    Seeds (``seeds``): ``"distance"``: connected regions of ``distance > seed_threshold``;
    ``"boundary"``: connected regions of the foreground minus ``boundary > boundary_threshold``;
    ``"edt"``: the maxima (``min_distance`` apart) of the Euclidean distance transform of the
    foreground; ``"auto"``: distance when a distance map is given, else boundary when a boundary
    map is given, else edt. The watershed floods from the seeds over the foreground (on
    -distance (+ boundary), the boundary map, or -EDT); foreground regions without a seed become
    objects of their own.

    Args:
        foreground: H x W probabilities in [0, 1].
        boundary, distance: optional H x W maps in [0, 1].
        fg_threshold: foreground probability cut.
        boundary_threshold, seed_threshold: seed cuts (see above).
        min_distance: minimal seed spacing in pixels (EDT seeds only).
        min_size: objects smaller than this many pixels are removed.
        seeds: auto | distance | boundary | edt (see above).
    Returns:
        H x W uint16 labels (uint32 when more than 65535 objects), numbered 1..N.
    """
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    fg = _check_map(foreground, "foreground")
    mask = fg > fg_threshold
    if boundary is not None:
        boundary = _check_map(boundary, "boundary", fg.shape)
    if distance is not None:
        distance = _check_map(distance, "distance", fg.shape)
    if not mask.any():
        return np.zeros(fg.shape, dtype=np.uint16)

    mode = seeds
    if mode == "auto":
        mode = "distance" if distance is not None else "boundary" if boundary is not None else "edt"
    if mode not in ("distance", "boundary", "edt"):
        raise CellsynthError(f"unknown seeds {seeds!r}; choose auto, distance, boundary or edt")
    if (mode == "distance" and distance is None) or (mode == "boundary" and boundary is None):
        raise CellsynthError(f"seeds {mode!r} need a {mode} map")
    if mode == "distance":
        markers, _ = ndi.label(mask & (distance > seed_threshold))
        elevation = -distance
        if boundary is not None:
            elevation = elevation + boundary
    elif mode == "boundary":
        markers, _ = ndi.label(mask & (boundary <= boundary_threshold))
        elevation = boundary if distance is None else boundary - distance
    else:
        edt = ndi.distance_transform_edt(mask)
        comps, _ = ndi.label(mask)
        peaks = peak_local_max(
            ndi.gaussian_filter(edt, 1.0),
            min_distance=max(int(min_distance), 1),
            labels=comps,
            exclude_border=False,
        )
        markers = np.zeros(fg.shape, dtype=np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        elevation = -edt
    out = watershed(elevation, markers=markers, mask=mask).astype(np.int64)

    # foreground regions that no seed reached become objects of their own
    rest, n_rest = ndi.label(mask & (out == 0))
    if n_rest:
        out[rest > 0] = rest[rest > 0] + out.max()

    return relabel_sequential(drop_small_objects(out, min_size))
