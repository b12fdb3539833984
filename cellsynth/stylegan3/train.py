"""``cellsynth stylegan3 train``: options -> run folder -> one training process per device.

:func:`train` checks the options and the dataset (and a resumed snapshot against them) before
anything is written, resolves ``--resume latest``, creates
``OUTDIR/NNNNN-<cfg>-<data>-gpusG-batchB-gammaX/`` with ``training_options.json`` and launches
:func:`cellsynth.stylegan3.training_loop.training_process` through
:func:`cellsynth.training.distributed.launch` (``--gpus N`` processes).

``--resume`` from a snapshot of a run folder in ``OUTDIR`` continues in that run folder (its kimg
count goes on, its snapshots and logs stay together); a snapshot from elsewhere starts a new run
folder from its weights. The run folder is locked while training (:mod:`cellsynth.lock`), the
temporary files of an interrupted snapshot write are removed at the start, and a new run folder
is removed again when the run fails before its first snapshot.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from cellsynth.errors import CellsynthError
from cellsynth.precision import cpu_kind
from cellsynth.stylegan3.configs import ARCH_DEFAULTS, CONFIGS, TRAIN_ARCH
from cellsynth.training.rundir import RUN_FOLDER as _RUN

METRICS = ("none", "realism", "fid50k_full", "kid50k_full", "fid5k", "kid5k")


def parse_metrics(text: str | list | None) -> list[str]:
    """``"realism,fid50k_full"`` -> list of metric names (checked); ``none`` -> []."""
    if text is None:
        return []
    names = text if isinstance(text, list) else [t.strip() for t in str(text).split(",")]
    names = [n for n in names if n and n != "none"]
    for n in names:
        if n not in METRICS:
            raise CellsynthError(f"unknown metric {n!r}; use any of {', '.join(METRICS)}")
    return names


def default_options(**kw) -> dict:
    """The training options with the StyleGAN3 defaults, updated by ``kw``."""
    opts = dict(
        outdir=None,
        cfg="stylegan3-t",
        data=None,
        gpus=1,
        batch=32,
        batch_gpu=None,
        gamma=None,
        mirror=False,
        aug="ada",
        aug_preset="geom",
        p=0.2,
        target=0.6,
        ada_kimg=500,
        kimg=25000,
        tick=4,
        snap=50,
        resume=None,
        **{k: ARCH_DEFAULTS[k] for k in TRAIN_ARCH},
        glr=None,
        dlr=0.002,
        cond=False,
        seed=0,
        workers=3,
        fp32=False,
        metrics=[],
        inception=None,
        ops_impl="auto",
        max_minutes=None,
        ema_kimg=None,
        ema_rampup=0.05,
        dry_run=False,
        progress=False,
        device=None,
        desc=None,
    )
    unknown = set(kw) - set(opts)
    if unknown:
        raise CellsynthError(f"unknown training options: {sorted(unknown)}")
    opts.update(kw)
    return opts


def check_options(opts: dict) -> dict:
    """Validate and complete ``opts`` (defaults that depend on others); returns a new dict."""
    from cellsynth.stylegan3.training_loop import CFG_DEFAULTS, training_precision

    opts = dict(opts)
    if opts["cfg"] not in CONFIGS:
        raise CellsynthError(f"unknown --cfg {opts['cfg']!r}; use one of {', '.join(CONFIGS)}")
    if not opts.get("outdir"):
        raise CellsynthError("--outdir is required")
    if not opts.get("data"):
        raise CellsynthError("--data is required (a masks zip from 'cellsynth dataset pack')")
    if not Path(opts["data"]).is_file():
        raise CellsynthError(
            f"{opts['data']}: no such masks zip; make one with 'cellsynth dataset pack --kind masks'"
        )
    gpus, batch = int(opts["gpus"]), int(opts["batch"])
    if gpus < 1 or batch < 1:
        raise CellsynthError("--gpus and --batch must be at least 1")
    batch_gpu = int(opts.get("batch_gpu") or batch // gpus)
    if batch_gpu < 1 or batch % (batch_gpu * gpus) != 0:
        raise CellsynthError(
            f"--batch {batch} must be a multiple of --gpus {gpus} times --batch-gpu {batch_gpu}"
        )
    opts["batch_gpu"] = batch_gpu
    if opts["aug"] not in ("noaug", "ada", "fixed"):
        raise CellsynthError(f"--aug must be noaug, ada or fixed, not {opts['aug']!r}")
    if not 0 <= float(opts["p"]) <= 1:
        raise CellsynthError(f"--p must be in [0, 1], got {opts['p']}")
    if not 0 <= float(opts["target"]) <= 1:
        raise CellsynthError(f"--target must be in [0, 1], got {opts['target']}")
    if opts["map_depth"] is None:
        opts["map_depth"] = CFG_DEFAULTS[opts["cfg"]]["map_depth"]
    if opts["glr"] is None:
        opts["glr"] = CFG_DEFAULTS[opts["cfg"]]["glr"]
    if opts["gamma"] is None:
        raise CellsynthError("--gamma is required (R1 weight; e.g. 0.5 for 64x64, 8 for 256x256)")
    if float(opts["gamma"]) < 0:
        raise CellsynthError("--gamma must be >= 0")
    if opts.get("ops_impl") not in (None, "auto", "ref", "cpu", "cuda"):
        raise CellsynthError(f"--ops-impl must be auto, ref, cpu or cuda, not {opts['ops_impl']!r}")
    if opts.get("ema_kimg") is None:
        opts["ema_kimg"] = batch * 10 / 32
    opts["precision"], opts["cpu"] = training_precision(opts), cpu_kind()  # once per run
    opts["metrics"] = parse_metrics(opts.get("metrics"))
    for key in ("kimg", "tick"):
        if float(opts[key]) <= 0:
            raise CellsynthError(f"--{key} must be positive")
    if opts.get("resume") == "latest":
        from cellsynth.stylegan3.snapshot import find_latest

        opts["resume"] = str(find_latest(opts["outdir"]))
    elif opts.get("resume"):
        from cellsynth import models
        from cellsynth.stylegan3.snapshot import load_snapshot

        load_snapshot(opts["resume"])  # fail early on a missing/corrupt file
        opts["resume"] = str(models.lookup(opts["resume"], "stylegan3"))  # a shipped name: its file
    if any(m.startswith(("fid", "kid")) for m in opts["metrics"]):
        from cellsynth.stylegan3.metrics import inception_path

        opts["inception"] = str(inception_path(opts.get("inception")))
    return opts


def check_data(opts: dict):
    """Open and check the masks zip for these options (before any folder is made).

    Checks that it is a readable masks dataset, that ``--cond`` finds class labels, that the
    images can be shared by ``--gpus`` processes and that a resumed snapshot fits the data and
    the network options. Returns the :class:`~cellsynth.datasets.pack.MaskZipDataset`.
    """
    from cellsynth.datasets.pack import MaskZipDataset

    data = MaskZipDataset(opts["data"])
    if opts.get("cond") and not (data.has_labels and data.label_dim):
        raise CellsynthError(
            f"{opts['data']}: --cond needs class labels in the zip (pack it with --cond KEY)"
        )
    total = len(data) * (2 if opts.get("mirror") else 1)
    if total < int(opts["gpus"]):
        raise CellsynthError(
            f"{opts['data']}: {total} images cannot be split over {opts['gpus']} processes"
        )
    if opts.get("resume"):
        from cellsynth.stylegan3.snapshot import load_snapshot
        from cellsynth.stylegan3.training_loop import build_args, check_resume

        c_dim = data.label_dim if opts.get("cond") else 0
        cfg = load_snapshot(opts["resume"])["config"]
        check_resume(cfg, opts, data, build_args(opts, data, c_dim))
    return data


def resume_folder(opts: dict) -> Path | None:
    """The run folder to continue: the resumed snapshot's own, when that is a run folder in
    ``--outdir``; None when the run needs a new run folder."""
    if not opts.get("resume"):
        return None
    folder = Path(opts["resume"]).resolve().parent
    outdir = Path(opts["outdir"]).resolve()
    if (
        folder.parent == outdir
        and _RUN.match(folder.name)
        and (folder / "training_options.json").is_file()
    ):
        return folder
    return None


def run_description(opts: dict) -> str:
    """``<cfg>-<data>-gpusG-batchB-gammaX`` (the run-folder name after its number)."""
    data = Path(opts["data"]).name
    for suffix in (".zip",):
        data = data[: -len(suffix)] if data.endswith(suffix) else data
    desc = f"{opts['cfg']}-{data}-gpus{opts['gpus']}-batch{opts['batch']}-gamma{opts['gamma']:g}"
    if opts.get("desc"):
        desc += f"-{opts['desc']}"
    return desc


def train(**kw) -> Path | None:
    """Train StyleGAN2/3 on a masks zip; returns the run folder (None for a dry run).

    Keyword arguments are the options of :func:`default_options` (the CLI flags).
    """
    from cellsynth.atomic import check_folder_target
    from cellsynth.lock import lock_folder
    from cellsynth.stylegan3.snapshot import clean_stale_temporaries, list_snapshots
    from cellsynth.stylegan3.training_loop import training_process
    from cellsynth.training.distributed import launch
    from cellsynth.training.rundir import make_run_dir

    opts = check_options(default_options(**kw))
    check_folder_target(opts["outdir"], "--outdir")
    if opts["ops_impl"] and opts["ops_impl"] != "auto":
        os.environ["CELLSYNTH_OPS_IMPL"] = opts["ops_impl"]
    data = check_data(opts)
    if opts["dry_run"]:
        import json

        n = len(data) * (2 if opts["mirror"] else 1)
        print(json.dumps({k: v for k, v in opts.items() if k != "device"}, indent=2, default=str))
        print(
            f"dataset: {n} images, {data.resolution}px, {data.channels} channels, "
            f"encoding {data.encoding}, labels {data.has_labels}"
        )
        print("dry run: nothing trained, no run folder made")
        return None
    data.close()
    saved = {k: v for k, v in opts.items() if k not in ("device", "dry_run")}
    run_dir = resume_folder(opts)
    created = run_dir is None
    outdir_made = not Path(opts["outdir"]).exists()
    if created:
        run_dir = make_run_dir(opts["outdir"], run_description(opts), saved)
    try:
        with lock_folder(run_dir, "stylegan3 train"):
            clean_stale_temporaries(run_dir)
            launch(training_process, int(opts["gpus"]), args=(opts, str(run_dir)))
    except BaseException:
        if created and not list_snapshots(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)  # a failed start leaves no run folder
            if outdir_made:
                with contextlib.suppress(OSError):
                    Path(opts["outdir"]).rmdir()  # only when nothing else is in it
        raise
    return run_dir
