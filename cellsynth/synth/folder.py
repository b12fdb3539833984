"""The output folder of a synth run: its lock, and what may happen to what is already in it.

One run writes ``OUT`` at a time: it holds ``OUT/.cellsynth.lock`` (a shard holds
``OUT/.cellsynth.shard-i-of-n.lock``, so the shards of one run may write together, but not
beside a whole run). An existing folder is continued only with ``--resume`` or ``--shard``, and
only with the options, checkpoints and seed list it was started with (``synth_options.json``),
so manifest.json and annotations.json always list every sample on disk; ``--overwrite``
replaces only a folder that ``synth`` made. A run that fails before its first sample is
complete removes the folder it created.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

from cellsynth.atomic import output_folder, write_text
from cellsynth.errors import CellsynthError
from cellsynth.lock import LOCK_NAME, describe, holder, lock_folder
from cellsynth.synth.manifest import dumps, shard_tag
from cellsynth.synth.sample import PARTIAL, sample_name
from cellsynth.tools.parse import parse_seeds

OPTIONS_FILE = "synth_options.json"


def options_document(run: dict) -> dict:
    """``synth_options.json``: the options (seeds apart) and checkpoints, and the seed list."""
    options = run["options"]
    return {
        "format": "cellsynth-synth-options",
        **run,
        "options": {k: v for k, v in options.items() if k != "seeds"},
        "seeds": options["seeds"],
    }


def lock_name(shard) -> str:
    """The lock file a run (or shard ``(i, N)``) holds."""
    return LOCK_NAME if shard is None else f".cellsynth.{shard_tag(shard)}.lock"


def is_lock(name: str) -> bool:
    return name.startswith(".cellsynth.") and name.endswith(".lock")


def has_samples(out: Path) -> bool:
    """Whether ``out`` holds a complete sample (worth keeping for --resume after a failure)."""
    return any((out / "masks").glob("seed*.tif"))


def check_other_locks(out: Path, mine: str) -> None:
    """A whole run and shard runs exclude each other (shards of one run may run together)."""
    names = [LOCK_NAME] if mine != LOCK_NAME else [p.name for p in out.glob(".cellsynth.*.lock")]
    for name in names:
        if name == mine:
            continue
        doc = holder(out, name)
        if doc is not None:
            raise CellsynthError(
                f"{out} is in use by {describe(doc)} (lock {name}); wait for it to finish, or "
                f"delete {out / name} if no run is using the folder"
            )


@contextlib.contextmanager
def open_output(out: Path, run: dict, seed_list: list[int], run_opts):
    """Create (or continue, or replace) and lock ``out`` for the ``with`` block; on exit the
    lock goes, and a folder this run created without a complete sample goes too.

    ``run_opts``: the :class:`~cellsynth.synth.options.RunOptions` (resume, shard, overwrite).
    """
    mine = lock_name(run_opts.shard)
    opts_doc = options_document(run)
    with contextlib.ExitStack() as stack:
        stack.enter_context(output_folder(out, keep=has_samples))
        stack.enter_context(lock_folder(out, "synth", mine))
        check_other_locks(out, mine)
        existing = any(not is_lock(p.name) for p in out.iterdir())
        if existing and not (run_opts.resume or run_opts.overwrite or run_opts.shard):
            raise CellsynthError(
                f"{out} already exists; pass --resume to continue it, or --overwrite to replace it"
            )
        if existing and run_opts.overwrite:
            _clear(out, keep=mine)
        elif existing:
            check_resumable(out, opts_doc, seed_list)
        for sub in ("images", "masks", "spots", PARTIAL):
            (out / sub).mkdir(parents=True, exist_ok=True)
        if not (out / OPTIONS_FILE).is_file():
            write_text(out / OPTIONS_FILE, dumps(opts_doc))
        yield out


def _clear(out: Path, keep: str) -> None:
    """Empty a folder that ``synth`` made (it has synth_options.json), all but ``keep``."""
    if not (out / OPTIONS_FILE).is_file():
        raise CellsynthError(
            f"{out}: not a `cellsynth synth` output (no {OPTIONS_FILE}); "
            "refusing to delete it, choose another --out"
        )
    for p in out.iterdir():
        if p.name == keep:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _read_options(out: Path) -> dict:
    path = out / OPTIONS_FILE
    if not path.is_file():
        raise CellsynthError(f"{out}: not a `cellsynth synth` output (no {OPTIONS_FILE})")
    try:
        prev = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CellsynthError(f"{path}: not valid JSON ({exc}); use a new --out") from None
    if not isinstance(prev, dict):
        raise CellsynthError(f"{path}: not a `cellsynth synth` options file; use a new --out")
    return prev


def check_resumable(out: Path, opts_doc: dict, seed_list: list[int]) -> None:
    """Refuse to continue ``out`` with other options, checkpoints or seeds than it was made with.

    The seed list must be the one the folder was started with, so that manifest.json and
    annotations.json always list every sample on disk.
    """
    prev = _read_options(out)
    recorded = prev.pop("seeds", None)  # folders of earlier versions do not record them
    if dumps(prev) != dumps({k: v for k, v in opts_doc.items() if k != "seeds"}):
        raise CellsynthError(
            f"{out}: was made with other options or checkpoints (see {OPTIONS_FILE}); use "
            "the same options to resume, or a new --out"
        )
    given = opts_doc["seeds"]
    if recorded is not None:
        try:
            same = parse_seeds(recorded) == seed_list
        except CellsynthError:
            same = False
        if not same:
            raise CellsynthError(
                f"{out}: was started with --seeds {_clip(recorded)}, not {_clip(given)}; "
                "--resume and --shard continue the same seed list (make other seeds in a new "
                "--out)"
            )
    wanted = {sample_name(s) for s in seed_list}
    on_disk = {p.stem for sub in ("images", "masks", "spots") for p in (out / sub).glob("seed*")}
    extra = sorted(on_disk - wanted)
    if extra:
        raise CellsynthError(
            f"{out}: holds samples of seeds outside --seeds {_clip(given)} "
            f"({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}); resume with the seed "
            "list the folder was started with, or use a new --out"
        )


def _clip(text, n: int = 40) -> str:
    text = str(text)
    return text if len(text) <= n else text[: n - 3] + "..."
