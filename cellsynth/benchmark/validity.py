"""Benchmark validity: does a synthetic test set rank segmenters the way real data does?

Plain functions on the results dict that :func:`cellsynth.benchmark.runner.run_benchmark` writes
(``results.json``); numpy only (the rank statistics are computed here, vectorised over bootstrap
samples, and tested against ``scipy.stats``).

- Which test sets are synthetic (:func:`classify_test_sets`): a set whose provenance carries a
  cellsynth ``manifest.json`` (what ``cellsynth synth`` writes), a set the run was told is
  synthetic (``benchmark run --synthetic-test DIR`` stores ``"synthetic": true`` in the set's
  entry), or a set named in ``synthetic`` (dataset keys or paths; ``benchmark validate
  --synthetic KEY``). Every other test set is real.
- For each (synthetic, real) pair of test sets and each headline metric (:data:`HEADLINE`:
  AP@0.5, mean AP over IoU 0.50:0.95, F1 and PQ at IoU 0.5, all pooled over the set's objects as
  :func:`cellsynth.benchmark.metrics.summarize` makes them) (:func:`compute_validity`): each
  segmenter's score and rank (1 = best, ties share the average rank) on both sets, its
  synthetic/real ratio, Spearman's rho and Kendall's tau-b between the synthetic and the real
  scores, and the pairs of segmenters whose order flips; and the error profile that explains
  them (:func:`error_profile`): per segmenter and set, the share of predictions that match no
  true object and the share of true objects that no prediction matches (IoU 0.5), and the
  predicted objects per true object, so that a flip can be read as "over-splits the synthetic
  images" or "misses the dim real nuclei".
- 95 % bootstrap intervals: the images of each test set are resampled with replacement
  (independently for the two sets, the same draw for every segmenter, so the segmenters stay
  paired); for every bootstrap sample the pooled metric is recomputed from the per-image
  TP/FP/FN counts and matched IoU sums (:func:`pooled_scores`, the formulas of ``summarize``),
  then the statistics; the interval is the 2.5 / 97.5 percentiles of the finite values (extended
  to hold the point estimate when a skewed bootstrap distribution leaves it outside; such an
  interval says ``"extended": true``). Seeded: the same results and seed give the same intervals.
- Paired fidelity (:func:`paired_fidelity`): one segmenter scored on translated images and on the
  real images of the same masks; the ratio of pooled AP@0.5 (as pix2pixHD was judged on
  Cityscapes by segmenting its generated images).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cellsynth.benchmark import metrics
from cellsynth.errors import CellsynthError

#: the headline metrics compared between synthetic and real test sets (keys of the summary)
HEADLINE = ("ap50", "mean_ap", "f1", "pq")
METRIC_NAMES = {"ap50": "AP@0.5", "mean_ap": "mean AP", "f1": "F1", "pq": "PQ"}

#: per-image keys needed to recompute the pooled metrics
_ROW_KEYS = ("tp", "fp", "fn", "tp50", "n_true", "n_pred", "iou_sum")

_CHUNK = 256  # bootstrap samples drawn at a time


# ----------------------------------------------------------------------------- rank statistics


def average_ranks(x) -> np.ndarray:
    """Ranks 1..n along the last axis, ties sharing their average rank (``rankdata`` "average").

    Args: ``x``: array [..., n]. Returns: float64 array of the same shape.
    """
    x = np.asarray(x, dtype=np.float64)
    less = (x[..., None, :] < x[..., :, None]).sum(-1)
    equal = (x[..., None, :] == x[..., :, None]).sum(-1)  # counts the element itself
    return less + (equal + 1) / 2.0


def spearman(x, y) -> np.ndarray:
    """Spearman's rank correlation along the last axis: Pearson's r of the average ranks.

    Args: ``x``, ``y``: arrays [..., n] (n >= 2). Returns: float64 array [...]; NaN where either
    side is constant or holds a NaN.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    bad = np.isnan(x).any(-1) | np.isnan(y).any(-1)
    rx, ry = average_ranks(x), average_ranks(y)
    dx = rx - rx.mean(-1, keepdims=True)
    dy = ry - ry.mean(-1, keepdims=True)
    den = np.sqrt((dx * dx).sum(-1) * (dy * dy).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (dx * dy).sum(-1) / den
    r = np.where((den > 0) & ~bad, r, np.nan)
    return np.clip(r, -1.0, 1.0)


def kendall_tau_b(x, y) -> np.ndarray:
    """Kendall's tau-b along the last axis: (P - Q) / sqrt((P + Q + Ty) (P + Q + Tx)), P and Q
    the concordant and discordant pairs, Tx (Ty) the pairs tied in x (y) only.

    Args: ``x``, ``y``: arrays [..., n] (n >= 2). Returns: float64 array [...]; NaN where either
    side is constant or holds a NaN.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    bad = np.isnan(x).any(-1) | np.isnan(y).any(-1)
    i, j = np.triu_indices(x.shape[-1], 1)
    sx, sy = np.sign(x[..., j] - x[..., i]), np.sign(y[..., j] - y[..., i])
    n_pairs = i.size
    untied_x = n_pairs - (sx == 0).sum(-1)  # P + Q + (pairs tied in y only)
    untied_y = n_pairs - (sy == 0).sum(-1)
    den = np.sqrt(untied_x * untied_y.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = (sx * sy).sum(-1) / den
    tau = np.where((den > 0) & ~bad, tau, np.nan)
    return np.clip(tau, -1.0, 1.0)


def rank_of(scores) -> np.ndarray:
    """Rank of each score, 1 = highest; ties share their average rank."""
    return average_ranks(-np.asarray(scores, dtype=np.float64))


# ----------------------------------------------------------------------------- pooled metrics


def image_table(rows: list[dict], where: str = "") -> dict:
    """The per-image counts of a test set's rows (``results[...]["images"]``) as arrays.

    Returns: ``tp``, ``fp``, ``fn`` int64 [n_images, n_thresholds]; ``tp50``, ``n_true``,
    ``n_pred`` int64 [n_images]; ``iou_sum`` float64 [n_images]; ``iou_list``: the same floats as
    a list (summed in order for the exact point estimate).
    """
    if not rows:
        raise CellsynthError(f"{where}: no per-image results to recompute the metrics from")
    missing = [k for k in _ROW_KEYS if k not in rows[0]]
    if missing:
        raise CellsynthError(
            f"{where}: per-image results lack {', '.join(missing)}; run the benchmark again with "
            "this version of cellsynth"
        )
    out = {k: np.array([r[k] for r in rows], dtype=np.int64) for k in ("tp", "fp", "fn")}
    for k in ("tp50", "n_true", "n_pred"):
        out[k] = np.array([r[k] for r in rows], dtype=np.int64)
    out["iou_list"] = [float(r["iou_sum"]) for r in rows]
    out["iou_sum"] = np.array(out["iou_list"], dtype=np.float64)
    return out


def pooled_scores(tp, fp, fn, tp50, n_true, n_pred, iou_sum) -> dict:
    """The pooled headline metrics from summed counts, exactly as ``metrics.summarize`` makes them.

    Args: ``tp``, ``fp``, ``fn``: summed counts [..., n_thresholds]; ``tp50``, ``n_true``,
    ``n_pred``, ``iou_sum``: summed TP at IoU 0.5, objects, predictions and matched IoUs [...].
    Returns: ``{"ap50", "mean_ap", "f1", "pq"}`` float64 arrays [...] (NaN where undefined).
    """
    tp, fp, fn = (np.asarray(a, dtype=np.int64) for a in (tp, fp, fn))
    tp50, n_true, n_pred = (np.asarray(a, dtype=np.int64) for a in (tp50, n_true, n_pred))
    iou_sum = np.asarray(iou_sum, dtype=np.float64)
    fp50, fn50 = n_pred - tp50, n_true - tp50
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = tp.astype(np.float64) / (tp + fp + fn).astype(np.float64)
        ap50 = tp50.astype(np.float64) / (tp50 + fp50 + fn50).astype(np.float64)
        f1 = (2 * tp50).astype(np.float64) / (2 * tp50 + fp50 + fn50).astype(np.float64)
        rq = tp50.astype(np.float64) / (tp50 + 0.5 * fp50 + 0.5 * fn50)
        sq = np.where(tp50 > 0, iou_sum / np.where(tp50 > 0, tp50, 1).astype(np.float64), 0.0)
    return {"ap50": ap50, "mean_ap": np.mean(ap, axis=-1), "f1": f1, "pq": sq * rq}


def table_scores(table: dict, weights: np.ndarray | None = None) -> dict:
    """Pooled headline metrics of one test set from its :func:`image_table`.

    Args: ``weights``: None for the set as it is (exact: the same sums and formulas as
    ``summarize``), or int array [B, n_images] of how often each image is drawn (bootstrap).
    Returns: metric -> float (no weights) or float64 array [B].
    """
    if weights is None:
        sums = {k: table[k].sum(axis=0) for k in ("tp", "fp", "fn", "tp50", "n_true", "n_pred")}
        sums["iou_sum"] = sum(table["iou_list"])  # the order summarize adds them in
        return {k: float(v) for k, v in pooled_scores(**sums).items()}
    sums = {k: weights @ table[k] for k in ("tp", "fp", "fn", "tp50", "n_true", "n_pred")}
    sums["iou_sum"] = weights @ table["iou_sum"]
    return pooled_scores(**sums)


def bootstrap_weights(rng: np.random.Generator, n_images: int, n_boot: int) -> np.ndarray:
    """How often each image is drawn in each of ``n_boot`` resamples of ``n_images`` images with
    replacement: int64 [n_boot, n_images] (rows sum to ``n_images``)."""
    out = np.empty((n_boot, n_images), dtype=np.int64)
    for start in range(0, n_boot, _CHUNK):
        k = min(_CHUNK, n_boot - start)
        idx = rng.integers(0, n_images, size=(k, n_images))
        flat = (idx + n_images * np.arange(k)[:, None]).ravel()
        out[start : start + k] = np.bincount(flat, minlength=k * n_images).reshape(k, n_images)
    return out


def interval(samples, point: float, confidence: float = 0.95) -> dict | None:
    """Percentile bootstrap interval of the finite ``samples``; None when there are none.

    Returns: ``{"low", "high", "n"}`` (n: finite samples used), plus ``"extended": true`` when
    the interval was widened to hold ``point``.
    """
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return None
    tail = 50.0 * (1.0 - confidence)
    low, high = (float(v) for v in np.percentile(s, [tail, 100.0 - tail]))
    out = {"low": low, "high": high, "n": int(s.size)}
    if point is not None and math.isfinite(point) and not low <= point <= high:
        out.update(low=min(low, point), high=max(high, point), extended=True)
    return out


# ----------------------------------------------------------------------------- test sets


def _matches(key: str, info: dict, wanted: str) -> bool:
    if wanted == key:
        return True
    if not info.get("path"):
        return False
    try:
        path = Path(info["path"]).resolve()
        w = Path(wanted).resolve()
    except (OSError, RuntimeError):
        return False
    return w == path or w / "test" == path or w / "val" == path


def classify_test_sets(results: dict, synthetic=()) -> dict[str, str | None]:
    """Test set key -> why it counts as synthetic (``"manifest.json"``, ``"flagged"``), or None
    for a real set.

    Args: ``synthetic``: dataset keys or paths to count as synthetic besides those with a
    ``manifest.json`` or ``"synthetic": true`` in their ``results["datasets"]`` entry.
    """
    datasets = results.get("datasets") or {}
    wanted = [str(s) for s in synthetic or ()]
    unknown = [w for w in wanted if not any(_matches(k, v, w) for k, v in datasets.items())]
    if unknown:
        raise CellsynthError(
            f"--synthetic {unknown[0]}: no such test set in the results; test sets: "
            f"{', '.join(datasets) or 'none'}"
        )
    out = {}
    for key, info in datasets.items():
        reason = None
        if "manifest.json" in (info.get("provenance") or {}):
            reason = "manifest.json"
        if info.get("synthetic") is True or any(_matches(key, info, w) for w in wanted):
            reason = reason or "flagged"
        out[key] = reason
    return out


def _scored(results: dict, key: str) -> dict[str, list[dict]]:
    """Segmenter -> per-image rows, for the segmenters with results on test set ``key``."""
    out = {}
    for sname, sres in (results.get("segmenters") or {}).items():
        d = (sres.get("datasets") or {}).get(key) or {}
        if d.get("status") == "ok" and d.get("summary") and d.get("images"):
            out[sname] = d["images"]
    return out


# ----------------------------------------------------------------------------- validity


def _round(x):
    return None if x is None or not math.isfinite(x) else float(x)


def error_profile(table: dict) -> dict:
    """Pooled error shares of one segmenter on one test set (IoU 0.5) from its
    :func:`image_table`: ``extra`` = predictions matching no true object / predictions,
    ``missed`` = true objects no prediction matches / true objects, ``pred_per_true`` =
    predictions / true objects (None where a denominator is 0)."""
    tp50, n_true, n_pred = (int(table[k].sum()) for k in ("tp50", "n_true", "n_pred"))
    return {
        "extra": _round((n_pred - tp50) / n_pred) if n_pred else None,
        "missed": _round((n_true - tp50) / n_true) if n_true else None,
        "pred_per_true": _round(n_pred / n_true) if n_true else None,
    }


def _compare(results, syn, real, n_boot, rng, confidence, metric_keys) -> dict:
    """Rank agreement of the segmenters between test sets ``syn`` and ``real``."""
    rows_s, rows_r = _scored(results, syn), _scored(results, real)
    names = [s for s in results["segmenters"] if s in rows_s and s in rows_r]
    skipped = {
        s: "no results on "
        + " and ".join(k for k, rows in ((syn, rows_s), (real, rows_r)) if s not in rows)
        for s in results["segmenters"]
        if s not in names
    }
    if len(names) < 3:
        raise CellsynthError(
            f"{syn} (synthetic) against {real} (real): a rank correlation needs at least 3 "
            f"segmenters with results on both, got {len(names)}"
            + (f" ({', '.join(names)})" if names else "")
            + "; run more segmenters"
        )
    tables = {}
    for key, rows in ((syn, rows_s), (real, rows_r)):
        tables[key] = {s: image_table(rows[s], f"{s} on {key}") for s in names}
        n_true = int(next(iter(tables[key].values()))["n_true"].sum())
        if n_true == 0:
            raise CellsynthError(
                f"test set {key} has no objects in its masks; rank agreement needs annotated "
                "objects (check its masks/ folder)"
            )
        counts = {len(t["n_true"]) for t in tables[key].values()}
        if len(counts) != 1:
            raise CellsynthError(
                f"test set {key}: segmenters were scored on different numbers of images; run the "
                "benchmark again"
            )
    point = {k: {s: table_scores(tables[k][s]) for s in names} for k in (syn, real)}
    w = {
        k: bootstrap_weights(rng, len(next(iter(tables[k].values()))["n_true"]), n_boot)
        for k in (syn, real)
    }
    boot = {k: {s: table_scores(tables[k][s], w[k]) for s in names} for k in (syn, real)}

    out = {"synthetic": syn, "real": real, "segmenters": names, "skipped": skipped, "metrics": {}}
    out["n_images"] = {k: int(w[k].shape[1]) for k in (syn, real)}
    out["errors"] = {
        s: {"synthetic": error_profile(tables[syn][s]), "real": error_profile(tables[real][s])}
        for s in names
    }
    for m in metric_keys:
        xs = np.array([point[syn][s][m] for s in names])
        xr = np.array([point[real][s][m] for s in names])
        bs = np.stack([boot[syn][s][m] for s in names], axis=-1)  # [B, n_segmenters]
        br = np.stack([boot[real][s][m] for s in names], axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio, bratio = xs / xr, bs / br
        rank_s, rank_r = rank_of(xs), rank_of(xr)
        scores = {}
        for i, s in enumerate(names):
            ratio_i = _round(ratio[i]) if xr[i] != 0 else None
            scores[s] = {
                "synthetic": _round(xs[i]),
                "real": _round(xr[i]),
                "ratio": ratio_i,
                "rank_synthetic": float(rank_s[i]),
                "rank_real": float(rank_r[i]),
                "synthetic_ci": interval(bs[:, i], xs[i], confidence),
                "real_ci": interval(br[:, i], xr[i], confidence),
                "ratio_ci": interval(bratio[:, i], ratio_i, confidence)
                if ratio_i is not None
                else None,
            }
        stats = {}
        for sname, fn in (("spearman", spearman), ("kendall", kendall_tau_b)):
            value = _round(float(fn(xs, xr)))
            stats[sname] = {"value": value, "ci": interval(fn(bs, br), value, confidence)}
        flips = []
        valid = ~(np.isnan(bs).any(-1) | np.isnan(br).any(-1))
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                ds, dr = xs[i] - xs[j], xr[i] - xr[j]
                if ds * dr < 0:
                    a, b = (i, j) if ds > 0 else (j, i)
                    flipped = (bs[valid, i] - bs[valid, j]) * (br[valid, i] - br[valid, j]) < 0
                    flips.append(
                        {
                            "better_on_synthetic": names[a],
                            "better_on_real": names[b],
                            "bootstrap_share": float(flipped.mean()) if flipped.size else None,
                        }
                    )
        out["metrics"][m] = {
            "scores": scores,
            "ranking_synthetic": [names[i] for i in np.argsort(rank_s, kind="stable")],
            "ranking_real": [names[i] for i in np.argsort(rank_r, kind="stable")],
            **stats,
            "flips": flips,
        }
    return out


def compute_validity(
    results: dict,
    synthetic=(),
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    metric_keys=HEADLINE,
) -> dict:
    """Rank agreement between every synthetic and every real test set of a benchmark run.

    Args:
        results: the results dict of a run (as in ``results.json``).
        synthetic: dataset keys or paths to count as synthetic (besides manifest.json / flags).
        n_boot: bootstrap samples (>= 1).
        seed: seed of the bootstrap (comparison ``i`` draws from ``default_rng([seed, i])``).
        confidence: level of the bootstrap intervals.
        metric_keys: summary keys to compare (default :data:`HEADLINE`).
    Returns: ``{"synthetic": [keys], "real": [keys], "reasons": {key: why synthetic},
    "method": {...}, "metrics": [...], "comparisons": [one per (synthetic, real) pair]}``; each
    comparison holds ``segmenters``, ``skipped``, ``n_images`` and per metric ``scores``
    (per segmenter: synthetic, real, ratio, ranks and intervals), ``ranking_synthetic``,
    ``ranking_real``, ``spearman``, ``kendall`` (``{"value", "ci"}``) and ``flips``.
    Raises: CellsynthError when there is no synthetic or no real test set, fewer than 3
    segmenters with results on both sets of a pair, a test set without objects, or bad arguments.
    """
    if int(n_boot) < 1:
        raise CellsynthError(f"--bootstrap must be >= 1, got {n_boot}")
    if not 0 < confidence < 1:
        raise CellsynthError(f"confidence must be in (0, 1), got {confidence}")
    unknown = [m for m in metric_keys if m not in METRIC_NAMES]
    if unknown:
        raise CellsynthError(
            f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(HEADLINE)}"
        )
    kinds = classify_test_sets(results, synthetic)
    syn = [k for k, why in kinds.items() if why]
    real = [k for k, why in kinds.items() if not why]
    if not syn:
        raise CellsynthError(
            "no synthetic test set: give one with a cellsynth manifest.json, or flag it "
            "(benchmark run --synthetic-test DIR, benchmark validate --synthetic KEY)"
        )
    if not real:
        raise CellsynthError(
            f"no real test set: every test set ({', '.join(syn)}) is synthetic; add a real one "
            "with --test DIR"
        )
    comparisons = []
    for i, (s, r) in enumerate((s, r) for s in syn for r in real):
        rng = np.random.default_rng([int(seed), i])
        comparisons.append(_compare(results, s, r, int(n_boot), rng, confidence, metric_keys))
    return {
        "synthetic": syn,
        "real": real,
        "reasons": {k: kinds[k] for k in syn},
        "metrics": list(metric_keys),
        "method": {
            "n_boot": int(n_boot),
            "seed": int(seed),
            "confidence": confidence,
            "interval": "percentile",
            "resampling": "images with replacement, independently per test set, the same draw "
            "for every segmenter; pooled metrics recomputed from per-image counts",
            "rank": "1 = best; ties share the average rank",
        },
        "comparisons": comparisons,
    }


def has_synthetic_and_real(results: dict, synthetic=()) -> bool:
    """Whether the run has at least one synthetic and one real test set."""
    kinds = classify_test_sets(results, synthetic)
    return any(kinds.values()) and not all(kinds.values())


# ----------------------------------------------------------------------------- train on synthetic


def train_transfer(results: dict, metric_keys=("ap50", "mean_ap")) -> dict | None:
    """Per segmenter and test set: score when trained on ``--train`` (synthetic) and on
    ``--train-real``, and their ratio; None when no segmenter has a ``train_real`` block.

    Returns: ``{segmenter: {test set: {metric: {"synthetic", "real", "ratio"}}}}`` (None values
    where a side has no score).
    """
    out = {}
    for sname, sres in (results.get("segmenters") or {}).items():
        other = sres.get("train_real")
        if not isinstance(other, dict):
            continue
        per = {}
        for key in results.get("datasets") or {}:
            a = ((sres.get("datasets") or {}).get(key) or {}).get("summary") or {}
            b = ((other.get("datasets") or {}).get(key) or {}).get("summary") or {}
            row = {}
            for m in metric_keys:
                x, y = a.get(m), b.get(m)
                ratio = (
                    x / y
                    if isinstance(x, (int, float)) and isinstance(y, (int, float)) and y
                    else None
                )
                row[m] = {"synthetic": x, "real": y, "ratio": ratio}
            per[key] = row
        out[sname] = per
    return out or None


# ----------------------------------------------------------------------------- paired fidelity


def paired_fidelity(
    images_a, images_b, masks, segmenter, n_boot: int = 1000, seed: int = 0
) -> dict:
    """Score one segmenter on translated images and on real images against the same masks.

    Args:
        images_a: the translated images (made from ``masks`` by a mask-to-image translator).
        images_b: the real images of ``masks``.
        masks: the instance labels both are scored against (same order).
        segmenter: an object with ``predict(image) -> labels`` (a benchmark segmenter).
        n_boot, seed: paired bootstrap (the same images drawn for both sides) of the ratio.
    Returns: ``{"n_images", "translated": {metric: value}, "real": {...}, "ratio": {metric:
    translated / real}, "ratio_ci": {metric: interval}, "images": [per-image ap50 of both]}``;
    ``ratio["ap50"]`` is the paired fidelity (1 = the segmenter cannot tell them apart).
    """
    images_a, images_b, masks = list(images_a), list(images_b), list(masks)
    if not (len(images_a) == len(images_b) == len(masks)):
        raise CellsynthError(
            f"paired fidelity: {len(images_a)} translated images, {len(images_b)} real images and "
            f"{len(masks)} masks; they must pair up"
        )
    if not masks:
        raise CellsynthError("paired fidelity: no images given")
    rows = {"translated": [], "real": []}
    for i, (a, b, m) in enumerate(zip(images_a, images_b, masks)):
        for side, image in (("translated", a), ("real", b)):
            if np.asarray(image).shape[:2] != np.asarray(m).shape:
                raise CellsynthError(
                    f"paired fidelity: {side} image {i} is {np.asarray(image).shape[:2]} but its "
                    f"mask is {np.asarray(m).shape}; translate at the masks' size"
                )
            pred = segmenter.predict(image)
            rows[side].append(metrics.image_metrics(m, pred))
    if sum(r["n_true"] for r in rows["real"]) == 0:
        raise CellsynthError("paired fidelity: the masks hold no objects")
    tables = {k: image_table(v, k) for k, v in rows.items()}
    point = {k: table_scores(t) for k, t in tables.items()}
    rng = np.random.default_rng(int(seed))
    w = bootstrap_weights(rng, len(masks), int(n_boot))  # paired: one draw for both sides
    boot = {k: table_scores(t, w) for k, t in tables.items()}
    ratio, ratio_ci = {}, {}
    for m in HEADLINE:
        x, y = point["translated"][m], point["real"][m]
        ratio[m] = _round(x / y) if y else None
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio_ci[m] = (
                interval(boot["translated"][m] / boot["real"][m], ratio[m])
                if ratio[m] is not None
                else None
            )
    return {
        "n_images": len(masks),
        "translated": {m: _round(v) for m, v in point["translated"].items()},
        "real": {m: _round(v) for m, v in point["real"].items()},
        "ratio": ratio,
        "ratio_ci": ratio_ci,
        "n_true": int(tables["real"]["n_true"].sum()),
        "images": [
            {"translated_ap50": _round(a["ap50"]), "real_ap50": _round(b["ap50"])}
            for a, b in zip(rows["translated"], rows["real"])
        ],
    }


def _manifest_sources(split_dir: Path) -> dict[str, str] | None:
    """Sample name -> name of the mask it was made from, from a ``cellsynth synth --masks DIR``
    manifest.json in ``split_dir`` or its parent (None when there is none)."""
    import json

    for folder in (split_dir, split_dir.parent):
        path = folder / "manifest.json"
        if not path.is_file():
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CellsynthError(f"{path}: unreadable manifest ({exc})") from None
        samples = doc.get("samples") if isinstance(doc, dict) else None
        if not isinstance(samples, list):
            return None
        found = {
            str(r["name"]): Path(str(r["mask_source"])).stem
            for r in samples
            if isinstance(r, dict) and "name" in r and r.get("mask_source")
        }
        return found or None
    return None


def _same_objects(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label images hold the same objects (ids may differ)."""
    if a.shape != b.shape:
        return False
    m = metrics.match_instances(a, b, 1.0)
    return m.tp == m.n_true == m.n_pred


def load_pairs(real_dir, translated_dir, max_images: int | None = None) -> dict:
    """Open a real and a translated canonical split whose samples pair up: by name, or (for
    the output of ``cellsynth synth --masks DIR``) by the ``mask_source`` its manifest.json
    records for each sample.

    Returns: ``{"pairs": [(translated name, real name)], "translated": [images], "real":
    [images], "masks": [labels from real_dir], "paired_by": "name" | "manifest.json",
    "mask_mismatch": [translated names whose own mask holds other objects]}``.
    Raises: CellsynthError when the samples do not pair up.
    """
    from cellsynth.datasets.canonical import CanonicalDataset

    real = CanonicalDataset(real_dir, "test")
    trans = CanonicalDataset(translated_dir, "test")
    a, b = set(real.names), set(trans.names)
    paired_by = "name"
    if a == b:
        pairs = [(n, n) for n in real.names]
    else:
        sources = _manifest_sources(Path(trans.root))
        if sources is not None and set(trans.names) <= set(sources):
            pairs = [(n, sources[n]) for n in trans.names]
            paired_by = "manifest.json"
            missing = sorted({r for _, r in pairs} - a)
        else:
            missing = None
        if missing is None or missing:
            only_r, only_t = sorted(a - b), sorted(b - a)
            parts = []
            if missing:
                parts.append(
                    f"its manifest.json names masks not in --real: {', '.join(missing[:3])}"
                )
            else:
                if only_r:
                    parts.append(f"only in --real: {', '.join(only_r[:3])}")
                if only_t:
                    parts.append(f"only in --translated: {', '.join(only_t[:3])}")
            raise CellsynthError(
                f"{translated_dir} and {real_dir} do not hold the same mask names "
                f"({'; '.join(parts)}); translate the masks of the real test set"
            )
    pairs = pairs[: max_images if max_images else None]
    index_r = {n: i for i, n in enumerate(real.names)}
    index_t = {n: i for i, n in enumerate(trans.names)}
    out = {"pairs": pairs, "translated": [], "real": [], "masks": [], "paired_by": paired_by}
    out["mask_mismatch"] = []
    for tname, rname in pairs:
        s_real, s_trans = real[index_r[rname]], trans[index_t[tname]]
        out["translated"].append(s_trans.image)
        out["real"].append(s_real.image)
        out["masks"].append(s_real.labels)
        if not _same_objects(s_real.labels, s_trans.labels):
            out["mask_mismatch"].append(tname)
    return out


__all__ = [
    "HEADLINE",
    "METRIC_NAMES",
    "average_ranks",
    "spearman",
    "kendall_tau_b",
    "rank_of",
    "image_table",
    "pooled_scores",
    "table_scores",
    "bootstrap_weights",
    "interval",
    "classify_test_sets",
    "has_synthetic_and_real",
    "compute_validity",
    "train_transfer",
    "paired_fidelity",
    "load_pairs",
]
