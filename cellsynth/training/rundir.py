"""Run folders ``OUTDIR/NNNNN-description/``, numbered like StyleGAN3's."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from cellsynth.atomic import write_text

RUN_FOLDER = re.compile(r"^(\d{5})-")  # the name of a run folder starts with its number
_RUN = RUN_FOLDER


def next_run_id(outdir: str | os.PathLike) -> int:
    """One more than the highest ``NNNNN-`` prefix in ``outdir`` (0 if none)."""
    outdir = Path(outdir)
    ids = [int(m.group(1)) for p in outdir.glob("*") if (m := _RUN.match(p.name))]
    return max(ids, default=-1) + 1


def sanitize(text: str) -> str:
    """Make ``text`` safe for a folder name."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", str(text)).strip("_") or "run"


def make_run_dir(outdir: str | os.PathLike, desc: str, options: dict | None = None) -> Path:
    """Create ``OUTDIR/NNNNN-desc`` (race-free) and write ``training_options.json`` into it."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    while True:
        run_dir = outdir / f"{next_run_id(outdir):05d}-{sanitize(desc)}"
        try:
            run_dir.mkdir()
            break
        except FileExistsError:  # another process took this number
            continue
    if options is not None:
        write_text(run_dir / "training_options.json", json.dumps(options, indent=2, default=str))
    return run_dir
