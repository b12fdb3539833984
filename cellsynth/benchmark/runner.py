"""The benchmark runner: train (or load from the cache) each segmenter, predict every test image,
score it against the ground truth and write ``results.json``, ``results.csv`` and ``report.html``.

Output folder (written atomically: it appears only when the run is complete)::

    OUT/results.json        everything: datasets + provenance, per segmenter: status, error,
                            options, budget, times, per-dataset summaries and per-image metrics
    OUT/results.csv         one row per (segmenter, dataset) summary and per image
    OUT/report.html         self-contained report (see :mod:`cellsynth.benchmark.report`)
    OUT/samples/SEG/DATASET/NAME.tif   predictions on the few images shown in the report
    OUT/logs/SEG.txt        traceback of a failed segmenter
    OUT/work/SEG/           the segmenter's training folder (logs, checkpoints), when it used one

A segmenter that raises in ``fit`` or ``predict``, or predicts labels of the wrong shape or dtype,
is recorded with status ``"failed"`` and the error line; the others go on. Trained models are
cached under ``cache_dir/SEG-KEY`` where KEY hashes the segmenter name, its options, its budget
and a fingerprint of the training images and masks.

With ``train_real_dir`` each segmenter is trained a second time, on that (real) split, and
tested on the same test sets: ``results["segmenters"][SEG]["train_real"]`` (a block like the
segmenter's own; its folders are ``work/SEG.train_real``, ``logs/SEG.train_real.txt``; its cache
key differs because the training data do) and ``results["train_transfer"]``. When the test sets
include a synthetic one (a cellsynth ``manifest.json``, or ``synthetic_tests``) and a real one,
``results["validity"]`` holds the rank agreement of :mod:`cellsynth.benchmark.validity`, or
``{"error": line}`` when it cannot be computed (fewer than 3 segmenters with results, a test set
without objects); it never fails the run.

With ``dask`` (``--dask local:N|ADDRESS``) the training stays here and the test images are
predicted and scored by the workers of a Dask cluster (:mod:`cellsynth.benchmark.cluster`), with
the same results; the per-image step both use is :mod:`cellsynth.benchmark.scoring`.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import gc
import hashlib
import io
import json
import math
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from cellsynth.atomic import atomic_dir, check_writable, write_text
from cellsynth.benchmark import metrics, validity
from cellsynth.benchmark.scoring import (
    check_prediction,
    finish_dataset_result,
    new_dataset_result,
    sample_indices,
    score_image,
)
from cellsynth.benchmark.scoring import error_line as _error_line
from cellsynth.benchmark.segmenters.base import available, get_segmenter_class
from cellsynth.cluster import dask_client, parse_dask
from cellsynth.datasets.canonical import SPLITS, CanonicalDataset
from cellsynth.datasets.io import write_labels
from cellsynth.errors import CellsynthError, first_line

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
REPORT_HTML = "report.html"
CACHE_INFO = "cache.json"
TRAIN_REAL_TAG = ".train_real"  # suffix of the folders of the --train-real training

CSV_COLUMNS = [
    "level",
    "segmenter",
    "dataset",
    "image",
    "status",
    "n_true",
    "n_pred",
    "tp50",
    "ap50",
    "ap75",
    "mean_ap",
    "precision",
    "recall",
    "f1",
    "pq",
    "sq",
    "rq",
    "aji",
    "fg_dice",
    "fg_iou",
    "count_error",
    "confluence_error",
    "train_s",
    "predict_s",
    "error",
]


class Subset:
    """The first ``n`` samples of a :class:`CanonicalDataset` (same interface)."""

    def __init__(self, dataset: CanonicalDataset, n: int | None):
        self.dataset = dataset
        self.root = dataset.root
        self.names = dataset.names[: n if n else None]
        self.meta = dataset.meta

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return self.dataset[index % len(self)]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


# ----------------------------------------------------------------------------- datasets


def _provenance(split_dir: Path) -> dict:
    """``manifest.json`` (synthetic) and/or ``dataset.json`` (imported) of a split or its root,
    with long lists shortened."""

    def shorten(x, depth=0):
        if isinstance(x, dict):
            if depth > 3:
                return f"<{len(x)} keys>"
            return {k: shorten(v, depth + 1) for k, v in list(x.items())[:50]}
        if isinstance(x, list):
            if len(x) > 20:
                return [shorten(v, depth + 1) for v in x[:5]] + [f"... ({len(x)} items)"]
            return [shorten(v, depth + 1) for v in x]
        return x

    found = {}
    for folder in (split_dir, split_dir.parent):
        for name in ("manifest.json", "dataset.json"):
            path = folder / name
            if name in found or not path.is_file():
                continue
            try:
                found[name] = {"path": str(path), "content": shorten(json.loads(path.read_text()))}
            except (OSError, ValueError) as exc:
                found[name] = {"path": str(path), "error": f"unreadable: {exc}"}
    return found


def dataset_fingerprint(dataset, progress: bool = False) -> str:
    """Hash of the names and bytes of a split's image and mask files (BLAKE2b, 16 hex digits)."""
    from tqdm import tqdm

    h = hashlib.blake2b(digest_size=8)
    root = Path(dataset.root)
    for name in tqdm(dataset.names, desc="fingerprint", disable=not progress, leave=False):
        for sub in ("images", "masks"):
            files = sorted((root / sub).glob(f"{name}.*"))
            for f in files:
                h.update(f"{sub}/{f.name}\0".encode())
                h.update(f.read_bytes())
    return h.hexdigest()


def _dataset_key(path: Path, taken: set) -> str:
    path = path.resolve()
    base = f"{path.parent.name}-{path.name}" if path.name in SPLITS else path.name
    base = "".join(c if c.isalnum() or c in "-_." else "_" for c in base) or "dataset"
    key, k = base, 2
    while key in taken:
        key, k = f"{base}_{k}", k + 1
    taken.add(key)
    return key


def _open_test(d) -> CanonicalDataset:
    """A test folder: a split folder, or a root with test/ or val/."""
    d = Path(d)
    split = "test" if (d / "test").is_dir() else ("val" if (d / "val").is_dir() else None)
    return CanonicalDataset(d, split)


def open_test_sets(test_dirs, max_images: int | None) -> dict[str, Subset]:
    """Open each test folder (a split folder, or a root with test/ or val/); key -> dataset."""
    if not test_dirs:
        raise CellsynthError("no test dataset given; pass --test DIR (a canonical split folder)")
    out, taken = {}, set()
    for d in test_dirs:
        ds = _open_test(d)
        out[_dataset_key(ds.root, taken)] = Subset(ds, max_images)
    return out


def _test_dirs(test_dirs, synthetic_tests) -> tuple[list, set]:
    """All test folders (``--test`` then ``--synthetic-test``, each split once) and the resolved
    split folders flagged synthetic."""
    dirs = list(test_dirs or ())
    seen = {Path(_open_test(d).root).resolve() for d in dirs}
    flagged = set()
    for d in synthetic_tests or ():
        root = Path(_open_test(d).root).resolve()
        flagged.add(root)
        if root not in seen:
            dirs.append(d)
            seen.add(root)
    return dirs, flagged


def _validity_block(results: dict, n_boot: int, seed: int) -> dict | None:
    """``results["validity"]`` of a finished run: None unless it has a synthetic and a real test
    set; ``{"error": line}`` when the rank agreement cannot be computed (never raises)."""
    try:
        if not validity.has_synthetic_and_real(results):
            return None
        return validity.compute_validity(results, n_boot=n_boot, seed=seed)
    except CellsynthError as exc:
        return {"error": first_line(exc, "failed")}
    except Exception as exc:  # a bug here must not cost the user the benchmark run
        return {"error": _error_line(exc)}


# ----------------------------------------------------------------------------- segmenters


def _resolve(name: str):
    """(class, None) or (None, error line) for a known name; raises for unknown names."""
    try:
        return get_segmenter_class(name), None
    except CellsynthError as exc:
        if name not in available():
            raise
        return None, str(exc)


def cache_key(name: str, options: dict, budget: dict, fingerprint: str) -> str:
    doc = json.dumps(
        {"segmenter": name, "options": options, "budget": budget, "train": fingerprint},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def _free_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _clean(x):
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _score_test_set(seg, name, tag, dkey, ds, tmp, n_samples, progress, fail) -> dict:
    """Predict and score every image of test set ``dkey`` with segmenter ``name`` (``tag``: see
    :func:`_run_one`); the first failure, reported by ``fail(stage, exc) -> line``, ends it. The
    predictions of ``n_samples`` images spread over the set go to ``tmp/samples``."""
    from tqdm import tqdm

    dres = new_dataset_result()
    show = set(sample_indices(len(ds), n_samples))
    desc = f"{name}{tag} on {dkey}"
    bar = tqdm(range(len(ds)), desc=desc, disable=not progress, leave=False)
    for i in bar:
        sample = ds[i]
        try:
            row, pred = score_image(seg, sample, f"{name} on {dkey}/{sample.name}")
        except Exception as exc:
            line = fail(f"predict {dkey}/{sample.name}", exc)
            dres.update(status="failed", error=line)
            break
        dres["images"].append(row)
        dres["predict_s"] += row["predict_s"]
        if i in show:
            write_labels(tmp / "samples" / f"{name}{tag}" / dkey / f"{sample.name}.tif", pred)
    return finish_dataset_result(dres)


def _load_cached(cls, opts: dict, cached: Path, res: dict, log: list):
    """The segmenter saved in the cache entry ``cached`` (``res`` says cached, trained and the
    training time it took); a fresh ``cls(**opts)`` when the entry is broken (noted in
    ``log``: it is trained again)."""
    try:
        seg = cls.load(cached)
        info = json.loads((cached / CACHE_INFO).read_text())
        res.update(cached=True, trained=True, train_s=float(info.get("train_s", 0.0)))
    except Exception as exc:  # a broken cache entry: train again
        log.append(f"== cache load failed, retraining\n{_error_line(exc)}")
        seg = cls(**opts)
    return seg


def _fit(seg, train, budget: dict, workdir: Path, progress: bool, res: dict, fail):
    """Train ``seg`` on ``train`` within ``budget`` in ``workdir`` (removed when left empty);
    the trained segmenter, or None when training failed (reported by ``fail``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        seg.fit(
            train,
            workdir,
            budget_minutes=budget.get("minutes"),
            epochs=budget.get("epochs"),
            progress=progress,
        )
        res["train_s"] = time.perf_counter() - t0
        res["trained"] = True
    except Exception as exc:
        res["train_s"] = time.perf_counter() - t0
        fail("fit", exc)
        seg = None
    for folder in (workdir, workdir.parent):  # no empty folders left behind
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return seg


def _save_cached(seg, cached: Path, name, opts, budget, train, train_fp, res: dict, fail) -> None:
    """Save the trained ``seg`` as the cache entry ``cached`` (atomically, with what it was
    trained on and how long it took); a failure is reported by ``fail``."""
    try:
        with atomic_dir(cached, overwrite=True) as ctmp:
            seg.save(ctmp)
            info = {
                "segmenter": name,
                "options": opts,
                "budget": budget,
                "train": str(train.root),
                "train_fingerprint": train_fp,
                "train_s": res["train_s"],
                "created": datetime.datetime.now().isoformat(timespec="seconds"),
            }
            write_text(ctmp / CACHE_INFO, json.dumps(_clean(info), indent=1))
    except Exception as exc:
        fail("save", exc)


def _score_test_sets(
    seg, res, log, name, tag, tests, tmp, n_samples, progress, client, failed, fail
):
    """Fill ``res["datasets"]``: every test set predicted and scored by ``seg`` (on the Dask
    workers with a ``client``, else here), or marked failed with ``res``'s error when there is
    no segmenter. ``failed`` and ``fail`` report a failure (see :func:`_run_one`)."""
    shipped = None
    if seg is not None and client is not None:
        from cellsynth.benchmark import cluster

        try:
            shipped = cluster.ship(client, seg)
        except Exception as exc:  # e.g. a model that cannot be pickled: predict here
            log.append(f"== dask: cannot send {name} to the workers; predicted here\n{exc}")

    try:
        for dkey, ds in tests.items():
            if seg is None:
                dres = new_dataset_result()
                dres.update(status="failed", error=res["error"])
            elif shipped is not None:
                dres = cluster.score_test_set(
                    client, shipped, name, tag, dkey, ds, tmp, n_samples, progress, failed
                )
            else:
                dres = _score_test_set(seg, name, tag, dkey, ds, tmp, n_samples, progress, fail)
            res["datasets"][dkey] = dres
    finally:
        if shipped is not None:
            cluster.release(client, shipped)


def _load_trained(cls, load, res, fail):
    """The trained segmenter saved in folder ``load`` (the CLI turns a shipped model's name into
    its folder), or None after recording the failure."""
    try:
        seg = cls.load(load)
    except Exception as exc:
        fail("load", exc)
        return None
    res["loaded"] = str(load)
    return seg


def _run_one(
    name,
    opts,
    budget,
    train,
    train_fp,
    tests,
    tmp,
    cache_dir,
    progress,
    n_samples,
    tag="",
    client=None,
):
    """Train/load, predict and score one segmenter; returns its result dict (never raises for
    the segmenter's own errors). ``tag`` is appended to the segmenter's name in the folders it
    writes (work/, samples/, logs/), so a second training of the same segmenter keeps apart.
    With a Dask ``client`` the trained segmenter is sent to every worker once and the test
    images are predicted and scored there (:mod:`cellsynth.benchmark.cluster`)."""
    res = {
        "status": "ok",
        "error": None,
        "options": opts,
        "budget": budget,
        "trained": False,
        "cached": False,
        "cache_key": None,
        "train_s": 0.0,
        "training": None,
        "datasets": {},
    }
    log = []

    def failed(stage, error, trace):
        res["status"] = "failed"
        line = f"{stage}: {error}"
        res["error"] = res["error"] or line
        log.append(f"== {stage}\n{trace}")
        return line

    def fail(stage, exc):
        return failed(stage, _error_line(exc), "".join(traceback.format_exception(exc)))

    cls, err = _resolve(name)
    seg = None
    if cls is None:
        res.update(status="failed", error=f"load: {err}")
    else:
        try:
            seg = cls(**opts)
        except Exception as exc:
            fail("options", exc)
    load = budget.get("load")
    if seg is not None and load:  # a trained model (a saved segmenter folder): no fit
        seg = _load_trained(cls, load, res, fail)
    if seg is not None and train is not None and not load:
        key = cache_key(name, opts, budget, train_fp) if train_fp else None
        res["cache_key"] = key
        cached = Path(cache_dir) / f"{name}-{key}" if cache_dir and key else None
        if cached is not None and (cached / CACHE_INFO).is_file():
            seg = _load_cached(cls, opts, cached, res, log)
        if not res["cached"]:
            seg = _fit(seg, train, budget, tmp / "work" / f"{name}{tag}", progress, res, fail)
            if seg is not None and cached is not None:
                _save_cached(seg, cached, name, opts, budget, train, train_fp, res, fail)
    if seg is not None and (res["trained"] or load):
        info = getattr(seg, "info", None)
        res["training"] = _clean(dict(info)) if isinstance(info, dict) and info else None
    _score_test_sets(
        seg, res, log, name, tag, tests, tmp, n_samples, progress, client, failed, fail
    )
    if log:
        write_text(tmp / "logs" / f"{name}{tag}.txt", "\n".join(log))
    return res


# ----------------------------------------------------------------------------- outputs


def _fmt(x):
    if x is None:
        return ""
    if isinstance(x, float):
        return "" if not math.isfinite(x) else f"{x:.6g}"
    return x


def results_rows(results: dict) -> list[dict]:
    """Flatten results into CSV rows: one per (segmenter, dataset) summary, then per image."""
    rows = []
    th = results["thresholds"]
    i75 = th.index(0.75) if 0.75 in th else None
    same = ("n_true", "n_pred", "tp50", "ap50", "mean_ap", "precision", "recall", "f1")
    same += ("pq", "sq", "rq", "aji", "fg_dice", "fg_iou")
    for sname, sres in results["segmenters"].items():
        for dkey, dres in sres["datasets"].items():
            base = {"segmenter": sname, "dataset": dkey, "train_s": sres["train_s"]}
            s = dres.get("summary") or {}
            row = {
                **base,
                "level": "dataset",
                "image": "",
                "status": dres["status"],
                "error": dres["error"] or "",
                "predict_s": dres.get("predict_s_per_image"),
                "count_error": s.get("mean_abs_count_error"),
                "confluence_error": s.get("mean_abs_confluence_error"),
                "ap75": s["ap"][i75] if s and i75 is not None else None,
            }
            row.update({k: s.get(k) for k in same})
            rows.append(row)
            for r in dres["images"]:
                row = {**base, "level": "image", "image": r["name"], "status": "ok", "error": ""}
                row.update({k: r.get(k) for k in CSV_COLUMNS if k in r})
                row["ap75"] = r["ap"][i75] if i75 is not None else None
                rows.append(row)
    return rows


def write_csv(path: Path, results: dict) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in results_rows(results):
        writer.writerow({k: _fmt(row.get(k)) for k in CSV_COLUMNS})
    write_text(path, buf.getvalue())


def _segmenter_names(segmenters, budgets: dict, options: dict) -> list[str]:
    """The names to run (each known, none twice; budgets and options only for them)."""
    names = [s.strip() for s in (segmenters if not isinstance(segmenters, str) else [segmenters])]
    names = [s for s in names if s]
    if not names:
        raise CellsynthError("no segmenter given; pass --segmenters classical,cellpose,...")
    if len(set(names)) != len(names):
        raise CellsynthError(f"segmenter listed twice: {', '.join(names)}")
    for name in names:
        _resolve(name)  # unknown names fail here, before any work
    for what, table in (("budget", budgets), ("options", options)):
        extra = sorted(set(table) - set(names))
        if extra:
            raise CellsynthError(f"{what} given for segmenter(s) not being run: {', '.join(extra)}")
    return names


def _split_record(ds, fingerprint) -> dict:
    """What results.json says of a training split."""
    return {
        "path": str(Path(ds.root).resolve()),
        "n_images": len(ds),
        "fingerprint": fingerprint,
        "provenance": _provenance(Path(ds.root)),
    }


def _test_set_record(ds, synthetic_roots) -> dict:
    """What results.json says of a test set (``synthetic`` when its root is one of
    ``synthetic_roots``)."""
    rec = {
        "path": str(Path(ds.root).resolve()),
        "n_images": len(ds),
        "names": list(ds.names),
        "provenance": _provenance(Path(ds.root)),
    }
    if Path(ds.root).resolve() in synthetic_roots:
        rec["synthetic"] = True
    return rec


def _training_splits(train_dir, train_real_dir, cache_dir, progress: bool) -> tuple:
    """``((train, fingerprint), (train_real, fingerprint))`` of a run: each None when its
    folder is not given, a fingerprint only with a ``cache_dir``; ``train_real_dir`` must be
    another split than ``train_dir``."""
    train, train_fp = None, None
    if train_dir is not None:
        train = CanonicalDataset(train_dir, "train")
        train_fp = dataset_fingerprint(train, progress) if cache_dir else None
    train_real, train_real_fp = None, None
    if train_real_dir is not None:
        train_real = CanonicalDataset(train_real_dir, "train")
        if Path(train_real.root).resolve() == Path(train.root).resolve():
            raise CellsynthError(
                f"{train_real_dir}: --train-real is the same split as --train; give a real one"
            )
        train_real_fp = dataset_fingerprint(train_real, progress) if cache_dir else None
    return (train, train_fp), (train_real, train_real_fp)


def run_benchmark(
    train_dir,
    test_dirs,
    segmenters,
    out,
    budgets: dict | None = None,
    options: dict | None = None,
    cache_dir=None,
    overwrite: bool = False,
    progress: bool = True,
    max_images: int | None = None,
    n_samples: int = 3,
    train_real_dir=None,
    synthetic_tests=(),
    n_boot: int = 1000,
    seed: int = 0,
    dask=None,
) -> dict:
    """Benchmark segmenters on canonical test datasets and write the results folder ``out``.

    Args:
        train_dir: canonical training split (a split folder, or a root with ``train/``), or None
            to use the segmenters as they are (pretrained / untrained).
        test_dirs: one or more canonical test split folders (or roots with ``test/``).
        segmenters: segmenter names (see ``cellsynth.benchmark.segmenters.available()``).
        out: output folder (must not exist unless ``overwrite``).
        budgets: name -> ``{"minutes": M, "epochs": N}`` training budget (missing: None).
        options: name -> constructor keyword options.
        cache_dir: folder of cached trained models (None: no cache).
        overwrite: replace an existing ``out``.
        progress: show tqdm progress bars.
        max_images: use at most this many images of each test dataset.
        n_samples: images per dataset whose predictions are kept and shown in the report.
        train_real_dir: a second (real) training split: each segmenter is also trained on it
            and tested on the same test sets; its results go to the segmenter's ``train_real``
            block and ``results["train_transfer"]`` holds AP(trained on ``train_dir``) /
            AP(trained on ``train_real_dir``).
        synthetic_tests: test folders that are synthetic (besides those with a cellsynth
            ``manifest.json``); tested like ``test_dirs`` and marked ``"synthetic": true``.
        n_boot, seed: bootstrap samples and seed of the rank agreement (``results["validity"]``,
            computed when the run has a synthetic and a real test set, see
            :mod:`cellsynth.benchmark.validity`).
        dask: None, or a Dask cluster ("local:N", a scheduler address or scheduler file, see
            :mod:`cellsynth.cluster`): the test images are predicted and scored on its workers
            (training stays here; the results are those of a run without it).
    Returns: the results dict (also written to ``out/results.json``).
    """
    from tqdm import tqdm

    from cellsynth.benchmark.report import write_report

    out = Path(out)
    check_writable(out, overwrite)
    budgets, options = dict(budgets or {}), dict(options or {})
    names = _segmenter_names(segmenters, budgets, options)
    if max_images is not None and max_images < 1:
        raise CellsynthError(f"--max-images must be >= 1, got {max_images}")
    if int(n_boot) < 1:
        raise CellsynthError(f"--bootstrap must be >= 1, got {n_boot}")
    if train_real_dir is not None and train_dir is None:
        raise CellsynthError("--train-real needs --train (the synthetic training split)")
    dask = parse_dask(dask)
    (train, train_fp), (train_real, train_real_fp) = _training_splits(
        train_dir, train_real_dir, cache_dir, progress
    )
    all_tests, flagged = _test_dirs(test_dirs, synthetic_tests)
    tests = open_test_sets(all_tests, max_images)

    from cellsynth import __version__

    results = {
        "cellsynth_version": __version__,
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "thresholds": list(metrics.AP_THRESHOLDS),
        "train": None if train is None else _split_record(train, train_fp),
        "datasets": {k: _test_set_record(ds, flagged) for k, ds in tests.items()},
        "segmenters": {},
    }
    if train_real is not None:
        results["train_real"] = _split_record(train_real, train_real_fp)
    reach = dask_client(dask) if dask is not None else contextlib.nullcontext()
    with reach as client, atomic_dir(out, overwrite=overwrite) as tmp:
        for name in tqdm(names, desc="segmenters", disable=not progress):
            opts = dict(options.get(name) or {})
            budget = {k: v for k, v in dict(budgets.get(name) or {}).items() if v is not None}
            common = dict(tests=tests, tmp=tmp, cache_dir=cache_dir, progress=progress)
            results["segmenters"][name] = _run_one(
                name, opts, budget, train, train_fp, n_samples=n_samples, client=client, **common
            )
            _free_memory()
            if train_real is not None:
                results["segmenters"][name]["train_real"] = _run_one(
                    name,
                    opts,
                    budget,
                    train_real,
                    train_real_fp,
                    n_samples=0,
                    tag=TRAIN_REAL_TAG,
                    client=client,
                    **common,
                )
                _free_memory()
        results = _clean(results)
        if train_real is not None:
            results["train_transfer"] = _clean(validity.train_transfer(results))
        block = _validity_block(results, n_boot, seed)
        if block is not None:
            results["validity"] = _clean(block)
        write_text(tmp / RESULTS_JSON, json.dumps(results, indent=1))
        write_csv(tmp / RESULTS_CSV, results)
        write_report(tmp, results)
    return results


def load_results(out) -> dict:
    """Read ``OUT/results.json`` (clear error when missing or corrupt)."""
    path = Path(out) / RESULTS_JSON
    if not path.is_file():
        raise CellsynthError(f"{path}: no benchmark results here; run `cellsynth benchmark run`")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CellsynthError(f"{path}: corrupt results ({exc}); run the benchmark again") from None


def revalidate(out, synthetic=(), n_boot: int = 1000, seed: int = 0) -> dict:
    """Recompute ``results["validity"]`` of the results folder ``out`` and rewrite
    ``results.json`` and ``report.html`` (each atomically). Test sets named in ``synthetic``
    (keys or paths) are marked ``"synthetic": true`` for good.

    Returns: the validity dict. Raises: CellsynthError (nothing is written then).
    """
    from cellsynth.benchmark.report import render_report

    out = Path(out)
    results = load_results(out)
    block = validity.compute_validity(results, synthetic, n_boot=n_boot, seed=seed)
    for key in block["synthetic"]:
        if block["reasons"].get(key) == "flagged":
            results["datasets"][key]["synthetic"] = True
    results["validity"] = _clean(block)
    transfer = validity.train_transfer(results)
    if transfer is not None:
        results["train_transfer"] = _clean(transfer)
    page = render_report(out, results)  # fails before anything is written
    write_text(out / RESULTS_JSON, json.dumps(results, indent=1))
    write_text(out / REPORT_HTML, page)
    return results["validity"]


def rewrite_report(out) -> Path:
    """Rebuild ``OUT/report.html`` from ``OUT/results.json`` and ``OUT/samples``."""
    from cellsynth.benchmark.report import write_report

    out = Path(out)
    return write_report(out, load_results(out))


__all__ = [
    "run_benchmark",
    "load_results",
    "rewrite_report",
    "revalidate",
    "dataset_fingerprint",
    "check_prediction",
    "cache_key",
    "Subset",
]
