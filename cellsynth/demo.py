"""The whole pipeline in one command, sized for a laptop CPU: ``cellsynth demo``.

Stages (each timed; a failing stage is reported and the later stages run where they can):

1. data      the user's canonical dataset, or the embedded default data (the simulator)
2. pack      masks zip (StyleGAN3) and pairs folder (Pix2PixHD)
3. stylegan3 a small mask generator trained within its share of the time budget
4. pix2pixhd a small mask-to-image translator trained within its share
5. synth     a synthetic training set and a synthetic test set, with puncta
6. realism   morphology of decoded generated masks against the real ones
7. benchmark segmenters trained on synthetic data, tested on synthetic and held-out real data
8. report    ``OUT/report.html``: training curves, generated masks, images and puncta next to
             real ones, the realism figures, the benchmark tables and overlays

Like the CLI, this module sits on top of every package; nothing imports it but the CLI.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cellsynth import __version__
from cellsynth.atomic import check_writable, write_text
from cellsynth.errors import CellsynthError

# Share of the training budget per stage (the rest of the pipeline is fast).
BUDGET_SHARES = {"stylegan3": 0.30, "pix2pixhd": 0.22, "benchmark": 0.48}


@dataclass
class Stage:
    name: str
    status: str = "pending"  # ok | failed | skipped
    seconds: float = 0.0
    detail: str = ""
    error: str = ""
    outputs: dict = field(default_factory=dict)


class Pipeline:
    """Runs stages in order, timing each, isolating failures, echoing progress."""

    def __init__(self, echo=print):
        self.stages: list[Stage] = []
        self.echo = echo

    def run(self, name: str, func, *needs: str) -> Stage:
        stage = Stage(name)
        self.stages.append(stage)
        missing = [n for n in needs if self.status(n) != "ok"]
        if missing:
            stage.status = "skipped"
            stage.detail = f"needs {', '.join(missing)}"
            self.echo(f"[demo] {name}: skipped ({stage.detail})")
            return stage
        self.echo(f"[demo] {name} ...")
        t0 = time.time()
        try:
            result = func()
            stage.status = "ok"
            if isinstance(result, dict):
                stage.outputs = result
                stage.detail = str(result.pop("detail", ""))
        except Exception as exc:  # a failing stage must not stop the others
            stage.status = "failed"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            stage.error = f"{type(exc).__name__}: {first}"
            stage.outputs["traceback"] = traceback.format_exc()
        stage.seconds = time.time() - t0
        msg = stage.detail if stage.status == "ok" else stage.error
        self.echo(f"[demo] {name}: {stage.status} in {stage.seconds:.0f}s  {msg}")
        return stage

    def status(self, name: str) -> str:
        for s in self.stages:
            if s.name == name:
                return s.status
        return "missing"

    def get(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


# Sizes of everything, per preset. "laptop" is the README's demo (about 10 minutes on 2 CPU
# cores plus the install); "tiny" runs the same code paths in about a minute (tests, CI).
PRESETS = {
    "laptop": dict(
        n_train=48,
        n_test=12,
        size=128,
        density=0.55,
        mean_radius=10.0,
        mask_res=64,
        sg3_cfg="stylegan2",
        sg3_cbase=4096,
        sg3_cmax=128,
        sg3_batch=8,
        p2p_ngf=16,
        p2p_ndf=16,
        p2p_down=3,
        p2p_blocks=3,
        synth_train=48,
        synth_test=12,
        spots=3.0,
        segmenters="classical,cellpose,u2net,maskrcnn",
        seg_options={
            "u2net": {"variant": "small"},
            "maskrcnn": {"arch": "resnet18_fpn"},
        },
        minutes=8.0,
    ),
    "tiny": dict(
        n_train=8,
        n_test=3,
        size=64,
        density=0.5,
        mean_radius=8.0,
        mask_res=32,
        sg3_cfg="stylegan2",
        sg3_cbase=1024,
        sg3_cmax=32,
        sg3_batch=4,
        p2p_ngf=8,
        p2p_ndf=8,
        p2p_down=2,
        p2p_blocks=1,
        synth_train=6,
        synth_test=3,
        spots=2.0,
        segmenters="classical,u2net",
        seg_options={"u2net": {"variant": "small"}},
        minutes=1.0,
    ),
}


def _latest(folder: Path, pattern: str) -> Path | None:
    found = sorted(folder.rglob(pattern))
    return found[-1] if found else None


def run_demo(
    out="demo-out",
    data=None,
    minutes: float | None = None,
    preset: str = "laptop",
    segmenters: str | None = None,
    overwrite: bool = False,
    seed: int = 0,
    echo=print,
) -> Path:
    """Run the whole pipeline into ``out``; return the path of ``report.html``.

    Args:
        out: output folder (refused if it exists, unless ``overwrite``).
        data: a canonical dataset (root with train/ and test/ splits); None = simulate one.
        minutes: training budget of the GANs and segmenters together (default per preset).
        preset: "laptop" or "tiny" (sizes of data, networks and budgets).
        segmenters: comma-separated names for the benchmark (default per preset).
        overwrite: replace ``out``.
        seed: seed of everything random.
        echo: progress printer.
    """
    import shutil

    if preset not in PRESETS:
        raise CellsynthError(f"unknown demo preset {preset!r}; use {', '.join(PRESETS)}")
    cfg = dict(PRESETS[preset])
    if minutes is not None:
        if minutes <= 0:
            raise CellsynthError("--minutes must be positive")
        cfg["minutes"] = float(minutes)
    if segmenters:
        cfg["segmenters"] = segmenters
    out = Path(out)
    if data is not None:
        from cellsynth.datasets.canonical import resolve_split

        resolve_split(data, "train")  # fail now, before anything is written
        resolve_split(data, "test")
    if out.exists():
        check_writable(out, overwrite)
        if not (out / "demo.json").exists() and any(out.iterdir()):
            raise CellsynthError(f"{out} exists and is not a demo folder; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    budget = {k: cfg["minutes"] * share for k, share in BUDGET_SHARES.items()}
    pipe = Pipeline(echo)
    paths = {"data": Path(data) if data is not None else out / "data"}
    t_start = time.time()

    def stage_data():
        if data is not None:
            from cellsynth.datasets.canonical import CanonicalDataset

            n = {s: len(CanonicalDataset(paths["data"], s)) for s in ("train", "test")}
            return {"detail": f"user data {paths['data']}: {n}"}
        from cellsynth.datasets.simulate import simulate_dataset

        counts = simulate_dataset(
            paths["data"],
            n_train=cfg["n_train"],
            n_test=cfg["n_test"],
            seed=seed,
            size=(cfg["size"], cfg["size"]),
            density=cfg["density"],
            mean_radius=cfg["mean_radius"],
        )
        return {"detail": f"simulated {counts}"}

    def stage_pack():
        from cellsynth.datasets.pack import pack_masks, pack_pairs

        paths["masks_zip"] = out / "packed" / "masks.zip"
        paths["pairs"] = out / "packed" / "pairs"
        m = pack_masks(
            paths["data"],
            paths["masks_zip"],
            resolution=cfg["mask_res"],
            encoding="fbd",
            transform="tiles",
            split="train",
        )
        p = pack_pairs(paths["data"], paths["pairs"], size=cfg["size"], split="train")
        return {"detail": f"masks zip: {m['items']} tiles; pairs: {p['splits']}"}

    def stage_stylegan3():
        from cellsynth.stylegan3.train import train

        run = train(
            outdir=str(out / "runs" / "stylegan3"),
            cfg=cfg["sg3_cfg"],
            data=str(paths["masks_zip"]),
            batch=cfg["sg3_batch"],
            cbase=cfg["sg3_cbase"],
            cmax=cfg["sg3_cmax"],
            gamma=1.0,
            mirror=True,
            kimg=1000,
            tick=0.1,
            snap=5,
            max_minutes=budget["stylegan3"],
            seed=seed,
            workers=0,
        )
        snap = _latest(Path(run), "network-snapshot-*.pt")
        if snap is None:
            raise CellsynthError(f"{run}: training wrote no snapshot")
        paths["sg3_run"], paths["sg3_snapshot"] = Path(run), snap
        return {"detail": f"{snap.name} in {Path(run).name}"}

    def stage_pix2pixhd():
        from cellsynth.pix2pixhd.options import Options
        from cellsynth.pix2pixhd.training_loop import train

        opt = Options(
            name="demo",
            dataroot=str(paths["pairs"]),
            checkpoints_dir=str(out / "runs" / "pix2pixhd"),
            seed=seed,
            resize_or_crop="none",
            loadSize=cfg["size"],
            fineSize=cfg["size"],
            ngf=cfg["p2p_ngf"],
            ndf=cfg["p2p_ndf"],
            n_downsample_global=cfg["p2p_down"],
            n_blocks_global=cfg["p2p_blocks"],
            num_D=2,
            n_layers_D=2,
            no_vgg_loss=True,
            niter=1000,
            niter_decay=0,
            max_minutes=budget["pix2pixhd"],
            display_freq=50,
            print_freq=50,
            save_latest_freq=50,
            save_epoch_freq=1000,
            progress=False,
        )
        run = train(opt)
        paths["p2p_run"] = Path(run)
        paths["p2p_ckpt"] = Path(run) / "latest.pt"
        return {"detail": f"{paths['p2p_ckpt']}"}

    def stage_synth():
        from cellsynth.synth import synth

        common = dict(
            masks=f"stylegan3:{paths['sg3_snapshot']}",
            images=f"pix2pixhd:{paths['p2p_ckpt']}",
            spots_count=cfg["spots"],
            min_size=15,
            progress=False,
        )
        paths["synth_train"] = out / "synthetic" / "train"
        paths["synth_test"] = out / "synthetic" / "test"
        a = synth(paths["synth_train"], seeds=f"0-{cfg['synth_train'] - 1}", **common)
        b = synth(paths["synth_test"], seeds=f"100000-{100000 + cfg['synth_test'] - 1}", **common)
        return {"detail": f"train {a['written']} pairs, test {b['written']} pairs"}

    def stage_realism():
        from cellsynth.datasets.canonical import CanonicalDataset
        from cellsynth.datasets.pack import MaskZipDataset
        from cellsynth.stylegan3.metrics import realism
        from cellsynth.tools.codec import decode_mask

        zipped = MaskZipDataset(paths["masks_zip"])
        real = [
            decode_mask(np.moveaxis(zipped[i][0], 0, -1), zipped.encoding)
            for i in range(min(len(zipped), 200))
        ]
        fake = [s.labels for s in CanonicalDataset(paths["synth_train"])]
        figures = realism(real, fake)
        write_text(out / "realism.json", json.dumps(figures, indent=1, default=float))
        return {"detail": f"w1_mean {figures['w1_mean']:.3f}", "figures": figures}

    def stage_benchmark():
        from cellsynth.benchmark.runner import run_benchmark

        names = [s for s in cfg["segmenters"].split(",") if s]
        per = budget["benchmark"] / max(1, sum(n != "classical" for n in names))
        res = run_benchmark(
            paths["synth_train"],
            [paths["synth_test"], paths["data"] / "test"],
            names,
            out / "benchmark",
            budgets={n: {"minutes": per} for n in names},
            options={n: cfg["seg_options"].get(n, {}) for n in names},
            cache_dir=out / "benchmark-cache",
            overwrite=True,
            progress=False,
        )
        return {"detail": f"{len(names)} segmenters", "results": res}

    pipe.run("data", stage_data)
    pipe.run("pack", stage_pack, "data")
    pipe.run("stylegan3", stage_stylegan3, "pack")
    pipe.run("pix2pixhd", stage_pix2pixhd, "pack")
    pipe.run("synth", stage_synth, "stylegan3", "pix2pixhd")
    pipe.run("realism", stage_realism, "synth")
    pipe.run("benchmark", stage_benchmark, "synth")
    summary = {
        "version": __version__,
        "preset": preset,
        "config": cfg,
        "seed": seed,
        "minutes_budget": cfg["minutes"],
        "seconds_total": round(time.time() - t_start, 1),
        "paths": {k: str(v) for k, v in paths.items()},
        "stages": [
            {
                "name": s.name,
                "status": s.status,
                "seconds": round(s.seconds, 1),
                "detail": s.detail,
                "error": s.error,
            }
            for s in pipe.stages
        ],
    }
    write_text(out / "demo.json", json.dumps(summary, indent=1, default=str))
    report = write_demo_report(out, pipe, paths, summary)
    echo(f"[demo] done in {summary['seconds_total']:.0f}s; report: {report.resolve()}")
    return report


# ----------------------------------------------------------------------------- report


def _curves_png(stats_files: dict) -> str | None:
    """Loss curves of each run's stats.jsonl (keys containing 'loss') as one PNG data URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cellsynth.benchmark.report import png_base64
    from cellsynth.training.logging import read_stats

    runs = {k: read_stats(v) for k, v in stats_files.items() if v is not None}
    runs = {k: v for k, v in runs.items() if v}
    if not runs:
        return None
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 3.4), squeeze=False)
    for ax, (title, recs) in zip(axes[0], runs.items()):
        keys = sorted({k for r in recs for k in r if "loss" in k.lower() or k[:2] in ("G_", "D_")})
        for k in keys[:8]:
            pts = [(r["step"], r[k]) for r in recs if k in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k, lw=1)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=6)
    fig.tight_layout()
    buf = _fig_rgb(fig)
    plt.close(fig)
    return png_base64(buf)


def _fig_rgb(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _file_png(path: Path | None) -> str | None:
    from cellsynth.benchmark.report import png_base64
    from cellsynth.datasets.io import read_image

    if path is None or not Path(path).is_file():
        return None
    img = read_image(path)
    if img.dtype != np.uint8:
        from cellsynth.benchmark.report import display_image

        img = display_image(img)
    return png_base64(img)


def _sample_panels(split_dir: Path, k: int, spots: bool) -> list[tuple[str, str]]:
    """(caption, data URI) of image / image with mask contours and puncta, for k samples."""
    from skimage.segmentation import find_boundaries

    from cellsynth.benchmark.report import display_image, png_base64
    from cellsynth.datasets.canonical import CanonicalDataset

    ds = CanonicalDataset(split_dir)
    panels = []
    for i in range(min(k, len(ds))):
        s = ds[i]
        rgb = display_image(s.image)
        over = rgb.copy()
        over[find_boundaries(s.labels, mode="inner")] = (0, 200, 255)
        n_spots = 0
        csv = split_dir / "spots" / f"{s.name}.csv"
        if spots and csv.is_file():
            from cellsynth.tools.points import spots_from_csv

            pts = spots_from_csv(csv.read_text())
            n_spots = len(pts)
            for x, y in zip(np.asarray(pts["x"]), np.asarray(pts["y"])):
                yy, xx = int(round(float(y))), int(round(float(x)))
                if 0 <= yy < over.shape[0] and 0 <= xx < over.shape[1]:
                    over[yy, xx] = (255, 60, 200)
        n = int(len(np.unique(s.labels)) - (1 if (s.labels == 0).any() else 0))
        cap = f"{s.name}: {n} cells" + (f", {n_spots} puncta" if spots else "")
        panels.append((cap + " (image)", png_base64(rgb)))
        panels.append(
            (cap + " (mask contours" + (", puncta" if spots else "") + ")", png_base64(over))
        )
    return panels


def _panel_html(panels) -> str:
    from cellsynth.benchmark.report import escape

    return (
        "<div class='grid'>"
        + "".join(
            f"<div class='panel'><img src='{uri}'><br>{escape(cap)}</div>" for cap, uri in panels
        )
        + "</div>"
    )


def write_demo_report(out: Path, pipe: Pipeline, paths: dict, summary: dict) -> Path:
    """Write ``out/report.html``: one self-contained page for the whole demo."""
    from cellsynth.benchmark.report import CSS, escape, html_table

    body = [
        "<h1>cellsynth demo</h1>",
        f"<p>cellsynth {escape(__version__)}, preset {escape(summary['preset'])}, "
        f"training budget {summary['minutes_budget']:.1f} min, total "
        f"{summary['seconds_total'] / 60:.1f} min. Data: {escape(paths['data'])}.</p>",
        "<h2>Stages</h2>",
        html_table(
            ["stage", "status", "seconds", "detail / error"],
            [[s.name, s.status, f"{s.seconds:.0f}", s.detail or s.error] for s in pipe.stages],
            left=4,
            row_class=["failed" if s.status != "ok" else "" for s in pipe.stages],
        ),
    ]

    def section(title, content):
        if content:
            body.append(f"<h2>{escape(title)}</h2>{content}")

    curves = _curves_png(
        {
            "StyleGAN (masks)": paths.get("sg3_run"),
            "Pix2PixHD (images)": paths.get("p2p_run"),
        }
    )
    section("Training curves", curves and f"<img src='{curves}' style='max-width:100%'>")
    sg3 = paths.get("sg3_run")
    if sg3:
        fakes, reals = _latest(sg3, "fakes*.png"), _latest(sg3, "reals.png")
        grid = [
            (f"real encoded masks ({reals.name if reals else '-'})", _file_png(reals)),
            (f"generated ({fakes.name if fakes else '-'})", _file_png(fakes)),
        ]
        section(
            "Generated masks (foreground, boundary, distance as RGB)",
            _panel_html([(c, u) for c, u in grid if u]),
        )
    if pipe.status("synth") == "ok":
        section(
            "Synthetic images and puncta (test set)",
            _panel_html(_sample_panels(paths["synth_test"], 3, spots=True)),
        )
    if pipe.status("data") == "ok":
        section(
            "Real (or simulated) held-out images",
            _panel_html(_sample_panels(paths["data"] / "test", 3, spots=False)),
        )
    if pipe.status("realism") == "ok":
        fig = pipe.get("realism").outputs["figures"]
        rows = [[k, f"{float(v):.4g}"] for k, v in fig.items()]
        section(
            "Mask realism (morphology of generated vs real masks)",
            "<p>w1_*: Wasserstein-1 distance / real spread; ks_*: Kolmogorov-Smirnov "
            "statistic (0 = same distribution).</p>" + html_table(["figure", "value"], rows),
        )
    if pipe.status("benchmark") == "ok":
        from cellsynth.benchmark.report import dataset_section

        res = pipe.get("benchmark").outputs["results"]
        parts = [
            "<p>Segmenters trained on the synthetic training set. Full benchmark report: "
            "<a href='benchmark/report.html'>benchmark/report.html</a>.</p>"
        ]
        for dkey in res["datasets"]:
            parts.append(dataset_section(out / "benchmark", res, dkey))
        section("Segmenter benchmark", "".join(parts))
    failed = [s for s in pipe.stages if s.status == "failed"]
    if failed:
        section(
            "Errors",
            "".join(
                f"<h3>{escape(s.name)}</h3><pre>{escape(s.outputs.get('traceback', s.error))}</pre>"
                for s in failed
            ),
        )
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>cellsynth demo"
        f"</title><style>{CSS}</style></head><body>{''.join(body)}</body></html>"
    )
    path = out / "report.html"
    write_text(path, page)
    return path
