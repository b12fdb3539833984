"""Bad-input corpus: every case runs ``cellsynth`` as a subprocess; prints JSON totals.

Each case gets a fresh folder with its inputs. A case expecting an error is *clean* when the
command exits with status 2, prints exactly one line on stderr (``error: ...``, no traceback)
and leaves no new or changed file in its folder; *traceback* when stderr holds a Python
traceback; *silent* when the command exits 0 (the bad input was accepted); *partial* when it
failed without a traceback but left files behind; *other* for any other failure (several
lines, another exit status). A case expecting a count (``report``) is clean when the command
exits 0 and prints the expected text, silent otherwise.

Usage::

    nice -n 19 .venv/bin/python perf/bad_input_corpus.py [--only NAME,...] [--keep] > out.json

The error cases and their inputs are those of ``tests/bad_inputs.py`` (the corpus that
``tests/test_reliability.py`` runs in-process). Inputs are tiny (32x32 images, a StyleGAN2
snapshot with 16-channel layers trained on 4 images); the whole corpus runs in about two minutes
on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the corpus is shared with tests/test_reliability.py
from bad_inputs import (  # noqa: E402
    CORPUS,
    ORPHAN_ANNOTATIONS,
    SYN,
    TINY_SG3,
    coco,
    disks,
    tif,
    tree,
)

EXE = os.environ.get("CELLSYNTH_EXE", str(ROOT / ".venv" / "bin" / "cellsynth"))


def run(args, cwd=None, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(
        [EXE, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def must(args):
    r = run(args)
    if r.returncode != 0:
        raise SystemExit(f"setup failed: {' '.join(map(str, args))}\n{r.stderr[-2000:]}")
    return r


# ------------------------------------------------------------------------------ shared inputs
def make_shared(base: Path) -> dict:
    s = {"base": base}
    s["canon"] = base / "canon"
    must(["dataset", "simulate", "--out", s["canon"], "--num", "4", "--splits", "1,0,0", *SYN])
    s["zip"] = base / "masks.zip"
    must(["dataset", "pack", "--kind", "masks", "--source", s["canon"], "--dest", s["zip"],
          "--resolution", "32", "--no-progress"])  # fmt: skip
    s["binzip"] = base / "binary.zip"
    must(["dataset", "pack", "--kind", "masks", "--source", s["canon"], "--dest", s["binzip"],
          "--resolution", "32", "--encoding", "binary", "--no-progress"])  # fmt: skip
    s["pairs"] = base / "pairs"
    must(["dataset", "pack", "--kind", "pairs", "--source", s["canon"], "--dest", s["pairs"],
          "--size", "32", "--no-progress"])  # fmt: skip
    runs = base / "runs"
    must(["stylegan3", "train", "--outdir", runs, "--data", s["zip"], *TINY_SG3])
    s["snap"] = sorted(runs.glob("*/network-snapshot-*.pt"))[-1]
    img, lab = disks()
    s["img"] = tif(base / "img.tif", img)
    s["img3"] = tif(base / "img3.tif", np.stack([img] * 3, -1))
    s["lab"] = tif(base / "lab.tif", lab)
    s["synth_done"] = _synth_done
    s["lock_pid"] = os.getpid()  # this script: alive, and not the command's own PID
    return s


def _synth_done(d: Path, seeds="0-2") -> Path:
    out = d / "syn"
    must(["synth", "--out", out, "--seeds", seeds, *SYN])
    return out


# ------------------------------------------------------------------------------------ cases
# A case: (name, kind, setup(case_dir, shared) -> argv); kind "error" or ("report", text).
# The error cases are tests/bad_inputs.py's CORPUS; the report case is counted here only.
def _orphan_counted(d, s):
    js, imgs = coco(d, ORPHAN_ANNOTATIONS)
    return ["dataset", "import", "coco", "--annotations", js, "--images", imgs,
            "--out", d / "out", "--no-progress"]  # fmt: skip


CASES = [(name, "error", setup) for name, setup in CORPUS.items()]
CASES.append(("coco_orphan_annotation_counted", ("report", "orphan 1"), _orphan_counted))


# ----------------------------------------------------------------------------------- runner
def classify(kind, proc, before: dict, after: dict) -> str:
    err = proc.stderr
    if "Traceback (most recent call last)" in err:
        return "traceback"
    if isinstance(kind, tuple):  # ("report", text): accepted, and the count is reported
        return "clean" if proc.returncode == 0 and kind[1] in proc.stdout else "silent"
    if proc.returncode == 0:
        return "silent"
    changed = [k for k in after if before.get(k) != after[k]]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    one_line = len(lines) == 1 and lines[0].startswith("error: ")
    if changed:
        return "partial"
    if proc.returncode == 2 and one_line:
        return "clean"
    return "other"


def run_case(name, kind, setup, base: Path, shared: dict) -> dict:
    d = base / name
    d.mkdir()
    argv = setup(d, shared)
    before = tree(d)
    t0 = time.time()
    proc = run(argv, cwd=d)
    after = tree(d)
    verdict = classify(kind, proc, before, after)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    return {
        "case": name,
        "verdict": verdict,
        "exit": proc.returncode,
        "stderr_lines": len(lines),
        "stderr_last": lines[-1][:300] if lines else "",
        "new_files": sorted(k for k in after if before.get(k) != after[k])[:5],
        "seconds": round(time.time() - t0, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="Comma list of case names.")
    ap.add_argument("--keep", action="store_true", help="Keep the work folder.")
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None
    base = Path(tempfile.mkdtemp(prefix="cellsynth-corpus-"))
    t0 = time.time()
    try:
        shared = make_shared(base / "_shared")
        results = [
            run_case(name, kind, fn, base, shared)
            for name, kind, fn in CASES
            if only is None or name in only
        ]
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    totals = {k: 0 for k in ("clean", "traceback", "partial", "silent", "other")}
    for r in results:
        totals[r["verdict"]] += 1
    doc = {
        "cases": len(results),
        "totals": totals,
        "seconds": round(time.time() - t0, 1),
        "exe": EXE,
        "results": results,
    }
    json.dump(doc, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
