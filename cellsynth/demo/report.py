"""The demo's report: ``OUT/report.html``, one self-contained page that leads with the answer
(which segmenter to trust on the real images, how sure, how well the synthetic benchmark agrees,
the demo's goals), then the evidence: stages, synthetic images and puncta next to real ones, the
mask realism, the benchmark with its rank agreement (the benchmark report's own sections), the
fine-tuning curves and before/after grids, and any errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cellsynth import __version__, htmlkit
from cellsynth.atomic import write_text
from cellsynth.htmlkit import escape


def curves_uri(stats_files: dict) -> str | None:
    """Loss curves of each run's stats.jsonl (keys containing 'loss') as one PNG data URI."""
    from cellsynth.training.logging import read_stats

    runs = {k: read_stats(v) for k, v in stats_files.items() if v is not None}
    runs = {k: v for k, v in runs.items() if v}
    if not runs:
        return None
    plt = htmlkit.pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 3.4), squeeze=False)
    for ax, (title, recs) in zip(axes[0], runs.items()):
        keys = sorted({k for r in recs for k in r if "loss" in k.lower() or k[:2] in ("G_", "D_")})
        for k in keys[:8]:
            pts = [(r["step"], r[k]) for r in recs if k in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k, lw=1)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=6)
    return htmlkit.figure_uri(fig)


def file_uri(path: Path | None) -> str | None:
    """An image file as a PNG data URI (stretched for display unless uint8); None if absent."""
    from cellsynth.datasets.io import read_image

    if path is None or not Path(path).is_file():
        return None
    img = read_image(path)
    return htmlkit.png_base64(img if img.dtype == np.uint8 else htmlkit.display_image(img))


def _mark_spots(rgb: np.ndarray, csv: Path) -> int:
    """Draw the puncta of a spots CSV on ``rgb``; returns how many there are."""
    from cellsynth.tools.points import spots_from_csv

    pts = spots_from_csv(csv.read_text())
    for x, y in zip(np.asarray(pts["x"]), np.asarray(pts["y"])):
        yy, xx = int(round(float(y))), int(round(float(x)))
        if 0 <= yy < rgb.shape[0] and 0 <= xx < rgb.shape[1]:
            rgb[yy, xx] = (255, 60, 200)
    return len(pts)


def sample_panels(split_dir: Path, k: int, spots: bool) -> list[tuple[str, str]]:
    """(caption, data URI) of image / image with mask contours and puncta, for k samples."""
    from skimage.segmentation import find_boundaries

    from cellsynth.datasets.canonical import CanonicalDataset

    ds = CanonicalDataset(split_dir)
    panels = []
    for i in range(min(k, len(ds))):
        s = ds[i]
        rgb = htmlkit.display_image(s.image)
        over = rgb.copy()
        over[find_boundaries(s.labels, mode="inner")] = (0, 200, 255)
        n_spots = 0
        csv = split_dir / "spots" / f"{s.name}.csv"
        if spots and csv.is_file():
            n_spots = _mark_spots(over, csv)
        n = int(len(np.unique(s.labels)) - (1 if (s.labels == 0).any() else 0))
        cap = f"{s.name}: {n} cells" + (f", {n_spots} puncta" if spots else "")
        panels.append((cap + " (image)", htmlkit.png_base64(rgb)))
        panels.append(
            (
                cap + " (mask contours" + (", puncta" if spots else "") + ")",
                htmlkit.png_base64(over),
            )
        )
    return panels


FINETUNE_NOTE = (
    "<p>What this shows: the shipped models train here, from their own weights, on the real "
    "training images, and their losses stay finite. What it cannot show: a few minutes of "
    "fine-tuning on a CPU do not make models better that were trained far longer (see their "
    "cards: <code>cellsynth models show dsb2018-nuclei</code>); compare the grids for drift. "
    "The synthetic data and the benchmark above use the shipped models, not these.</p>"
)


def _answer_section(pipe, facts: dict) -> list[tuple[str, str | None]]:
    from cellsynth.demo.answer import demo_goals, headline

    res = pipe.get("benchmark").outputs.get("results") if pipe.status("benchmark") == "ok" else None
    real = pipe.get("realism").outputs.get("figures") if pipe.status("realism") == "ok" else None
    lines = headline(res) if res else ["The benchmark stage did not finish; see Errors."]
    goals = demo_goals(res, real)
    rows = [[k, g["value"], "met" if g["met"] else "NOT met"] for k, g in goals.items()]
    text = "".join(f"<p><b>{escape(line)}</b></p>" for line in lines)
    data = facts.get("data") or {}
    if data:
        n = data["images"]
        text += (
            f"<p>Data: {escape(data['what'])} ({n['train']} training, {n['test']} test images).</p>"
        )
    if facts.get("synth"):
        text += f"<p>Synthetic set: {escape(facts['synth'])}, translated by the shipped "
        text += "translator, with puncta.</p>"
    text += "<h3>The demo's goals</h3>" + htmlkit.html_table(
        ["goal", "measured", ""],
        rows,
        left=2,
        row_class=["" if g["met"] else "failed" for g in goals.values()],
    )
    return [("The answer", text)]


def _finetune_sections(paths: dict) -> list[tuple[str, str | None]]:
    curves = curves_uri(
        {"StyleGAN (masks)": paths.get("sg3_run"), "Pix2PixHD (images)": paths.get("p2p_run")}
    )
    parts = [FINETUNE_NOTE]
    if curves:
        parts.append(f"<img src='{curves}' style='max-width:100%'>")
    grids = paths.get("masks_grids") or {}
    panels = [(f"generated masks, seeds 0-15: {tag}", file_uri(p)) for tag, p in grids.items()]
    panels = [(c, u) for c, u in panels if u]
    if panels:
        parts.append(
            "<p>Masks as the generator makes them (red: nucleus, green: boundary between "
            "touching nuclei, blue: distance to the edge).</p>" + htmlkit.panel_grid(panels)
        )
    uri = file_uri(paths.get("images_grid"))
    if uri:
        parts.append(
            "<p>Real test images (left), and their masks translated by the shipped translator "
            "(middle) and by the fine-tuned one (right).</p>"
            + htmlkit.panel_grid([("real | shipped | fine-tuned", uri)])
        )
    return [("Training works: a short fine-tuning of both GANs", "".join(parts))]


def _data_sections(pipe, paths: dict) -> list[tuple[str, str | None]]:
    out = []
    if pipe.status("synth") == "ok":
        panels = sample_panels(paths["synth_test"], 3, spots=True)
        out.append(("Synthetic images, masks and puncta (test set)", htmlkit.panel_grid(panels)))
    if pipe.status("data") == "ok":
        panels = sample_panels(paths["data"] / "test", 3, spots=False)
        out.append(("Real held-out images", htmlkit.panel_grid(panels)))
    if pipe.status("realism") == "ok":
        fig = pipe.get("realism").outputs["figures"]
        rows = [[k, f"{float(v):.4g}"] for k, v in fig.items() if isinstance(v, (int, float))]
        text = (
            f"<p>Synthetic masks against the real test masks cut into {fig['tile']} px tiles "
            "(the synthetic images' size). w1_*: Wasserstein-1 distance / real spread; ks_*: "
            "Kolmogorov-Smirnov statistic (0 = same distribution).</p>"
            + htmlkit.html_table(["figure", "value"], rows)
        )
        out.append(("Mask realism (morphology of synthetic vs real masks)", text))
    return out


def _benchmark_section(pipe, out: Path) -> list[tuple[str, str | None]]:
    if pipe.status("benchmark") != "ok":
        return []
    from cellsynth.benchmark.report import dataset_section, validity_section

    res = pipe.get("benchmark").outputs["results"]
    parts = [
        "<p>Shipped segmenters are loaded as they are (trained on the DSB2018 training split; "
        "their cards say how); <code>classical</code> tunes its post-processing, and any "
        "segmenter without a shipped model trains, on the real training images, so that every "
        "segmenter has learned from real data. The synthetic test set is benchmarked without "
        "its puncta (the same masks and images), since the real images have none. Full "
        "benchmark report: "
        "<a href='benchmark/report.html'>benchmark/report.html</a>.</p>"
    ]
    if res.get("validity"):
        parts.append(validity_section(res))
    parts += [dataset_section(out / "benchmark", res, dkey) for dkey in res["datasets"]]
    return [("Segmenter benchmark: synthetic against real", "".join(parts))]


def _errors_section(pipe) -> list[tuple[str, str | None]]:
    failed = [s for s in pipe.stages if s.status == "failed"]
    text = "".join(
        f"<h3>{escape(s.name)}</h3><pre>{escape(s.outputs.get('traceback', s.error))}</pre>"
        for s in failed
    )
    return [("Errors", text)]


def write_demo_report(out: Path, pipe, paths: dict, summary: dict, facts=None) -> Path:
    """Write ``out/report.html`` for the stages of ``pipe`` (a :class:`Pipeline`): the answer
    first, then the evidence."""
    facts = facts or {}
    body = [
        "<h1>cellsynth demo</h1>",
        f"<p>cellsynth {escape(__version__)}, preset {escape(summary['preset'])}, "
        f"training budget {summary['minutes_budget']:.1f} min, total "
        f"{summary['seconds_total'] / 60:.1f} min. Data: {escape(paths['data'])}.</p>",
    ]
    sections = [
        *(_answer_section(pipe, facts) if pipe.status("benchmark") != "missing" else []),
        (
            "Stages",
            htmlkit.html_table(
                ["stage", "status", "seconds", "detail / error"],
                [[s.name, s.status, f"{s.seconds:.0f}", s.detail or s.error] for s in pipe.stages],
                left=4,
                row_class=["failed" if s.status != "ok" else "" for s in pipe.stages],
            ),
        ),
        *_data_sections(pipe, paths),
        *_benchmark_section(pipe, out),
        *(_finetune_sections(paths) if paths.get("sg3_run") or paths.get("p2p_run") else []),
        *_errors_section(pipe),
    ]
    body += [f"<h2>{escape(title)}</h2>{content}" for title, content in sections if content]
    path = out / "report.html"
    write_text(path, htmlkit.html_page("cellsynth demo", "".join(body)))
    return path
