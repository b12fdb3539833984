"""``cellsynth benchmark``: run segmenters on canonical test sets, score and report them."""

from __future__ import annotations

from pathlib import Path

import click

from cellsynth.errors import CellsynthError


def _read_config(path) -> dict:
    """YAML config: ``segmenters: {NAME: {options: {...}, minutes: M, epochs: N}}`` plus the
    defaults ``minutes_per_segmenter``, ``epochs``, ``max_images``, ``train``, ``test``, ``cache``.
    No ``path`` (no --config): no settings at all."""
    if not path:
        return {"segmenters": {}}
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
        "train_real",
        "synthetic_test",
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
        if not isinstance(entry, dict) or set(entry) - {"options", "minutes", "epochs", "load"}:
            raise CellsynthError(
                f"{path}: segmenter {name!r}: settings must be a mapping with options, minutes, "
                "epochs, load"
            )
        segs[name] = entry
    doc["segmenters"] = segs
    return doc


def _segmenter_settings(cfg: dict, name: str, minutes, epochs, load=None) -> tuple[dict, dict]:
    """(options, budget) of segmenter ``name``: its config entry, else ``minutes`` / ``epochs``;
    ``load`` (a trained model to use instead of training) from --load, else the entry's."""
    entry = cfg["segmenters"].get(name) or {}
    budget = {"minutes": entry.get("minutes", minutes), "epochs": entry.get("epochs", epochs)}
    load = load or entry.get("load")
    if load:
        from cellsynth.models import segmenter_folder

        budget["load"] = str(segmenter_folder(load, name))
    return dict(entry.get("options") or {}), budget


def _parse_loads(pairs) -> dict:
    """--load NAME=MODEL values -> {NAME: MODEL} (CellsynthError for a malformed one)."""
    out = {}
    for pair in pairs or ():
        name, sep, model = str(pair).partition("=")
        if not sep or not name.strip() or not model.strip():
            raise CellsynthError(f"--load {pair}: use SEGMENTER=MODEL (a saved folder or a name)")
        out[name.strip()] = model.strip()
    return out


def _fmt(x, digits: int = 3) -> str:
    """A score for a table: ``-`` for none."""
    return "-" if x is None else f"{x:.{digits}f}"


def _stacked(*decorators):
    """One decorator applying ``decorators`` as if they were stacked in this order."""

    def decorate(func):
        for deco in reversed(decorators):
            func = deco(func)
        return func

    return decorate


def _train_option(help_text: str):
    return click.option("--train", "train_dir", type=click.Path(), default=None, help=help_text)


def _config_option(help_text: str):
    return click.option(
        "--config", type=click.Path(exists=True, dir_okay=False), default=None, help=help_text
    )


def _bootstrap_options(help_text: str):
    """--bootstrap (resamples, ``help_text``) and --bootstrap-seed."""
    return _stacked(
        click.option(
            "--bootstrap", "n_boot", type=int, default=1000, show_default=True, help=help_text
        ),
        click.option(
            "--bootstrap-seed",
            "seed",
            type=int,
            default=0,
            show_default=True,
            help="Bootstrap seed.",
        ),
    )


def _overwrite_quiet_options(overwrite_help: str):
    """--overwrite (``overwrite_help``) and --quiet."""
    return _stacked(
        click.option("--overwrite", is_flag=True, help=overwrite_help),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    )


@click.group()
def benchmark():
    """Benchmark cell segmenters on (synthetic or real) ground truth."""


@benchmark.command("run")
@_train_option(
    "Canonical training split (or a root with train/); omit to use the "
    "segmenters untrained / pretrained."
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
@_config_option("YAML file with per-segmenter options and budgets.")
@click.option(
    "--minutes-per-segmenter",
    type=float,
    default=None,
    help="Training budget in minutes for each segmenter.",
)
@click.option("--epochs", type=int, default=None, help="Training epochs for each segmenter.")
@click.option(
    "--load",
    "loads",
    multiple=True,
    metavar="SEGMENTER=MODEL",
    help="Use a trained model instead of training: a saved segmenter folder or a shipped name "
    "(`cellsynth models`), e.g. stardist=dsb2018-nuclei; repeat for several.",
)
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
@click.option(
    "--train-real",
    "train_real_dir",
    type=click.Path(),
    default=None,
    help="A real training split: each segmenter is also trained on it and tested on the same "
    "test sets; the report gives AP(trained on --train) / AP(trained on --train-real).",
)
@click.option(
    "--synthetic-test",
    "synthetic_tests",
    type=click.Path(),
    multiple=True,
    help="A synthetic test split (tested like --test and counted as synthetic in the rank "
    "agreement even without a cellsynth manifest.json); repeat for several.",
)
@_bootstrap_options("Bootstrap resamples for the rank agreement's intervals.")
@click.option(
    "--dask",
    default=None,
    help="Predict and score the test images on a Dask cluster: local:N (N worker processes "
    "started for the run), the address of a running scheduler (tcp://HOST:8786) or its "
    "scheduler file (.json); training stays here. Needs the dask extra.",
)
@_overwrite_quiet_options("Replace an existing output folder.")
def run_cmd(
    train_dir,
    test_dirs,
    segmenters,
    out,
    config,
    minutes_per_segmenter,
    epochs,
    loads,
    cache_dir,
    max_images,
    n_samples,
    train_real_dir,
    synthetic_tests,
    n_boot,
    seed,
    dask,
    overwrite,
    quiet,
):
    """Train/load each segmenter, predict the test sets, write results.json/csv + report.html.

    With a synthetic test set (a cellsynth manifest.json, or --synthetic-test) and a real one,
    the results also hold the rank agreement of the segmenters between them (see
    `cellsynth benchmark validate`)."""
    from cellsynth.benchmark.runner import run_benchmark

    cfg = _read_config(config)
    train_dir = train_dir or cfg.get("train")
    train_real_dir = train_real_dir or cfg.get("train_real")
    if not test_dirs and not synthetic_tests:
        tests = cfg.get("test") or []
        test_dirs = [tests] if isinstance(tests, str) else list(tests)
    if not synthetic_tests:
        syn = cfg.get("synthetic_test") or []
        synthetic_tests = [syn] if isinstance(syn, str) else list(syn)
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
    loads = _parse_loads(loads)
    stray = sorted(set(loads) - set(names))
    if stray:
        raise CellsynthError(f"--load {stray[0]}=...: {stray[0]} is not among the segmenters run")
    budgets, options = {}, {}
    for name in names:  # a wrong --load folder or name fails here, before any work
        options[name], budgets[name] = _segmenter_settings(
            cfg, name, minutes_per_segmenter, epochs, loads.get(name)
        )
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
        train_real_dir=train_real_dir,
        synthetic_tests=synthetic_tests,
        n_boot=n_boot,
        seed=seed,
        dask=dask,
    )
    click.echo(_summary_text(results))
    if results.get("train_transfer"):
        click.echo(_transfer_text(results["train_transfer"]))
    if results.get("validity"):
        click.echo(_validity_text(results["validity"]))
    click.echo(f"wrote {Path(out) / 'results.json'}, results.csv and report.html")


def _transfer_text(transfer: dict) -> str:
    """AP@0.5 trained on --train (synthetic) and on --train-real, and their ratio."""
    f = _fmt
    lines = [
        f"{'segmenter':<12} {'dataset':<24} {'AP50 syn-trained':>16} {'real-trained':>12} ratio"
    ]
    for sname, per in transfer.items():
        for dkey, row in per.items():
            a = row.get("ap50") or {}
            lines.append(
                f"{sname:<12} {dkey:<24} {f(a.get('synthetic')):>16} {f(a.get('real')):>12} "
                f"{f(a.get('ratio'))}"
            )
    return "\n".join(lines)


def _validity_text(v: dict) -> str:
    """A short table of the rank agreement (or its error line)."""
    if v.get("error"):
        return f"rank agreement not computed: {v['error']}"
    f = _fmt

    def ci(stat):
        c = (stat or {}).get("ci")
        return f"[{f(c['low'], 2)}, {f(c['high'], 2)}]" if c else ""

    lines = []
    for comp in v.get("comparisons") or []:
        lines.append(f"rank agreement: {comp['synthetic']} (synthetic) vs {comp['real']} (real)")
        lines.append(
            f"  {'metric':<8} {'Spearman':>8} {'95% CI':<14} {'Kendall':>8} {'95% CI':<14} flips"
        )
        for m in v.get("metrics") or []:
            b = comp["metrics"].get(m)
            if not b:
                continue
            sp, kt = b.get("spearman") or {}, b.get("kendall") or {}
            flips = ", ".join(
                f"{x['better_on_synthetic']}>{x['better_on_real']}" for x in b.get("flips") or []
            )
            lines.append(
                f"  {m:<8} {f(sp.get('value')):>8} {ci(sp):<14} {f(kt.get('value')):>8} "
                f"{ci(kt):<14} {flips or '-'}"
            )
        first = comp["metrics"].get((v.get("metrics") or ["ap50"])[0]) or {}
        lines.append(
            f"  {'segmenter':<16} {'synthetic':>9} {'real':>7} {'ratio':>7} "
            f"{'extra syn/real':>15} {'missed syn/real':>15}  (first metric; errors at IoU 0.5)"
        )
        errors = comp.get("errors") or {}
        for sname, sc in (first.get("scores") or {}).items():
            e = errors.get(sname) or {}
            es, er = e.get("synthetic") or {}, e.get("real") or {}
            extra = f"{f(es.get('extra'))}/{f(er.get('extra'))}"
            missed = f"{f(es.get('missed'))}/{f(er.get('missed'))}"
            lines.append(
                f"  {sname:<16} {f(sc.get('synthetic')):>9} {f(sc.get('real')):>7} "
                f"{f(sc.get('ratio')):>7} {extra:>15} {missed:>15}"
            )
    return "\n".join(lines)


@benchmark.command("validate")
@click.argument("results_dir", type=click.Path())
@click.option(
    "--synthetic",
    "synthetic",
    multiple=True,
    help="Test set (its key in results.json, or its path) to count as synthetic besides those "
    "with a cellsynth manifest.json; repeat for several.",
)
@_bootstrap_options("Bootstrap resamples of each test set's images.")
def validate_cmd(results_dir, synthetic, n_boot, seed):
    """Recompute the rank agreement of synthetic and real test sets in RESULTS_DIR.

    Rewrites the validity of RESULTS_DIR/results.json and RESULTS_DIR/report.html (atomically)
    and prints a short table."""
    from cellsynth.benchmark.runner import revalidate

    v = revalidate(results_dir, synthetic, n_boot=n_boot, seed=seed)
    click.echo(_validity_text(v))
    click.echo(f"wrote {Path(results_dir) / 'results.json'} and report.html")


@benchmark.command("fidelity")
@click.option(
    "--real",
    "real_dir",
    type=click.Path(),
    required=True,
    help="Canonical split of real images and their masks.",
)
@click.option(
    "--translated",
    "translated_dir",
    type=click.Path(),
    required=True,
    help="Canonical split of the images a translator made from the same masks (same names), "
    "e.g. with `cellsynth pix2pixhd test` or `cellsynth synth --masks DIR`.",
)
@click.option("--segmenter", "name", required=True, help="The segmenter that judges the images.")
@_train_option("Train the segmenter on this split first (default: use it as it is).")
@click.option(
    "--load",
    "load",
    default=None,
    metavar="MODEL",
    help="Use a trained model: a saved segmenter folder or a shipped name (`cellsynth models`).",
)
@_config_option("YAML with the segmenter's options and budget (as for benchmark run).")
@click.option("--minutes", type=float, default=None, help="Training budget in minutes.")
@click.option("--epochs", type=int, default=None, help="Training epochs.")
@click.option("--max-images", type=int, default=None, help="Use at most N image pairs.")
@_bootstrap_options("Paired bootstrap resamples for the ratio's interval.")
@click.option("--out", "out", type=click.Path(), default=None, help="Write the figures as JSON.")
@_overwrite_quiet_options("Replace an existing --out file.")
def fidelity_cmd(
    real_dir,
    translated_dir,
    name,
    train_dir,
    load,
    config,
    minutes,
    epochs,
    max_images,
    n_boot,
    seed,
    out,
    overwrite,
    quiet,
):
    """Paired fidelity: score one segmenter on translated and on real images of the same masks.

    Prints AP@0.5, mean AP, F1 and PQ on both and their ratio (translated / real); 1.0 means the
    segmenter cannot tell the translated images from the real ones."""
    import json
    import tempfile

    from cellsynth.atomic import check_writable, write_text
    from cellsynth.benchmark.segmenters import make_segmenter
    from cellsynth.benchmark.validity import load_pairs, paired_fidelity
    from cellsynth.datasets.canonical import CanonicalDataset

    if out is not None:
        check_writable(out, overwrite)
    if max_images is not None and max_images < 1:
        raise CellsynthError(f"--max-images must be >= 1, got {max_images}")
    options, budget = _segmenter_settings(_read_config(config), name, minutes, epochs, load)
    if budget.get("load") and train_dir is not None:
        raise CellsynthError("--load uses a trained model as it is; drop --train (or --load)")
    pairs = load_pairs(real_dir, translated_dir, max_images)
    if budget.get("load"):
        from cellsynth.benchmark.segmenters import get_segmenter_class

        seg = get_segmenter_class(name).load(budget["load"])
    else:
        seg = make_segmenter(name, **options)
    if train_dir is not None:
        train = CanonicalDataset(train_dir, "train")
        with tempfile.TemporaryDirectory(prefix="cellsynth-fidelity-") as work:
            seg.fit(
                train,
                work,
                budget_minutes=budget["minutes"],
                epochs=budget["epochs"],
                progress=not quiet,
            )
    res = paired_fidelity(
        pairs["translated"], pairs["real"], pairs["masks"], seg, n_boot=n_boot, seed=seed
    )
    res.update(
        segmenter=name,
        options=seg.options,
        real_dir=str(Path(real_dir).resolve()),
        translated_dir=str(Path(translated_dir).resolve()),
        train=None if train_dir is None else str(Path(train_dir).resolve()),
        loaded=budget.get("load"),
        pairs=[list(p) for p in pairs["pairs"]],
        paired_by=pairs["paired_by"],
        mask_mismatch=pairs["mask_mismatch"],
    )

    def f(x):
        return _fmt(x, 4)

    how = "by name" if pairs["paired_by"] == "name" else "through manifest.json"
    click.echo(f"paired fidelity of {name} on {res['n_images']} image pairs ({how}):")
    click.echo(f"  {'metric':<8} {'translated':>10} {'real':>8} {'ratio':>8} 95% CI")
    for m in ("ap50", "mean_ap", "f1", "pq"):
        ci = res["ratio_ci"].get(m)
        ci_text = f"[{f(ci['low'])}, {f(ci['high'])}]" if ci else ""
        click.echo(
            f"  {m:<8} {f(res['translated'][m]):>10} {f(res['real'][m]):>8} "
            f"{f(res['ratio'][m]):>8} {ci_text}"
        )
    if pairs["mask_mismatch"]:
        click.echo(
            f"warning: {len(pairs['mask_mismatch'])} translated sample(s) carry masks other than "
            f"the real ones (e.g. {pairs['mask_mismatch'][0]}); both sides were scored against "
            "the real masks"
        )
    if out is not None:
        write_text(out, json.dumps(res, indent=1, default=str), overwrite=overwrite)
        click.echo(f"wrote {out}")


def _summary_text(results: dict) -> str:
    f = _fmt
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
