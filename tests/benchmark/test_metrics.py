"""Metrics: hand-computed cases, Cellpose as the reference for AP and AJI, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.segmentation import expand_labels, relabel_sequential

from cellsynth.benchmark import metrics
from cellsynth.errors import CellsynthError


def case_one():
    """8 x 10 image: one exact match, one half-size match (IoU 0.5), one FN, one FP."""
    true = np.zeros((8, 10), np.uint16)
    true[0:4, 0:4] = 1  # 16 px
    true[0:4, 6:10] = 2  # 16 px
    true[6:8, 0:2] = 3  # 4 px, missed
    pred = np.zeros((8, 10), np.uint16)
    pred[0:4, 0:4] = 5  # == true 1, IoU 1
    pred[0:4, 6:8] = 7  # half of true 2, IoU 8/16 = 0.5
    pred[6:8, 8:10] = 9  # nothing there, FP
    return true, pred


def case_two():
    """One true object split into two halves: only one half may match (one-to-one)."""
    true = np.zeros((2, 4), np.uint16)
    true[0, :] = 1
    pred = np.zeros((2, 4), np.uint16)
    pred[0, :2] = 1
    pred[0, 2:] = 2
    return true, pred


def case_three():
    """1 x 20 strip where the best pair (A, X) blocks a second match: the maximum one-to-one
    matching at IoU >= 0.3 is (A, Y) + (B, X), two pairs."""
    true = np.zeros((1, 20), np.uint16)
    true[0, 0:10] = 1  # A
    true[0, 10:20] = 2  # B
    pred = np.zeros((1, 20), np.uint16)
    pred[0, 5:15] = 1  # X: IoU 5/15 with A and with B
    pred[0, 0:3] = 2  # Y: IoU 3/10 with A
    return true, pred


def test_case_one_by_hand():
    true, pred = case_one()
    m = metrics.match_instances(true, pred, 0.5)
    assert (m.tp, m.fp, m.fn) == (2, 1, 1)
    assert sorted(zip(m.true_ids.tolist(), m.pred_ids.tolist())) == [(1, 5), (2, 7)]
    assert sorted(m.ious.tolist()) == [0.5, 1.0]
    assert m.ap == pytest.approx(0.5)
    assert m.precision == pytest.approx(2 / 3) and m.recall == pytest.approx(2 / 3)
    assert m.f1 == pytest.approx(2 / 3)
    assert m.sq == pytest.approx(0.75) and m.rq == pytest.approx(2 / 3)
    assert m.pq == pytest.approx(0.5)
    assert metrics.panoptic_quality(true, pred) == pytest.approx((0.5, 0.75, 2 / 3))

    ap, tp, fp, fn = metrics.average_precision(true, pred, [0.5, 0.55, 1.0])
    np.testing.assert_array_equal(tp, [2, 1, 1])
    np.testing.assert_array_equal(fp, [1, 2, 2])
    np.testing.assert_array_equal(fn, [1, 2, 2])
    np.testing.assert_allclose(ap, [0.5, 0.2, 0.2])

    # AJI: intersections 16 + 8 over a foreground union of 36 + 28 - 24 = 40
    assert metrics.aggregated_jaccard_index(true, pred) == pytest.approx(24 / 40)
    dice, iou = metrics.foreground_scores(true, pred)
    assert dice == pytest.approx(48 / 64) and iou == pytest.approx(24 / 40)

    r = metrics.image_metrics(true, pred)
    assert r["n_true"] == 3 and r["n_pred"] == 3 and r["count_error"] == 0
    assert r["confluence_true"] == pytest.approx(36 / 80)
    assert r["confluence_pred"] == pytest.approx(28 / 80)
    assert r["confluence_error"] == pytest.approx(-0.1)
    assert r["ap50"] == pytest.approx(0.5) and r["pq"] == pytest.approx(0.5)
    assert r["tp"][:2] == [2, 1] and r["mean_ap"] == pytest.approx((0.5 + 9 * 0.2) / 10)


def test_case_two_is_one_to_one():
    true, pred = case_two()
    for th in (0.3, 0.5):
        m = metrics.match_instances(true, pred, th)
        assert (m.tp, m.fp, m.fn) == (1, 1, 0)
    assert metrics.match_instances(true, pred, 0.51).tp == 0
    assert metrics.aggregated_jaccard_index(true, pred) == pytest.approx(2 / 4)


def test_case_three_maximum_matching():
    true, pred = case_three()
    m = metrics.match_instances(true, pred, 0.3)
    assert m.tp == 2
    assert sorted(zip(m.true_ids.tolist(), m.pred_ids.tolist())) == [(1, 2), (2, 1)]
    assert metrics.match_instances(true, pred, 0.32).tp == 1


def test_summarize_pools_counts():
    t1, p1 = case_one()
    t2, p2 = case_two()
    rows = [metrics.image_metrics(t1, p1), metrics.image_metrics(t2, p2)]
    s = metrics.summarize(rows)
    assert s["n_images"] == 2 and s["n_true"] == 4 and s["n_pred"] == 5
    # pooled at 0.5: TP 3, FP 2, FN 1
    assert s["ap50"] == pytest.approx(3 / 6) and s["ap"][0] == pytest.approx(3 / 6)
    assert s["precision"] == pytest.approx(3 / 5) and s["recall"] == pytest.approx(3 / 4)
    assert s["f1"] == pytest.approx(6 / 9)
    assert s["sq"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert s["aji"] == pytest.approx((24 + 2) / (40 + 4))
    assert s["image_ap50"] == pytest.approx(0.5)
    assert s["mean_abs_count_error"] == pytest.approx(0.5)
    with pytest.raises(CellsynthError):
        metrics.summarize([])


def test_empty_images():
    empty = np.zeros((6, 6), np.uint16)
    true, _ = case_two()
    ap, tp, fp, fn = metrics.average_precision([empty], [empty], [0.5])
    assert np.isnan(ap[0, 0]) and tp[0, 0] == 0
    ap, tp, fp, fn = metrics.average_precision(true, np.zeros_like(true), [0.5])
    assert ap[0] == 0 and fn[0] == 1 and fp[0] == 0
    assert np.isnan(metrics.aggregated_jaccard_index(empty, empty))
    r = metrics.image_metrics(true, np.zeros_like(true))
    assert r["pq"] == 0 and r["recall"] == 0 and np.isnan(r["precision"])


def test_ids_and_dtypes_do_not_matter():
    true, pred = case_one()
    base = metrics.image_metrics(true, pred)
    gapped = metrics.image_metrics(true.astype(np.uint32) * 1000, pred.astype(np.int64) + 0)
    assert gapped["tp"] == base["tp"] and gapped["aji"] == pytest.approx(base["aji"])
    huge = np.where(pred > 0, pred.astype(np.uint32) + 4_000_000_000, 0)  # sort-based path
    assert metrics.image_metrics(true, huge)["tp"] == base["tp"]
    assert metrics.image_metrics(true.astype(float), pred)["tp"] == base["tp"]


def random_labels(rng, shape, n, radius):
    seeds = np.zeros(shape, np.int32)
    idx = rng.choice(shape[0] * shape[1], n, replace=False)
    seeds.flat[idx] = np.arange(1, n + 1)
    return relabel_sequential(expand_labels(seeds, radius))[0]


def perturbed(rng, labels):
    p = expand_labels(labels, int(rng.integers(0, 3)))
    p = np.roll(p, tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
    p[np.isin(p, rng.choice(max(int(p.max()), 1), 2) + 1)] = 0
    return relabel_sequential(p)[0]


def _assert_same_as_cellpose(cp_metrics, trues, preds, th):
    """Our average precision (with its TP/FP/FN) and AJI equal Cellpose's on the same masks."""
    ours = metrics.average_precision(trues, preds, th)
    theirs = cp_metrics.average_precision(trues, preds, threshold=th)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(
        metrics.aggregated_jaccard_index(trues, preds),
        cp_metrics.aggregated_jaccard_index(trues, preds),
        rtol=1e-12,
    )


def test_equals_cellpose_on_random_masks():
    cp_metrics = pytest.importorskip("cellpose.metrics")
    rng = np.random.default_rng(1)
    th = [round(0.05 * k, 2) for k in range(1, 20)]  # low thresholds make pairs compete
    trues, preds = [], []
    for k in range(30):
        t = random_labels(rng, (48, 64), int(rng.integers(1, 40)), int(rng.integers(2, 8)))
        if k % 2:
            p = perturbed(rng, t)
        else:
            p = random_labels(rng, (48, 64), int(rng.integers(1, 40)), int(rng.integers(2, 8)))
        trues.append(t)
        preds.append(p)
    _assert_same_as_cellpose(cp_metrics, trues, preds, th)


def test_equals_cellpose_on_real_masks(dsb2018_dir):
    cp_metrics = pytest.importorskip("cellpose.metrics")
    from cellsynth.datasets.io import read_labels

    rng = np.random.default_rng(2)
    files = sorted((dsb2018_dir / "test" / "masks").glob("*.tif"))[:12]
    trues = [relabel_sequential(read_labels(f))[0] for f in files]
    preds = [perturbed(rng, t) for t in trues]
    th = list(metrics.AP_THRESHOLDS)
    _assert_same_as_cellpose(cp_metrics, trues, preds, th)


def test_bad_input():
    true, pred = case_one()
    with pytest.raises(CellsynthError, match="same size"):
        metrics.match_instances(true, pred[:, :5])
    with pytest.raises(CellsynthError, match="2-D"):
        metrics.match_instances(true[None], pred[None])
    with pytest.raises(CellsynthError, match="integers"):
        metrics.match_instances(true, pred + 0.5)
    with pytest.raises(CellsynthError, match=">= 0"):
        metrics.match_instances(true, pred.astype(np.int32) - 1)
    with pytest.raises(CellsynthError, match="boolean"):
        metrics.match_instances(true, pred > 0)
    with pytest.raises(CellsynthError, match="predictions"):
        metrics.average_precision([true, true], [pred])
    with pytest.raises(CellsynthError, match="thresholds"):
        metrics.average_precision([true], [pred], [0.0, 0.5])
    with pytest.raises(CellsynthError, match="image 1"):
        metrics.average_precision([true, true], [pred, pred[:3]])
