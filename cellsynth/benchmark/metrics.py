"""Instance-segmentation metrics, defined once and named after the literature.

All functions take instance labels (2-D integer arrays, 0 = background, 1..N = objects; ids need
not be consecutive) and compare a prediction with the ground truth:

- one-to-one matching of predicted and true objects by intersection over union (IoU): a pair may
  match when IoU >= ``thresh``; among all one-to-one matchings the one with the most pairs is
  taken (ties: the largest summed IoU), solved as a sparse linear assignment problem (Hungarian /
  Jonker-Volgenant, ``scipy.sparse.csgraph.min_weight_full_bipartite_matching``) on the
  competing pairs only;
- AP(t) = TP / (TP + FP + FN) at IoU thresholds t = 0.50:0.05:0.95 and its mean over t (the
  DSB2018 / Cellpose / StarDist "average precision", StarDist's "accuracy");
- precision TP / (TP + FP), recall TP / (TP + FN), F1 2TP / (2TP + FP + FN) (NeurIPS 2022
  cell segmentation challenge, at t = 0.5);
- panoptic quality PQ = SQ x RQ (Kirillov et al. 2019): SQ = mean IoU of matched pairs,
  RQ = TP / (TP + FP/2 + FN/2);
- aggregated Jaccard index as Cellpose defines it: summed intersections of the pairs of a
  one-to-one matching (most pairs with IoU >= 0.5 first, then largest summed IoU, every overlapping
  pair allowed) divided by the area of the union of both foregrounds;
- foreground (semantic) Dice and IoU, confluence (covered fraction) and object counts.

AP and AJI equal ``cellpose.metrics.average_precision`` / ``aggregated_jaccard_index`` on labels
numbered 1..N. (Cellpose counts ``labels.max()`` objects; here only ids present in the image count,
so the two differ only for labels with gaps.) An image with neither true nor predicted objects has
undefined AP, precision, recall and AJI: NaN, as in Cellpose.

The overlap of two label images is computed with one ``bincount`` over pixel pairs (sparse: only
overlapping pairs are kept), so images with thousands of objects are fast.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from cellsynth.errors import CellsynthError

#: the IoU thresholds of the DSB2018 / Cellpose / StarDist average precision: 0.50, 0.55, ..., 0.95
AP_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))

# above this many (true x predicted) label pairs the overlap uses a sort instead of a bincount
_DENSE_PAIRS = 1 << 22


# ----------------------------------------------------------------------------- input checks


def _check_pair(true, pred, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Validate one (true, pred) pair of label images; return them as integer arrays."""
    arrays = []
    for what, arr in (("true labels", true), ("predicted labels", pred)):
        arr = np.asarray(arr)
        name = f"{what}{where}"
        if arr.ndim != 2:
            raise CellsynthError(f"{name}: instance labels must be 2-D, got shape {arr.shape}")
        if arr.dtype == bool:
            raise CellsynthError(f"{name}: boolean mask given; label the objects first")
        if not np.issubdtype(arr.dtype, np.integer):
            if not (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr))):
                raise CellsynthError(f"{name}: instance labels must be integers, got {arr.dtype}")
            arr = arr.astype(np.int64)
        if arr.size and arr.min() < 0:
            raise CellsynthError(f"{name}: instance labels must be >= 0, found {arr.min()}")
        arrays.append(arr)
    if arrays[0].shape != arrays[1].shape:
        raise CellsynthError(
            f"labels{where}: true labels are {arrays[0].shape} but predicted labels are "
            f"{arrays[1].shape}; they must have the same size"
        )
    return arrays[0], arrays[1]


def _as_list(true_list, pred_list) -> tuple[list, list, bool]:
    """Accept two lists of label images, or two single 2-D arrays (returned as lists + flag)."""
    single = isinstance(true_list, np.ndarray) and true_list.ndim == 2
    if single:
        true_list, pred_list = [true_list], [pred_list]
    true_list, pred_list = list(true_list), list(pred_list)
    if len(true_list) != len(pred_list):
        raise CellsynthError(
            f"got {len(true_list)} true label images but {len(pred_list)} predictions"
        )
    return true_list, pred_list, single


def _check_thresholds(thresholds) -> np.ndarray:
    th = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    if th.ndim != 1 or th.size == 0 or not np.all((th > 0) & (th <= 1)):
        raise CellsynthError(f"IoU thresholds must be in (0, 1], got {thresholds!r}")
    return th


# ----------------------------------------------------------------------------- overlap


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber the ids of ``labels`` to 1..N; return (compact labels (flat), original ids)."""
    flat = labels.ravel()
    if flat.dtype.kind != "i" and flat.dtype.itemsize >= 8:
        flat = flat.astype(np.int64)
    top = int(flat.max()) if flat.size else 0
    if top <= 4 * flat.size + 1024:
        present = np.bincount(flat, minlength=top + 1) > 0
        present[0] = False
        ids = np.flatnonzero(present)
        lut = np.zeros(top + 1, dtype=np.int64)
        lut[ids] = np.arange(1, ids.size + 1)
        return lut[flat], ids
    ids, inverse = np.unique(flat, return_inverse=True)
    if ids[0] == 0:
        return inverse.astype(np.int64), ids[1:]
    return inverse.astype(np.int64) + 1, ids


@dataclass
class Overlap:
    """Sparse overlap of two label images.

    ``true_ids``/``pred_ids``: original ids of the objects (object k has compact index k);
    ``true_area``/``pred_area``: pixel counts; ``ti``/``pi``/``inter``: compact indices and
    intersection (pixels) of every overlapping pair; ``iou``: their IoU (float64).
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    true_area: np.ndarray
    pred_area: np.ndarray
    ti: np.ndarray
    pi: np.ndarray
    inter: np.ndarray
    iou: np.ndarray
    union_fg: int  # pixels in the union of both foregrounds
    inter_fg: int  # pixels in both foregrounds

    @property
    def n_true(self) -> int:
        return int(self.true_ids.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_ids.size)


def label_overlap(true: np.ndarray, pred: np.ndarray) -> Overlap:
    """Pixel overlaps of every pair of a true and a predicted object (sparse).

    Args: ``true``, ``pred``: instance labels of the same shape.
    Returns: an :class:`Overlap`.
    """
    true, pred = _check_pair(true, pred)
    t, true_ids = _compact(true)
    p, pred_ids = _compact(pred)
    nt, np_ = true_ids.size, pred_ids.size
    true_area = np.bincount(t, minlength=nt + 1)[1:]
    pred_area = np.bincount(p, minlength=np_ + 1)[1:]
    both = (t > 0) & (p > 0)
    keys = (t[both] - 1) * np_ + (p[both] - 1)
    if nt * np_ <= _DENSE_PAIRS:
        counts = np.bincount(keys, minlength=nt * np_)
        keys = np.flatnonzero(counts)
        inter = counts[keys]
    else:
        keys, inter = np.unique(keys, return_counts=True)
    ti, pi = np.divmod(keys, max(np_, 1))
    inter = inter.astype(np.int64)
    iou = inter / (true_area[ti] + pred_area[pi] - inter).astype(np.float64)
    inter_fg = int(both.sum())
    union_fg = int(true_area.sum() + pred_area.sum()) - inter_fg
    return Overlap(true_ids, pred_ids, true_area, pred_area, ti, pi, inter, iou, union_fg, inter_fg)


# ----------------------------------------------------------------------------- matching


def _assign(ti: np.ndarray, pi: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Maximum-gain one-to-one matching on a sparse bipartite graph (all gains in (0, 2)).

    Args: ``ti``, ``pi``: endpoints (compact indices) of the candidate pairs; ``gain``: their
    gains. Returns a boolean array selecting the matched pairs. Pairs whose endpoints have no other
    candidate are taken directly; the competing rest is solved exactly as a sparse assignment
    problem (``scipy.sparse.csgraph.min_weight_full_bipartite_matching``, a sparse Hungarian /
    Jonker-Volgenant solver) where each true object may also stay unmatched through a private
    dummy column.
    """
    chosen = np.zeros(ti.size, dtype=bool)
    if ti.size == 0:
        return chosen
    deg_t = np.bincount(ti)
    deg_p = np.bincount(pi)
    simple = (deg_t[ti] == 1) & (deg_p[pi] == 1)
    chosen[simple] = True
    rest = np.flatnonzero(~simple)
    if rest.size == 0:
        return chosen
    rows, r = np.unique(ti[rest], return_inverse=True)
    cols, c = np.unique(pi[rest], return_inverse=True)
    n_r, n_c = rows.size, cols.size
    # cost 2 - gain > 0 for real pairs, 2 for "unmatched": minimising the total maximises the gain
    data = np.concatenate([2.0 - gain[rest], np.full(n_r, 2.0)])
    rr = np.concatenate([r, np.arange(n_r)])
    cc = np.concatenate([c, n_c + np.arange(n_r)])
    graph = csr_matrix((data, (rr, cc)), shape=(n_r, n_c + n_r))
    sel_r, sel_c = min_weight_full_bipartite_matching(graph)
    real = sel_c < n_c
    keys = r.astype(np.int64) * n_c + c
    order = np.argsort(keys)
    found = order[
        np.searchsorted(keys, sel_r[real].astype(np.int64) * n_c + sel_c[real], sorter=order)
    ]
    chosen[rest[found]] = True
    return chosen


def _match_at(ov: Overlap, thresh: float) -> np.ndarray:
    """Indices (into the overlap's pairs) of the pairs matched at IoU >= ``thresh``."""
    cand = np.flatnonzero(ov.iou >= thresh)
    if cand.size == 0:
        return cand
    n_min = max(min(ov.n_true, ov.n_pred), 1)
    gain = 1.0 + ov.iou[cand] / (2.0 * n_min)  # most pairs first, then the largest summed IoU
    return cand[_assign(ov.ti[cand], ov.pi[cand], gain)]


@dataclass
class Matching:
    """Result of :func:`match_instances` for one image at one IoU threshold."""

    thresh: float
    n_true: int
    n_pred: int
    tp: int
    fp: int
    fn: int
    true_ids: np.ndarray = field(repr=False)  # matched true ids (original numbering)
    pred_ids: np.ndarray = field(repr=False)  # matched predicted ids, pairwise with true_ids
    ious: np.ndarray = field(repr=False)  # IoU of each matched pair

    @property
    def ap(self) -> float:
        """TP / (TP + FP + FN) (Cellpose "average precision", StarDist "accuracy")."""
        return _ratio(self.tp, self.tp + self.fp + self.fn)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def sq(self) -> float:
        """Segmentation quality: mean IoU of the matched pairs (0 when none)."""
        return float(self.ious.mean()) if self.tp else 0.0

    @property
    def rq(self) -> float:
        """Recognition quality: TP / (TP + FP/2 + FN/2)."""
        return _ratio(self.tp, self.tp + 0.5 * self.fp + 0.5 * self.fn)

    @property
    def pq(self) -> float:
        """Panoptic quality SQ x RQ."""
        rq = self.rq
        return float("nan") if np.isnan(rq) else self.sq * rq


def _ratio(num, den) -> float:
    return float(num) / float(den) if den else float("nan")


def _matching(ov: Overlap, thresh: float) -> Matching:
    sel = _match_at(ov, thresh)
    tp = int(sel.size)
    return Matching(
        float(thresh),
        ov.n_true,
        ov.n_pred,
        tp,
        ov.n_pred - tp,
        ov.n_true - tp,
        ov.true_ids[ov.ti[sel]],
        ov.pred_ids[ov.pi[sel]],
        ov.iou[sel],
    )


def match_instances(true: np.ndarray, pred: np.ndarray, thresh: float = 0.5) -> Matching:
    """One-to-one matching of predicted and true objects at IoU >= ``thresh``.

    Args: ``true``, ``pred``: instance labels of one image; ``thresh``: IoU threshold in (0, 1].
    Returns: a :class:`Matching` (TP, FP, FN, matched ids and IoUs, AP, precision, recall, F1,
    SQ, RQ, PQ).
    """
    th = float(_check_thresholds(thresh)[0])
    return _matching(label_overlap(true, pred), th)


# ----------------------------------------------------------------------------- metrics


def _counts(ov: Overlap, th: np.ndarray) -> np.ndarray:
    return np.array([_match_at(ov, t).size for t in th], dtype=np.int64)


def average_precision(true_list, pred_list, thresholds=AP_THRESHOLDS):
    """AP = TP / (TP + FP + FN) per image at each IoU threshold (Cellpose definition).

    Args: ``true_list``, ``pred_list``: lists of instance-label images (or one image each);
    ``thresholds``: IoU thresholds (default 0.50:0.05:0.95).
    Returns: ``(ap, tp, fp, fn)``, arrays of shape [n_images, n_thresholds] (1-D for single images);
    ``ap`` is float64 (NaN where an image has no true and no predicted object), the counts int64.
    """
    true_list, pred_list, single = _as_list(true_list, pred_list)
    th = _check_thresholds(thresholds)
    n = len(true_list)
    tp = np.zeros((n, th.size), dtype=np.int64)
    fp = np.zeros_like(tp)
    fn = np.zeros_like(tp)
    for i, (t, p) in enumerate(zip(true_list, pred_list)):
        ov = label_overlap(*_check_pair(t, p, f" (image {i})"))
        tp[i] = _counts(ov, th)
        fp[i] = ov.n_pred - tp[i]
        fn[i] = ov.n_true - tp[i]
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = tp / (tp + fp + fn).astype(np.float64)
    if single:
        return ap[0], tp[0], fp[0], fn[0]
    return ap, tp, fp, fn


def _aji_parts(ov: Overlap) -> tuple[int, int]:
    """(summed intersections of the AJI matching, union of the foregrounds) for one image."""
    if ov.ti.size == 0:
        return 0, ov.union_fg
    n_min = max(min(ov.n_true, ov.n_pred), 1)
    gain = (ov.iou >= 0.5) + ov.iou / (2.0 * n_min)
    sel = _assign(ov.ti, ov.pi, gain)
    return int(ov.inter[sel].sum()), ov.union_fg


def aggregated_jaccard_index(true_list, pred_list) -> np.ndarray:
    """Aggregated Jaccard index per image, as Cellpose defines it.

    A one-to-one matching over all overlapping pairs (most pairs with IoU >= 0.5 first, then the
    largest summed IoU); AJI = summed intersections of the matched pairs / area of the union of the
    true and predicted foregrounds.

    Args: lists of instance-label images (or one image each).
    Returns: float64 array [n_images] (a float for single images); NaN for two empty images.
    """
    true_list, pred_list, single = _as_list(true_list, pred_list)
    out = np.zeros(len(true_list))
    for i, (t, p) in enumerate(zip(true_list, pred_list)):
        inter, union = _aji_parts(label_overlap(*_check_pair(t, p, f" (image {i})")))
        out[i] = _ratio(inter, union)
    return float(out[0]) if single else out


def panoptic_quality(true: np.ndarray, pred: np.ndarray, thresh: float = 0.5):
    """Panoptic quality of one image: returns ``(pq, sq, rq)`` at IoU >= ``thresh``."""
    m = match_instances(true, pred, thresh)
    return m.pq, m.sq, m.rq


def foreground_scores(true: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Semantic (foreground vs background) Dice and IoU of one image: ``(dice, iou)``.

    Both are NaN when neither image has foreground.
    """
    true, pred = _check_pair(true, pred)
    a, b = true > 0, pred > 0
    inter = int(np.count_nonzero(a & b))
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return _ratio(2 * inter, total), _ratio(inter, total - inter)


def confluence(labels: np.ndarray) -> float:
    """Covered fraction: share of the image's pixels that belong to an object."""
    labels = np.asarray(labels)
    if labels.size == 0:
        raise CellsynthError("confluence: empty label image")
    return float(np.count_nonzero(labels)) / labels.size


def image_metrics(true: np.ndarray, pred: np.ndarray, thresholds=AP_THRESHOLDS) -> dict:
    """Every per-image metric in one dict (JSON-able floats and ints).

    Keys: ``n_true``, ``n_pred``, ``count_error`` (n_pred - n_true), ``ap`` (list, per threshold),
    ``mean_ap``, ``tp``/``fp``/``fn`` (lists), ``ap50``, ``precision``, ``recall``, ``f1`` (at 0.5),
    ``pq``, ``sq``, ``rq`` (at 0.5), ``iou_sum`` (summed IoU of the pairs matched at 0.5),
    ``aji``, ``aji_inter``, ``aji_union``, ``fg_dice``, ``fg_iou``, ``confluence_true``,
    ``confluence_pred``, ``confluence_error`` (pred - true), plus ``thresholds``.
    """
    true, pred = _check_pair(true, pred)
    th = _check_thresholds(thresholds)
    ov = label_overlap(true, pred)
    tp = _counts(ov, th)
    m50 = _matching(ov, 0.5)
    aji_inter, aji_union = _aji_parts(ov)
    dice, fg_iou = foreground_scores(true, pred)
    ct, cp = confluence(true), confluence(pred)
    ap = [_ratio(k, ov.n_true + ov.n_pred - k) for k in tp]
    return {
        "thresholds": [float(x) for x in th],
        "n_true": ov.n_true,
        "n_pred": ov.n_pred,
        "count_error": ov.n_pred - ov.n_true,
        "tp": [int(x) for x in tp],
        "fp": [int(ov.n_pred - x) for x in tp],
        "fn": [int(ov.n_true - x) for x in tp],
        "ap": ap,
        "mean_ap": float(np.mean(ap)),
        "ap50": m50.ap,
        "precision": m50.precision,
        "recall": m50.recall,
        "f1": m50.f1,
        "pq": m50.pq,
        "sq": m50.sq,
        "rq": m50.rq,
        "tp50": m50.tp,
        "iou_sum": float(m50.ious.sum()),
        "aji": _ratio(aji_inter, aji_union),
        "aji_inter": aji_inter,
        "aji_union": aji_union,
        "fg_dice": dice,
        "fg_iou": fg_iou,
        "fg_inter": ov.inter_fg,
        "fg_union": ov.union_fg,
        "confluence_true": ct,
        "confluence_pred": cp,
        "confluence_error": cp - ct,
    }


def summarize(per_image: list[dict]) -> dict:
    """Dataset-level metrics from a list of :func:`image_metrics` dicts.

    Pooled over the dataset (counts summed before dividing): ``ap`` (per threshold), ``mean_ap``,
    ``ap50``, ``precision``, ``recall``, ``f1``, ``pq``/``sq``/``rq``, ``aji``, ``fg_dice``,
    ``fg_iou``. Averaged over images (``image_`` prefix): ``image_mean_ap``, ``image_ap`` (per
    threshold, NaN images skipped), ``image_ap50``, ``image_f1``, ``image_pq``, ``image_aji``.
    Also ``n_images``, ``n_true``, ``n_pred``, ``mean_abs_count_error``,
    ``mean_rel_count_error`` (|n_pred - n_true| / n_true over images with objects),
    ``mean_abs_confluence_error``.
    """
    if not per_image:
        raise CellsynthError("summarize: no per-image results to summarize")
    th = per_image[0]["thresholds"]
    if any(r["thresholds"] != th for r in per_image):
        raise CellsynthError("summarize: per-image results use different IoU thresholds")
    tp = np.sum([r["tp"] for r in per_image], axis=0)
    fp = np.sum([r["fp"] for r in per_image], axis=0)
    fn = np.sum([r["fn"] for r in per_image], axis=0)
    ap = [_ratio(a, a + b + c) for a, b, c in zip(tp, fp, fn)]
    tp50 = sum(r["tp50"] for r in per_image)
    n_true = sum(r["n_true"] for r in per_image)
    n_pred = sum(r["n_pred"] for r in per_image)
    iou_sum = sum(r["iou_sum"] for r in per_image)

    def mean(key):
        vals = np.array([r[key] for r in per_image], dtype=np.float64)
        vals = vals[~np.isnan(vals)]
        return float(vals.mean()) if vals.size else float("nan")

    image_ap = np.array([r["ap"] for r in per_image], dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        image_ap_mean = np.nanmean(image_ap, axis=0)
    rel = [abs(r["count_error"]) / r["n_true"] for r in per_image if r["n_true"] > 0]
    out = {
        "thresholds": th,
        "n_images": len(per_image),
        "n_true": int(n_true),
        "n_pred": int(n_pred),
        "tp": [int(x) for x in tp],
        "fp": [int(x) for x in fp],
        "fn": [int(x) for x in fn],
        "tp50": int(tp50),
        "ap": ap,
        "mean_ap": float(np.mean(ap)),
        "image_ap": [float(x) for x in image_ap_mean],
        "image_mean_ap": mean("mean_ap"),
        "image_ap50": mean("ap50"),
        "image_f1": mean("f1"),
        "image_pq": mean("pq"),
        "image_aji": mean("aji"),
        "aji": _ratio(
            sum(r["aji_inter"] for r in per_image), sum(r["aji_union"] for r in per_image)
        ),
        "fg_dice": _ratio(
            2 * sum(r["fg_inter"] for r in per_image),
            sum(r["fg_union"] + r["fg_inter"] for r in per_image),
        ),
        "fg_iou": _ratio(
            sum(r["fg_inter"] for r in per_image), sum(r["fg_union"] for r in per_image)
        ),
        "mean_abs_count_error": float(np.mean([abs(r["count_error"]) for r in per_image])),
        "mean_rel_count_error": float(np.mean(rel)) if rel else float("nan"),
        "mean_abs_confluence_error": float(
            np.mean([abs(r["confluence_error"]) for r in per_image])
        ),
    }
    fp50, fn50 = n_pred - tp50, n_true - tp50
    rq = _ratio(tp50, tp50 + 0.5 * fp50 + 0.5 * fn50)
    sq = iou_sum / tp50 if tp50 else 0.0
    out.update(
        ap50=_ratio(tp50, tp50 + fp50 + fn50),
        precision=_ratio(tp50, tp50 + fp50),
        recall=_ratio(tp50, tp50 + fn50),
        f1=_ratio(2 * tp50, 2 * tp50 + fp50 + fn50),
        sq=sq,
        rq=rq,
        pq=float("nan") if np.isnan(rq) else sq * rq,
    )
    return out
