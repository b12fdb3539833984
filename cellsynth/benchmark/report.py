"""The benchmark report: one self-contained HTML file (images embedded as base64 PNG).

Per test dataset: a table of the pooled metrics of every segmenter, AP against the IoU threshold
(matplotlib), object counts, and overlays of each segmenter's output on a few sample images with
contours coloured by match at IoU 0.5 (green: true positive, red: false positive, yellow: missed
true object); then the segmenters (status, error, options, budget, times) and the datasets'
provenance (``manifest.json`` of synthetic data, ``dataset.json`` of imported data).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np

from cellsynth.atomic import write_text
from cellsynth.benchmark import metrics
from cellsynth.errors import CellsynthError

COLOURS = {
    "tp": (40, 220, 60),
    "fp": (255, 40, 40),
    "fn": (255, 220, 0),
    "true": (0, 200, 255),
}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;
max-width:1400px}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:2em}
table{border-collapse:collapse;margin:8px 0 16px 0;font-size:0.9em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f0}td.l,th.l{text-align:left}
tr.failed td{background:#fde8e8}td.best{font-weight:bold;background:#e6f6e6}
.err{color:#b00;font-family:monospace;font-size:0.85em;text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:6px;margin-bottom:12px}
.panel{text-align:center;font-size:0.8em}.panel img{width:300px;image-rendering:pixelated;
border:1px solid #999}
pre{background:#f7f7f7;padding:8px;font-size:0.8em;overflow:auto;max-height:300px}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;
vertical-align:middle}
.muted{color:#777}
"""


# ----------------------------------------------------------------------------- images


def png_base64(rgb: np.ndarray) -> str:
    """uint8 H x W (x 3) array -> ``data:image/png;base64,...`` URI."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def display_image(image: np.ndarray) -> np.ndarray:
    """H x W (x C) image -> uint8 RGB for display (channels averaged, 1-99.8 % stretch)."""
    from cellsynth.datasets.io import image_to_float

    x = image_to_float(np.asarray(image))
    if x.ndim == 3:
        x = x[..., : 3 if x.shape[-1] >= 3 else x.shape[-1]].mean(axis=-1)
    lo, hi = np.percentile(x, (1, 99.8))
    x = np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1)
    g = np.rint(x * 255).astype(np.uint8)
    return np.stack([g, g, g], axis=-1)


def _paint(rgb: np.ndarray, labels: np.ndarray, ids, colour) -> None:
    from skimage.segmentation import find_boundaries

    if len(ids) == 0:
        return
    sel = np.where(np.isin(labels, np.asarray(ids)), labels, 0)
    rgb[find_boundaries(sel, mode="inner")] = colour


def overlay(image: np.ndarray, true: np.ndarray, pred: np.ndarray | None, thresh=0.5):
    """Contours on the image: with ``pred``, its objects green (matched at ``thresh``) or red
    (false positive) and the missed true objects yellow; without, all true objects cyan."""
    rgb = display_image(image)
    true_ids = np.unique(true)
    true_ids = true_ids[true_ids > 0]
    if pred is None:
        _paint(rgb, true, true_ids, COLOURS["true"])
        return rgb
    m = metrics.match_instances(true, pred, thresh)
    pred_ids = np.unique(pred)
    pred_ids = pred_ids[pred_ids > 0]
    _paint(rgb, true, np.setdiff1d(true_ids, m.true_ids), COLOURS["fn"])
    _paint(rgb, pred, np.setdiff1d(pred_ids, m.pred_ids), COLOURS["fp"])
    _paint(rgb, pred, m.pred_ids, COLOURS["tp"])
    return rgb


# ----------------------------------------------------------------------------- plots


def ap_plot(results: dict, dkey: str) -> str | None:
    """AP against IoU threshold for each segmenter on one dataset, as a PNG data URI."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    th = results["thresholds"]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    drawn = 0
    for sname, sres in results["segmenters"].items():
        s = sres["datasets"].get(dkey, {}).get("summary")
        if not s:
            continue
        ap = [np.nan if v is None else v for v in s["ap"]]
        ax.plot(th, ap, marker="o", ms=3, label=f"{sname} (mean {_num(s['mean_ap'])})")
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("AP = TP / (TP + FP + FN)")
    ax.set_ylim(0, 1)
    ax.set_title(f"AP against IoU threshold: {dkey}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ----------------------------------------------------------------------------- html helpers


def _num(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}f}"


def escape(x) -> str:
    return html.escape(str(x))


def html_table(header, rows, left=1, best_cols=(), row_class=None) -> str:
    """HTML table; the best (max) value of each column index in ``best_cols`` is highlighted."""
    best = {}
    for c in best_cols:
        vals = [r[c] for r in rows if isinstance(r[c], (int, float)) and r[c] == r[c]]
        if vals:
            best[c] = max(vals)
    out = ["<table><tr>"]
    out += [
        f"<th class='l'>{escape(h)}</th>" if i < left else f"<th>{escape(h)}</th>"
        for i, h in enumerate(header)
    ]
    out.append("</tr>")
    for k, r in enumerate(rows):
        cls = f" class='{row_class[k]}'" if row_class and row_class[k] else ""
        out.append(f"<tr{cls}>")
        for i, v in enumerate(r):
            classes = []
            if i < left:
                classes.append("l")
            if i in best and isinstance(v, (int, float)) and v == best[i] and len(rows) > 1:
                classes.append("best")
            c = f" class='{' '.join(classes)}'" if classes else ""
            text = _num(v) if isinstance(v, float) or v is None else escape(v)
            out.append(f"<td{c}>{text}</td>")
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def _find(folder: Path, name: str) -> Path | None:
    for suffix in (".tif", ".tiff", ".png", ".jpg", ".jpeg"):
        if (folder / f"{name}{suffix}").is_file():
            return folder / f"{name}{suffix}"
    return None


# ----------------------------------------------------------------------------- sections


def dataset_section(out_dir: Path, results: dict, dkey: str) -> str:
    from cellsynth.datasets.io import read_image, read_labels

    info = results["datasets"][dkey]
    parts = [f"<h2>Dataset {escape(dkey)}</h2>"]
    parts.append(f"<p class='muted'>{escape(info['path'])}: {info['n_images']} images</p>")
    header = [
        "segmenter",
        "status",
        "AP@0.5",
        "AP@0.75",
        "mean AP",
        "precision",
        "recall",
        "F1",
        "PQ",
        "SQ",
        "AJI",
        "fg Dice",
        "train s",
        "predict s/img",
    ]
    rows, classes = [], []
    th = results["thresholds"]
    i75 = th.index(0.75) if 0.75 in th else None
    for sname, sres in results["segmenters"].items():
        d = sres["datasets"].get(dkey, {})
        s = d.get("summary") or {}
        rows.append(
            [
                sname,
                d.get("status", "?"),
                s.get("ap50"),
                s["ap"][i75] if s and i75 is not None else None,
                s.get("mean_ap"),
                s.get("precision"),
                s.get("recall"),
                s.get("f1"),
                s.get("pq"),
                s.get("sq"),
                s.get("aji"),
                s.get("fg_dice"),
                sres.get("train_s"),
                d.get("predict_s_per_image"),
            ]
        )
        classes.append("failed" if d.get("status") != "ok" else "")
    parts.append("<h3>Pooled metrics</h3>")
    parts.append(
        "<p class='muted'>Pooled over the dataset's objects (counts summed before dividing); "
        "AP = TP/(TP+FP+FN); precision, recall, F1, PQ at IoU 0.5; AJI as in Cellpose.</p>"
    )
    parts.append(html_table(header, rows, left=2, best_cols=range(2, 12), row_class=classes))
    for sname, sres in results["segmenters"].items():
        d = sres["datasets"].get(dkey, {})
        if d.get("error"):
            parts.append(f"<p class='err'>{escape(sname)}: {escape(d['error'])}</p>")
    plot = ap_plot(results, dkey)
    if plot:
        parts.append(f"<img alt='AP against IoU threshold' src='{plot}'>")

    header = [
        "segmenter",
        "true objects",
        "predicted",
        "TP@0.5",
        "FP@0.5",
        "FN@0.5",
        "mean |count error|",
        "mean |rel. count error|",
        "mean |confluence error|",
        "mean AP (per image)",
    ]
    rows = []
    for sname, sres in results["segmenters"].items():
        s = (sres["datasets"].get(dkey) or {}).get("summary")
        if not s:
            continue
        tp = s.get("tp50")
        rows.append(
            [
                sname,
                s["n_true"],
                s["n_pred"],
                tp,
                None if tp is None else s["n_pred"] - tp,
                None if tp is None else s["n_true"] - tp,
                s.get("mean_abs_count_error"),
                s.get("mean_rel_count_error"),
                s.get("mean_abs_confluence_error"),
                s.get("image_mean_ap"),
            ]
        )
    if rows:
        parts.append("<h3>Counts</h3>")
        parts.append(html_table(header, rows))

    # overlays of the sample predictions kept by the runner
    seg_names = [s for s in results["segmenters"] if (out_dir / "samples" / s / dkey).is_dir()]
    names = sorted(
        {p.stem for s in seg_names for p in (out_dir / "samples" / s / dkey).glob("*.tif")}
    )
    if names:
        parts.append("<h3>Sample overlays</h3>")
        parts.append(
            "<p class='legend'>Contours at IoU 0.5:"
            + "".join(
                f"<span style='background:rgb{COLOURS[k]}'></span>{label}"
                for k, label in (
                    ("tp", "true positive"),
                    ("fp", "false positive"),
                    ("fn", "missed (false negative)"),
                    ("true", "ground truth"),
                )
            )
            + "</p>"
        )
    root = Path(info["path"])
    for name in names:
        img_path, mask_path = _find(root / "images", name), _find(root / "masks", name)
        if img_path is None or mask_path is None:
            parts.append(
                f"<p class='muted'>{escape(name)}: image or mask not found under {escape(root)}</p>"
            )
            continue
        try:
            image, true = read_image(img_path), read_labels(mask_path)
        except CellsynthError as exc:
            parts.append(f"<p class='err'>{escape(exc)}</p>")
            continue
        panels = [
            ("image", png_base64(display_image(image))),
            (
                f"ground truth ({int((np.unique(true) > 0).sum())})",
                png_base64(overlay(image, true, None)),
            ),
        ]
        for sname in seg_names:
            p = out_dir / "samples" / sname / dkey / f"{name}.tif"
            if not p.is_file():
                continue
            pred = read_labels(p)
            if pred.shape != true.shape:
                continue
            m = metrics.match_instances(true, pred, 0.5)
            label = f"{sname}: TP {m.tp} FP {m.fp} FN {m.fn}"
            panels.append((label, png_base64(overlay(image, true, pred))))
        parts.append(f"<h4>{escape(name)}</h4><div class='grid'>")
        for label, uri in panels:
            parts.append(
                f"<div class='panel'><img alt='{escape(label)}' src='{uri}'><br>{escape(label)}</div>"
            )
        parts.append("</div>")
    return "\n".join(parts)


def segmenter_section(results: dict) -> str:
    header = [
        "segmenter",
        "status",
        "trained",
        "from cache",
        "train s",
        "budget",
        "options",
        "error",
    ]
    rows, classes = [], []
    for sname, s in results["segmenters"].items():
        rows.append(
            [
                sname,
                s["status"],
                str(s.get("trained")),
                str(s.get("cached")),
                s.get("train_s"),
                json.dumps(s.get("budget") or {}),
                json.dumps(s.get("options") or {}),
                s.get("error") or "",
            ]
        )
        classes.append("failed" if s["status"] != "ok" else "")
    return "<h2>Segmenters</h2>" + html_table(header, rows, left=2, row_class=classes).replace(
        "<td>", "<td class='l'>"
    )


def _provenance_section(results: dict) -> str:
    parts = ["<h2>Provenance</h2>"]
    items = []
    if results.get("train"):
        items.append(("training set", results["train"]))
    items += [(f"test set {k}", v) for k, v in results["datasets"].items()]
    for title, info in items:
        parts.append(
            f"<h3>{escape(title)}</h3><p class='muted'>{escape(info['path'])}, "
            f"{info['n_images']} images"
            + (f", fingerprint {escape(info['fingerprint'])}" if info.get("fingerprint") else "")
            + "</p>"
        )
        prov = info.get("provenance") or {}
        if not prov:
            parts.append("<p class='muted'>no manifest.json or dataset.json found</p>")
        for fname, doc in prov.items():
            parts.append(
                f"<details><summary>{escape(fname)} ({escape(doc.get('path', ''))})</summary>"
                f"<pre>{escape(json.dumps(doc.get('content', doc.get('error')), indent=1))}</pre>"
                "</details>"
            )
    return "\n".join(parts)


def render_report(out_dir, results: dict) -> str:
    """The report as an HTML string (``out_dir`` holds ``samples/`` for the overlays)."""
    out_dir = Path(out_dir)
    train = results.get("train")
    if train:
        train_text = f"{escape(train['path'])} ({train['n_images']} images)"
    else:
        train_text = "none (segmenters used as they are)"
    head = (
        f"<p>cellsynth {escape(results.get('cellsynth_version', '?'))}, {escape(results.get('created'))}"
        f". Training set: {train_text}. Test sets: {escape(', '.join(results['datasets']))}.</p>"
    )
    body = [f"<h1>cellsynth segmenter benchmark</h1>{head}"]
    for dkey in results["datasets"]:
        body.append(dataset_section(out_dir, results, dkey))
    body.append(segmenter_section(results))
    body.append(_provenance_section(results))
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<title>cellsynth benchmark</title>"
        f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>"
    )


def write_report(out_dir, results: dict) -> Path:
    """Write ``out_dir/report.html`` (atomically); returns its path."""
    path = Path(out_dir) / "report.html"
    write_text(path, render_report(out_dir, results))
    return path
