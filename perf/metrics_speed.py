"""Speed of the AP metric against ``cellpose.metrics.average_precision`` (prints JSON).

A LIVECell-sized image (704 x 520) with ``--objects`` touching objects and a prediction made from
it by growing, shifting and dropping objects; both implementations compute AP at the ten
thresholds 0.50:0.05:0.95 (and AJI) on the same pair; the best of ``--repeats`` runs is reported.

    python perf/metrics_speed.py [--objects 1500] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from skimage.segmentation import expand_labels, relabel_sequential

from cellsynth.benchmark import metrics


def make_pair(n_objects: int, seed: int = 0, shape=(520, 704)):
    """Ground truth of ``n_objects`` Voronoi-like touching cells, and a perturbed prediction."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.int32)
    idx = rng.choice(shape[0] * shape[1], n_objects, replace=False)
    seeds.flat[idx] = np.arange(1, n_objects + 1)
    true = expand_labels(seeds, 12)
    pred = np.roll(expand_labels(true, 1), (1, 2), axis=(0, 1))
    drop = rng.choice(n_objects, n_objects // 20, replace=False) + 1
    pred[np.isin(pred, drop)] = 0
    return relabel_sequential(true)[0], relabel_sequential(pred)[0]


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from cellpose import metrics as cp_metrics

    true, pred = make_pair(args.objects)
    th = list(metrics.AP_THRESHOLDS)
    ours = metrics.average_precision([true], [pred], th)
    theirs = cp_metrics.average_precision([true], [pred], threshold=th)  # also compiles numba
    same_ap = all(np.allclose(a, b, equal_nan=True) for a, b in zip(ours, theirs))
    aji_ours = metrics.aggregated_jaccard_index([true], [pred])
    aji_theirs = cp_metrics.aggregated_jaccard_index([true], [pred])

    t_ours = best_time(lambda: metrics.average_precision([true], [pred], th), args.repeats)
    t_cp = best_time(
        lambda: cp_metrics.average_precision([true], [pred], threshold=th), args.repeats
    )
    t_aji = best_time(lambda: metrics.aggregated_jaccard_index([true], [pred]), args.repeats)
    t_aji_cp = best_time(lambda: cp_metrics.aggregated_jaccard_index([true], [pred]), args.repeats)
    t_all = best_time(lambda: metrics.image_metrics(true, pred), args.repeats)
    print(
        json.dumps(
            {
                "image": list(true.shape),
                "n_true": int(true.max()),
                "n_pred": int(pred.max()),
                "thresholds": len(th),
                "ap_equal_to_cellpose": bool(same_ap),
                "aji_equal_to_cellpose": bool(np.allclose(aji_ours, aji_theirs)),
                "ap50": float(ours[0][0, 0]),
                "cellsynth_ap_s": round(t_ours, 5),
                "cellpose_ap_s": round(t_cp, 5),
                "ap_speedup": round(t_cp / t_ours, 2),
                "cellsynth_aji_s": round(t_aji, 5),
                "cellpose_aji_s": round(t_aji_cp, 5),
                "aji_speedup": round(t_aji_cp / t_aji, 2),
                "cellsynth_image_metrics_s": round(t_all, 5),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
