"""Mask codec round trip on the real masks: encode -> decode -> AP against the labels.

Prints JSON: for DSB2018 (train + test) and LIVECell val, for each encoding (fbd, binary) and
each geometry (full resolution; 128 and 256 with center-crop and tiles, i.e. exactly what
``cellsynth dataset pack`` does: nearest-neighbour crop/resize, then encode), the pooled
AP = TP / (TP + FP + FN) at IoU 0.5 and 0.75 (Cellpose definition, one-to-one matching),
the number of items and cells, and the encode / decode time per item.

    .venv/bin/python perf/codec_roundtrip.py [--data ../shared/data] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from cellsynth.tools.codec import decode_mask, downscale_encode, encode_mask

THRESHOLDS = (0.5, 0.75)


def _ap_fallback(true_list, pred_list, thresholds):
    """Hungarian IoU matching (only used when cellsynth.benchmark.metrics is missing)."""
    from scipy.optimize import linear_sum_assignment

    n = len(true_list)
    tp = np.zeros((n, len(thresholds)), np.int64)
    fp, fn = tp.copy(), tp.copy()
    for k, (t, p) in enumerate(zip(true_list, pred_list)):
        nt, np_ = int(t.max()), int(p.max())
        inter = np.zeros((nt + 1, np_ + 1), np.int64)
        np.add.at(inter, (t.ravel(), p.ravel()), 1)
        st, sp = inter.sum(1, keepdims=True), inter.sum(0, keepdims=True)
        iou = (inter / np.maximum(st + sp - inter, 1))[1:, 1:]
        for j, th in enumerate(thresholds):
            if iou.size:
                r, c = linear_sum_assignment(-(iou >= th) * (iou + 1))
                tp[k, j] = int((iou[r, c] >= th).sum())
            fp[k, j], fn[k, j] = np_ - tp[k, j], nt - tp[k, j]
    return None, tp, fp, fn


def average_precision(true_list, pred_list, thresholds):
    try:
        from cellsynth.benchmark.metrics import average_precision as ap
    except ImportError:
        ap = _ap_fallback
    return ap(true_list, pred_list, thresholds)


def load_dsb(root: Path) -> list[np.ndarray]:
    from cellsynth.datasets.io import read_labels

    return [
        read_labels(p)
        for s in ("train", "test")
        for p in sorted((root / s / "masks").glob("*.tif"))
    ]


def load_livecell(root: Path) -> list[np.ndarray]:
    json_path, images = root / "livecell_coco_val.json", root / "images"
    try:
        from cellsynth.datasets.coco import load_coco_samples
    except ImportError:
        load_coco_samples = None
    if load_coco_samples is not None:
        samples, _ = load_coco_samples(json_path, images)
        return [s.labels for s in samples]
    # fallback: rasterise the polygons (later annotations drawn over earlier ones)
    from skimage.draw import polygon

    doc = json.loads(json_path.read_text())
    out = []
    for im in sorted(doc["images"], key=lambda d: d["file_name"]):
        labels = np.zeros((im["height"], im["width"]), np.uint16)
        k = 0
        for a in doc["annotations"]:
            if a["image_id"] != im["id"]:
                continue
            k += 1
            for poly in a["segmentation"]:
                xy = np.asarray(poly).reshape(-1, 2)
                rr, cc = polygon(xy[:, 1], xy[:, 0], labels.shape)
                labels[rr, cc] = k
        out.append(labels)
    return out


def run(masks: list[np.ndarray], encoding: str, size, transform: str) -> dict:
    true, pred = [], []
    t_enc = t_dec = 0.0
    for labels in masks:
        t0 = time.perf_counter()
        if size is None:
            items = [(None, labels, encode_mask(labels, encoding))]
        else:
            items = downscale_encode(labels, size, encoding, transform)
        t1 = time.perf_counter()
        for _, small, enc in items:
            true.append(small)
            pred.append(decode_mask(enc, encoding))
        t_enc += t1 - t0
        t_dec += time.perf_counter() - t1
    _, tp, fp, fn = average_precision(true, pred, THRESHOLDS)
    tp, fp, fn = tp.sum(0), fp.sum(0), fn.sum(0)
    res = {
        f"ap{int(t * 100)}": round(float(tp[j] / max(tp[j] + fp[j] + fn[j], 1)), 4)
        for j, t in enumerate(THRESHOLDS)
    }
    res.update(
        items=len(true),
        cells=int(tp[0] + fn[0]),
        fp50=int(fp[0]),
        fn50=int(fn[0]),
        encode_ms_per_image=round(1000 * t_enc / max(len(masks), 1), 2),
        decode_ms_per_item=round(1000 * t_dec / max(len(true), 1), 2),
    )
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    )
    ap.add_argument("--quick", action="store_true", help="DSB train only, first 40 masks")
    args = ap.parse_args(argv)
    data = Path(args.data)
    sets = {}
    if (data / "dsb2018-fluo").is_dir():
        sets["dsb2018"] = load_dsb(data / "dsb2018-fluo")[: 40 if args.quick else None]
    if (data / "livecell-val").is_dir() and not args.quick:
        sets["livecell_val"] = load_livecell(data / "livecell-val")
    if not sets:
        print(json.dumps({"error": f"no data under {data}"}))
        return 1
    geometries = [("full", None, None)] + [
        (f"{t}-{s}", s, t) for s in (128, 256) for t in ("center-crop", "tiles")
    ]
    out = {"thresholds": list(THRESHOLDS), "results": {}}
    for name, masks in sets.items():
        out["results"][name] = {"images": len(masks)}
        for enc in ("fbd", "binary"):
            for geo, size, transform in geometries:
                out["results"][name][f"{enc}/{geo}"] = run(masks, enc, size, transform)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
