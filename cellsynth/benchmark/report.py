"""The benchmark report: one self-contained HTML file (images embedded as base64 PNG).

Per test dataset: a table of the pooled metrics of every segmenter, AP against the IoU threshold
(matplotlib), object counts, and overlays of each segmenter's output on a few sample images with
contours coloured by match at IoU 0.5 (green: true positive, red: false positive, yellow: missed
true object); then, when any segmenter was trained, the learning curves (validation AP@0.5
against minutes) and the post-processing chosen on the validation slice; then the segmenters
(status, error, options, budget, times) and the datasets' provenance (``manifest.json`` of
synthetic data, ``dataset.json`` of imported data).

When the results hold a rank agreement (``results["validity"]``, see
:mod:`cellsynth.benchmark.validity`), a section "Does the synthetic benchmark agree with real
data?" follows the datasets: per (synthetic, real) pair and headline metric, a table (score and
rank on each set, synthetic/real ratio), Spearman and Kendall with their bootstrap intervals, the
flipped pairs, and a scatter plot (real score on x, synthetic on y, one labelled point per
segmenter, the identity line). When segmenters were also trained on ``--train-real``, a table of
AP(trained on synthetic) / AP(trained on real) per test set.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from cellsynth.atomic import write_text
from cellsynth.benchmark import metrics
from cellsynth.errors import CellsynthError
from cellsynth.htmlkit import (  # noqa: F401 (CSS is re-exported)
    CSS,
    display_image,
    escape,
    figure_uri,
    html_page,
    html_table,
    panel_grid,
    png_base64,
    pyplot,
)
from cellsynth.htmlkit import number as _num
from cellsynth.htmlkit import png_uri as _png_uri  # noqa: F401 (re-exported)
from cellsynth.htmlkit import pyplot as _pyplot  # noqa: F401 (re-exported)

COLOURS = {
    "tp": (40, 220, 60),
    "fp": (255, 40, 40),
    "fn": (255, 220, 0),
    "true": (0, 200, 255),
}

# ----------------------------------------------------------------------------- images


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
    plt = pyplot()
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
    return figure_uri(fig)


def _real(x) -> float | None:
    """``x`` as a finite float, or None (missing, None, NaN, not a number, bool)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def _trainings(results: dict) -> dict:
    """Segmenter name -> its ``training`` dict, for the segmenters that have one."""
    out = {}
    for sname, sres in (results.get("segmenters") or {}).items():
        t = sres.get("training") if isinstance(sres, dict) else None
        if isinstance(t, dict):
            out[sname] = t
    return out


def _curve_points(training: dict) -> list[tuple[float, float]]:
    """(minutes, val AP@0.5) of a training curve, sorted by time; unusable points dropped."""
    pts = []
    for p in training.get("curve") or []:
        if not isinstance(p, dict):
            continue
        x, y = _real(p.get("minutes")), _real(p.get("val_ap50"))
        if x is not None and y is not None:
            pts.append((x, y))
    return sorted(pts)


def curve_plot(results: dict) -> str | None:
    """Validation AP@0.5 against training minutes, one line per segmenter with a curve and its
    best checkpoint starred, as a PNG data URI (None when no segmenter has a curve)."""
    curves = {s: (_curve_points(t), t.get("best")) for s, t in _trainings(results).items()}
    curves = {s: c for s, c in curves.items() if c[0]}
    if not curves:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    starred = False
    for sname, (pts, best) in curves.items():
        (line,) = ax.plot(*zip(*pts), marker="o", ms=3, label=sname)
        bx = _real(best.get("minutes")) if isinstance(best, dict) else None
        by = _real(best.get("val_ap50")) if isinstance(best, dict) else None
        if bx is not None and by is not None:
            ax.plot([bx], [by], marker="*", ms=14, color=line.get_color(), mec="k", ls="none")
            starred = True
    if starred:
        ax.plot([], [], marker="*", ms=10, color="w", mec="k", ls="none", label="best checkpoint")
    ax.set_xlabel("training time (minutes)")
    ax.set_ylabel("validation AP@0.5")
    ax.set_ylim(0, 1)
    ax.set_title("Validation AP@0.5 during training", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure_uri(fig)


METRIC_LABELS = {"ap50": "AP@0.5", "mean_ap": "mean AP (IoU 0.50:0.95)", "f1": "F1", "pq": "PQ"}


def agreement_plot(comparison: dict, metric: str) -> str | None:
    """Real score (x) against synthetic score (y) of each segmenter, labelled, with bootstrap
    error bars and the identity line, as a PNG data URI (None without points)."""
    block = (comparison.get("metrics") or {}).get(metric) or {}
    pts = []
    for sname, sc in (block.get("scores") or {}).items():
        x, y = _real(sc.get("real")), _real(sc.get("synthetic"))
        if x is not None and y is not None:
            pts.append((sname, x, y, sc.get("real_ci"), sc.get("synthetic_ci")))
    if not pts:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.4), dpi=100)
    values = [v for _, x, y, _, _ in pts for v in (x, y)]
    for sname, x, y, cx, cy in pts:
        xerr = yerr = None
        if isinstance(cx, dict):
            xerr = [[max(x - cx["low"], 0.0)], [max(cx["high"] - x, 0.0)]]
            values += [cx["low"], cx["high"]]
        if isinstance(cy, dict):
            yerr = [[max(y - cy["low"], 0.0)], [max(cy["high"] - y, 0.0)]]
            values += [cy["low"], cy["high"]]
        ax.errorbar([x], [y], xerr=xerr, yerr=yerr, fmt="o", ms=5, capsize=2, elinewidth=0.8)
        ax.annotate(sname, (x, y), xytext=(4, 4), textcoords="offset points", fontsize=8)
    lo, hi = min(values), max(values)
    pad = max(0.05 * (hi - lo), 0.02)
    lo, hi = max(lo - pad, 0.0), min(hi + pad, 1.02)
    ax.plot([lo, hi], [lo, hi], color="0.5", ls="--", lw=1, label="synthetic = real")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    name = METRIC_LABELS.get(metric, metric)
    ax.set_xlabel(f"{name} on {comparison.get('real')} (real)", fontsize=8)
    ax.set_ylabel(f"{name} on {comparison.get('synthetic')} (synthetic)", fontsize=8)
    rho = (block.get("spearman") or {}).get("value")
    ax.set_title(f"{name}: Spearman {_num(_real(rho), 2)}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return figure_uri(fig)


def _rank_text(rank) -> str:
    """1, 2, 2.5 ... ("–" when missing)."""
    r = _real(rank)
    return "–" if r is None else f"{r:g}"


def _with_ci(stat: dict | None, digits: int = 3) -> str:
    """ "0.800 [0.400, 1.000]" from ``{"value", "ci": {"low", "high"}}``."""
    stat = stat or {}
    text = _num(_real(stat.get("value")), digits)
    ci = stat.get("ci")
    if isinstance(ci, dict):
        text += f" [{_num(_real(ci.get('low')), digits)}, {_num(_real(ci.get('high')), digits)}]"
    return text


def validity_section(results: dict) -> str:
    """ "Does the synthetic benchmark agree with real data?" ("" when the results hold no
    rank agreement)."""
    v = results.get("validity")
    if not isinstance(v, dict):
        return ""
    parts = ["<h2>Does the synthetic benchmark agree with real data?</h2>"]
    if v.get("error"):
        parts.append(f"<p class='err'>rank agreement not computed: {escape(v['error'])}</p>")
        return "\n".join(parts)
    method = v.get("method") or {}
    reasons = v.get("reasons") or {}
    syn = ", ".join(f"{k} ({reasons.get(k, 'flagged')})" for k in v.get("synthetic") or [])
    parts.append(
        f"<p>Synthetic test sets: {escape(syn)}. Real test sets: "
        f"{escape(', '.join(v.get('real') or []))}. Ranks: 1 = best, ties share the average "
        "rank. Intervals: "
        f"{100 * (method.get('confidence') or 0.95):g} % percentile bootstrap, "
        f"{method.get('n_boot', '?')} resamples of each test set's images (seed "
        f"{method.get('seed', '?')}), pooled metrics recomputed from per-image counts.</p>"
    )
    for comp in v.get("comparisons") or []:
        syn_key, real_key = comp.get("synthetic"), comp.get("real")
        parts.append(f"<h3>{escape(syn_key)} (synthetic) against {escape(real_key)} (real)</h3>")
        n = comp.get("n_images") or {}
        parts.append(
            f"<p class='muted'>{n.get(syn_key, '?')} synthetic and {n.get(real_key, '?')} real "
            f"images; {len(comp.get('segmenters') or [])} segmenters</p>"
        )
        for sname, why in (comp.get("skipped") or {}).items():
            parts.append(f"<p class='muted'>{escape(sname)} left out: {escape(why)}</p>")
        for metric in v.get("metrics") or []:
            block = (comp.get("metrics") or {}).get(metric)
            if not block:
                continue
            name = METRIC_LABELS.get(metric, metric)
            header = [
                "segmenter",
                f"{name} synthetic",
                "rank synthetic",
                f"{name} real",
                "rank real",
                "synthetic / real",
                "ratio interval",
            ]
            rows = []
            order = block.get("ranking_real") or list(block.get("scores") or {})
            for sname in order:
                sc = block["scores"][sname]
                ci = sc.get("ratio_ci")
                ci_text = (
                    f"[{_num(_real(ci.get('low')))}, {_num(_real(ci.get('high')))}]"
                    if isinstance(ci, dict)
                    else "–"
                )
                rows.append(
                    [
                        sname,
                        _real(sc.get("synthetic")),
                        _rank_text(sc.get("rank_synthetic")),
                        _real(sc.get("real")),
                        _rank_text(sc.get("rank_real")),
                        _real(sc.get("ratio")),
                        ci_text,
                    ]
                )
            parts.append(f"<h4>{escape(name)}</h4>")
            parts.append(html_table(header, rows, best_cols=(1, 3)))
            flips = block.get("flips") or []
            flip_text = (
                "; ".join(
                    f"{f['better_on_synthetic']} above {f['better_on_real']} on synthetic, below "
                    f"on real (in {_num(_real(f.get('bootstrap_share')), 2)} of the resamples)"
                    for f in flips
                )
                or "none"
            )
            parts.append(
                f"<p>Spearman ρ = {escape(_with_ci(block.get('spearman')))}; Kendall τ<sub>b</sub>"
                f" = {escape(_with_ci(block.get('kendall')))}. Order flips: {escape(flip_text)}."
                "</p>"
            )
            plot = agreement_plot(comp, metric)
            if plot:
                parts.append(
                    f"<img alt='{escape(name)}: synthetic against real score' src='{plot}'>"
                )
        parts.append(error_profile_table(comp))
    return "\n".join(parts)


def error_profile_table(comp: dict) -> str:
    """Where the scores differ: each segmenter's extra and missed objects (IoU 0.5) on the
    synthetic and the real set ("" without an error profile in the results)."""
    errors = comp.get("errors") or {}
    if not errors:
        return ""
    header = ["segmenter"] + [
        f"{what} {side}"
        for what in ("extra", "missed", "predicted / true")
        for side in ("synthetic", "real")
    ]
    rows = []
    for sname, e in errors.items():
        s, r = e.get("synthetic") or {}, e.get("real") or {}
        rows.append(
            [sname]
            + [_real(x.get(k)) for k in ("extra", "missed", "pred_per_true") for x in (s, r)]
        )
    return (
        "<h4>Error profile (IoU 0.5)</h4><p class='muted'>extra: share of the predicted objects "
        "that match no true object (split or invented nuclei); missed: share of the true "
        "objects that no prediction matches; predicted / true: objects predicted per true "
        "object. A segmenter whose profile changes between the sets is the one the synthetic "
        "images treat differently.</p>" + html_table(header, rows)
    )


def train_transfer_section(results: dict) -> str:
    """AP(trained on synthetic) / AP(trained on real) per segmenter and test set ("" when no
    segmenter was trained on ``--train-real``)."""
    transfer = results.get("train_transfer")
    if not isinstance(transfer, dict) or not transfer:
        return ""
    train = (results.get("train") or {}).get("path", "--train")
    train_real = (results.get("train_real") or {}).get("path", "--train-real")
    parts = ["<h2>Trained on synthetic, tested on real</h2>"]
    parts.append(
        f"<p class='muted'>Each segmenter trained on {escape(train)} (synthetic) and on "
        f"{escape(train_real)} (real), with the same options and budget, tested on the same test "
        "sets; ratio = AP(trained on synthetic) / AP(trained on real).</p>"
    )
    for dkey in results.get("datasets") or {}:
        header = [
            "segmenter",
            "AP@0.5 trained synthetic",
            "AP@0.5 trained real",
            "ratio AP@0.5",
            "mean AP trained synthetic",
            "mean AP trained real",
            "ratio mean AP",
        ]
        rows = []
        for sname, per in transfer.items():
            d = (per or {}).get(dkey) or {}
            figures = [
                _real((d.get(metric) or {}).get(key))
                for metric in ("ap50", "mean_ap")
                for key in ("synthetic", "real", "ratio")
            ]
            rows.append([sname, *figures])
        parts.append(f"<h3>Test set {escape(dkey)}</h3>")
        parts.append(html_table(header, rows))
    for sname, sres in (results.get("segmenters") or {}).items():
        other = sres.get("train_real") if isinstance(sres, dict) else None
        if isinstance(other, dict) and other.get("error"):
            parts.append(
                f"<p class='err'>{escape(sname)} (trained on real): {escape(other['error'])}</p>"
            )
    return "\n".join(parts)


# ----------------------------------------------------------------------------- html helpers


def _find(folder: Path, name: str) -> Path | None:
    for suffix in (".tif", ".tiff", ".png", ".jpg", ".jpeg"):
        if (folder / f"{name}{suffix}").is_file():
            return folder / f"{name}{suffix}"
    return None


# ----------------------------------------------------------------------------- sections


def dataset_section(out_dir: Path, results: dict, dkey: str) -> str:
    """The section of one test dataset: pooled metrics, AP plot, counts, sample overlays."""
    info = results["datasets"][dkey]
    parts = [f"<h2>Dataset {escape(dkey)}</h2>"]
    parts.append(f"<p class='muted'>{escape(info['path'])}: {info['n_images']} images</p>")
    parts += _metrics_part(results, dkey)
    parts += _counts_part(results, dkey)
    parts += _overlays_part(out_dir, results, dkey)
    return "\n".join(parts)


def _metrics_part(results: dict, dkey: str) -> list[str]:
    """The pooled metrics table of every segmenter, its errors and the AP plot."""
    parts = []
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
    return parts


def _counts_part(results: dict, dkey: str) -> list[str]:
    """Object counts (true, predicted, TP/FP/FN at IoU 0.5, count errors)."""
    parts = []
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
    return parts


def _overlays_part(out_dir: Path, results: dict, dkey: str) -> list[str]:
    """Overlays of the sample predictions the runner kept, per sample image."""
    from cellsynth.datasets.io import read_image, read_labels

    info = results["datasets"][dkey]
    parts = []
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
        parts.append(f"<h4>{escape(name)}</h4>{panel_grid(panels)}")
    return parts


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


def _param_text(v) -> str:
    if isinstance(v, float) and not isinstance(v, bool):
        return f"{v:g}"
    return str(v)


def training_section(results: dict) -> str:
    """Learning curves and the post-processing chosen on the validation slice ("" when no
    segmenter has a ``training`` dict)."""
    trainings = _trainings(results)
    if not trainings:
        return ""
    parts = ["<h2>Training and validation</h2>"]
    parts.append(
        "<p class='muted'>A validation slice is split off the training split with a fixed seed; "
        "each segmenter keeps its checkpoint with the best validation AP@0.5, and its "
        "post-processing parameters are chosen on the same validation slice.</p>"
    )
    plot = curve_plot(results)
    if plot:
        parts.append(f"<img alt='validation AP@0.5 against training minutes' src='{plot}'>")
    header = [
        "segmenter",
        "precision",
        "device",
        "budget (min)",
        "trained (min)",
        "steps",
        "epochs",
        "validation images",
        "best val AP@0.5",
        "best at (min)",
        "post-processing val AP@0.5 (default → chosen)",
        "chosen post-processing",
    ]
    rows = []
    for sname, t in trainings.items():
        val = t.get("validation") if isinstance(t.get("validation"), dict) else {}
        n_val = val.get("n_images")
        extra = []
        if _real(val.get("fraction")) is not None:
            extra.append(f"{100 * val['fraction']:g} %")
        if val.get("seed") is not None:
            extra.append(f"seed {val['seed']}")
        if n_val is not None and extra:
            n_val = f"{n_val} ({', '.join(extra)})"
        best = t.get("best") if isinstance(t.get("best"), dict) else {}
        post = t.get("postprocess") if isinstance(t.get("postprocess"), dict) else {}
        post_ap = "–"
        if post:
            default, chosen = _real(post.get("default_val_ap50")), _real(post.get("val_ap50"))
            post_ap = f"{_num(default)} → {_num(chosen)}"
            if post.get("tried") is not None:
                post_ap += f" ({post['tried']} tried)"
        params = post.get("params") if isinstance(post.get("params"), dict) else {}
        seconds = _real(t.get("seconds"))
        rows.append(
            [
                sname,
                t.get("precision"),
                t.get("device"),
                _real(t.get("budget_minutes")),
                None if seconds is None else seconds / 60,
                t.get("steps"),
                _real(t.get("epochs")),
                n_val,
                _real(best.get("val_ap50")),
                _real(best.get("minutes")),
                post_ap,
                ", ".join(f"{k}={_param_text(v)}" for k, v in params.items()) or "–",
            ]
        )
    parts.append(html_table(header, rows, best_cols=(8,), left_cols=(11,)))
    return "\n".join(parts)


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
    for extra in (validity_section(results), train_transfer_section(results)):
        if extra:
            body.append(extra)
    training = training_section(results)
    if training:
        body.append(training)
    body.append(segmenter_section(results))
    body.append(_provenance_section(results))
    return html_page("cellsynth benchmark", "".join(body))


def write_report(out_dir, results: dict) -> Path:
    """Write ``out_dir/report.html`` (atomically); returns its path."""
    path = Path(out_dir) / "report.html"
    write_text(path, render_report(out_dir, results))
    return path
