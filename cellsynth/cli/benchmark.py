"""``cellsynth benchmark``: run segmenters on canonical test sets, score and report them."""

from __future__ import annotations

from pathlib import Path

import click

from cellsynth.errors import CellsynthError


def _read_config(path) -> dict:
    """YAML config: ``segmenters: {NAME: {options: {...}, minutes: M, epochs: N}}`` plus the
    defaults ``minutes_per_segmenter``, ``epochs``, ``max_images``, ``train``, ``test``, ``cache``."""
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CellsynthError(f"{path}: cannot read the YAML config ({exc})") from None
    if not isinstance(doc, dict):
        raise CellsynthError(f"{path}: the config must be a mapping (segmenters: ...)")
    known = {
        "segmenters",
        "minutes_per_segmenter",
        "epochs",
        "max_images",
        "train",
        "test",
        "cache",
    }
    unknown = sorted(set(doc) - known)
    if unknown:
        raise CellsynthError(
            f"{path}: unknown config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    segs = doc.get("segmenters") or {}
    if isinstance(segs, list):
        segs = {name: {} for name in segs}
    if not isinstance(segs, dict):
        raise CellsynthError(f"{path}: 'segmenters' must be a mapping of name -> settings")
    for name, entry in segs.items():
        entry = entry or {}
        if not isinstance(entry, dict) or set(entry) - {"options", "minutes", "epochs"}:
            raise CellsynthError(
                f"{path}: segmenter {name!r}: settings must be a mapping with options, minutes, "
                "epochs"
            )
        segs[name] = entry
    doc["segmenters"] = segs
    return doc


@click.group()
def benchmark():
    """Benchmark cell segmenters on (synthetic or real) ground truth."""


@benchmark.command("run")
@click.option(
    "--train",
    "train_dir",
    type=click.Path(),
    default=None,
    help="Canonical training split (or a root with train/); omit to use the "
    "segmenters untrained / pretrained.",
)
@click.option(
    "--test",
    "test_dirs",
    type=click.Path(),
    multiple=True,
    help="Canonical test split (or a root with test/); repeat for several.",
)
@click.option(
    "--segmenters",
    default=None,
    help="Comma-separated names: cellpose,maskrcnn,u2net,classical,unet "
    "[default: those in --config, else classical].",
)
@click.option("--out", "out", type=click.Path(), required=True, help="Output folder.")
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="YAML file with per-segmenter options and budgets.",
)
@click.option(
    "--minutes-per-segmenter",
    type=float,
    default=None,
    help="Training budget in minutes for each segmenter.",
)
@click.option("--epochs", type=int, default=None, help="Training epochs for each segmenter.")
@click.option(
    "--cache",
    "cache_dir",
    type=click.Path(),
    default=None,
    help="Folder of cached trained models (reused when options, budget and training data match).",
)
@click.option("--max-images", type=int, default=None, help="Use at most N images of each test set.")
@click.option(
    "--samples",
    "n_samples",
    type=int,
    default=3,
    show_default=True,
    help="Images per test set shown as overlays in the report.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def run_cmd(
    train_dir,
    test_dirs,
    segmenters,
    out,
    config,
    minutes_per_segmenter,
    epochs,
    cache_dir,
    max_images,
    n_samples,
    overwrite,
    quiet,
):
    """Train/load each segmenter, predict the test sets, write results.json/csv + report.html."""
    from cellsynth.benchmark.runner import run_benchmark

    cfg = _read_config(config) if config else {"segmenters": {}}
    train_dir = train_dir or cfg.get("train")
    if not test_dirs:
        tests = cfg.get("test") or []
        test_dirs = [tests] if isinstance(tests, str) else list(tests)
    cache_dir = cache_dir or cfg.get("cache")
    max_images = max_images if max_images is not None else cfg.get("max_images")
    if minutes_per_segmenter is None:
        minutes_per_segmenter = cfg.get("minutes_per_segmenter")
    if epochs is None:
        epochs = cfg.get("epochs")
    if segmenters:
        names = [s.strip() for s in segmenters.split(",") if s.strip()]
    else:
        names = list(cfg["segmenters"]) or ["classical"]
    budgets, options = {}, {}
    for name in names:
        entry = cfg["segmenters"].get(name) or {}
        options[name] = dict(entry.get("options") or {})
        budgets[name] = {
            "minutes": entry.get("minutes", minutes_per_segmenter),
            "epochs": entry.get("epochs", epochs),
        }
    results = run_benchmark(
        train_dir,
        test_dirs,
        names,
        out,
        budgets=budgets,
        options=options,
        cache_dir=cache_dir,
        overwrite=overwrite,
        progress=not quiet,
        max_images=max_images,
        n_samples=n_samples,
    )
    click.echo(_summary_text(results))
    click.echo(f"wrote {Path(out) / 'results.json'}, results.csv and report.html")


def _summary_text(results: dict) -> str:
    def f(x):
        return "-" if x is None else f"{x:.3f}"

    lines = [
        f"{'segmenter':<12} {'dataset':<24} {'status':<7} {'AP50':>6} {'mAP':>6} "
        f"{'F1':>6} {'PQ':>6} {'AJI':>6}"
    ]
    for sname, sres in results["segmenters"].items():
        for dkey, d in sres["datasets"].items():
            s = d.get("summary") or {}
            lines.append(
                f"{sname:<12} {dkey:<24} {d['status']:<7} {f(s.get('ap50')):>6} "
                f"{f(s.get('mean_ap')):>6} {f(s.get('f1')):>6} {f(s.get('pq')):>6} "
                f"{f(s.get('aji')):>6}"
            )
            if d.get("error"):
                lines.append(f"  error: {d['error']}")
    return "\n".join(lines)


@benchmark.command("report")
@click.argument("out", type=click.Path())
def report_cmd(out):
    """Rebuild OUT/report.html from OUT/results.json (and OUT/samples)."""
    from cellsynth.benchmark.runner import load_results, rewrite_report

    path = rewrite_report(out)
    click.echo(_summary_text(load_results(out)))
    click.echo(f"wrote {path}")


@benchmark.command("list")
def list_cmd():
    """List the segmenters and whether they can be loaded here."""
    from cellsynth.benchmark.segmenters.base import available, get_segmenter_class

    for name in available():
        try:
            cls = get_segmenter_class(name)
            state = "trainable" if cls.trainable else "no training"
            click.echo(f"{name:<10} ok ({state})")
        except CellsynthError as exc:
            click.echo(f"{name:<10} unavailable: {exc}")
