"""Instance-label arrays: the one validity check and the one renumbering, used everywhere.

Instance labels are 2-D integer arrays, 0 = background, 1..N = objects (DESIGN.md).
"""

from __future__ import annotations

import numpy as np

from cellsynth.errors import CellsynthError


def label_dtype(n: int) -> np.dtype:
    """uint16 for up to 65,535 objects (or a largest id that fits), uint32 above."""
    return np.dtype(np.uint16 if n <= 65535 else np.uint32)


def check_labels(labels: np.ndarray, where: str = "mask") -> np.ndarray:
    """Validate instance labels; return them as uint16 (uint32 when the largest id > 65535).

    Accepts integer arrays only; a trailing channel axis of size 1 is dropped. Raises
    :class:`CellsynthError` naming ``where`` for other shapes, booleans, floats, negative
    values, empty arrays and ids beyond uint32.
    """
    labels = np.asarray(labels)
    if labels.ndim == 3 and labels.shape[-1] == 1:
        labels = labels[..., 0]
    if labels.ndim != 2:
        raise CellsynthError(f"{where}: instance labels must be 2-D, got shape {labels.shape}")
    if labels.size == 0:
        raise CellsynthError(f"{where}: empty label array")
    if labels.dtype == bool:
        raise CellsynthError(
            f"{where}: boolean mask given where instance labels are needed; label it first "
            "(cellsynth.tools.threshold.label_components, or `cellsynth tools threshold`)"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise CellsynthError(
            f"{where}: instance labels must be integers, got a {labels.dtype} array (an image "
            "or a GAN output? decode it with cellsynth.tools.codec.decode_mask; a mask saved "
            "as float must be converted to an integer type)"
        )
    low, top = labels.min(), labels.max()
    if low < 0:
        raise CellsynthError(f"{where}: instance labels must be >= 0, found {low}")
    if top > np.iinfo(np.uint32).max:
        raise CellsynthError(f"{where}: label {top} does not fit uint32")
    return labels.astype(label_dtype(int(top)), copy=False)


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber the objects of ``labels`` to 1..N in increasing order of their ids.

    Returns uint16 (uint32 when N > 65535); 0 stays background.
    """
    labels = np.asarray(labels)
    ids = np.unique(labels)
    ids = ids[ids != 0]
    if ids.size == 0:
        return np.zeros(labels.shape, dtype=np.uint16)
    lut = np.zeros(int(ids[-1]) + 1, dtype=np.uint32)
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.uint32)
    return lut[labels].astype(label_dtype(ids.size))


def drop_small_objects(labels: np.ndarray, min_size: int) -> np.ndarray:
    """``labels`` without the objects of fewer than ``min_size`` pixels (they become
    background; a copy, not renumbered); ``labels`` itself when there is nothing to drop."""
    if min_size <= 1 or not labels.any():
        return labels
    small = np.bincount(labels.ravel()) < min_size
    small[0] = False
    labels = labels.copy()
    labels[small[labels]] = 0
    return labels


def touching_objects(labels: np.ndarray) -> np.ndarray:
    """Sorted ids of the objects that touch another object: a pixel of theirs is 8-adjacent to
    a pixel of a different object (background between them means not touching)."""
    labels = check_labels(labels, "touching_objects")
    found = []
    # each unordered neighbour pair once: right, down, down-right, down-left
    for a, b in (
        (labels[:, :-1], labels[:, 1:]),
        (labels[:-1, :], labels[1:, :]),
        (labels[:-1, :-1], labels[1:, 1:]),
        (labels[:-1, 1:], labels[1:, :-1]),
    ):
        pair = (a > 0) & (b > 0) & (a != b)
        found += [a[pair], b[pair]]
    return np.unique(np.concatenate(found)) if found else np.zeros(0, labels.dtype)
