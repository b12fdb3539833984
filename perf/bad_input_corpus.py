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

Inputs are tiny (32x32 images, a StyleGAN2 snapshot with 16-channel layers trained on 4 images);
the whole corpus runs in about two minutes on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXE = os.environ.get("CELLSYNTH_EXE", str(ROOT / ".venv" / "bin" / "cellsynth"))
LONG = "n" * 300  # longer than the 255 bytes a file name may have
TINY_SG3 = [
    "--gamma", "1", "--batch", "4", "--cbase", "512", "--cmax", "16", "--map-depth", "1",
    "--z-dim", "16", "--w-dim", "16", "--kimg", "0.004", "--tick", "0.004", "--snap", "1",
    "--workers", "1", "--cfg", "stylegan2", "--no-progress",
]  # fmt: skip
TINY_P2P = [
    "--ngf", "4", "--ndf", "4", "--n_downsample_global", "1", "--n_blocks_global", "1",
    "--num_D", "1", "--n_layers_D", "1", "--max_iters", "1", "--loadSize", "32",
    "--fineSize", "32", "--resize_or_crop", "none", "--no_vgg_loss", "--no-progress",
]  # fmt: skip
SYN = ["--size", "32", "--mean-radius", "5", "--no-progress"]


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


def tree(folder: Path) -> dict:
    """Every path below ``folder``: files with their size and mtime, folders by name only (a
    file made and removed again inside a folder changes nothing that stays)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            try:
                st = p.lstat()
            except OSError:
                continue
            out[str(p.relative_to(folder))] = (
                (st.st_size, st.st_mtime_ns) if p.is_file() else "folder"
            )
    return out


def tif(path: Path, array) -> Path:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.asarray(array))
    return path


def disks(n=32, seed=0):
    rng = np.random.default_rng(seed)
    lab = np.zeros((n, n), np.uint16)
    yy, xx = np.ogrid[:n, :n]
    for k in range(1, 4):
        cy, cx = rng.integers(6, n - 6, 2)
        lab[((yy - cy) ** 2 + (xx - cx) ** 2 <= 16) & (lab == 0)] = k
    img = (lab > 0).astype(np.uint8) * 200 + rng.integers(0, 30, (n, n)).astype(np.uint8)
    return img, lab


def pairs_dir(root: Path, items) -> Path:
    """``root/images/NAME.tif`` + ``root/masks/NAME.tif`` from (name, image, labels)."""
    for name, img, lab in items:
        tif(root / "images" / f"{name}.tif", img)
        tif(root / "masks" / f"{name}.tif", lab)
    return root


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
    return s


# ------------------------------------------------------------------------------------ cases
# A case: (name, kind, setup(case_dir, shared) -> argv); kind "error" or ("report", text).
CASES = []


def case(name, kind="error"):
    def deco(fn):
        CASES.append((name, kind, fn))
        return fn

    return deco


def blocker(d: Path) -> Path:
    (d / "blocker").write_text("a file where a folder is expected\n")
    return d / "blocker"


# --- failed writes (the OS refuses)
@case("import_out_under_file")
def _(d, s):
    return ["dataset", "import", "embedseg", s["canon"], "--out", blocker(d) / "out",
            "--no-progress"]  # fmt: skip


@case("import_out_name_too_long")
def _(d, s):
    return ["dataset", "import", "embedseg", s["canon"], "--out", d / LONG, "--no-progress"]


@case("pack_masks_dest_under_file")
def _(d, s):
    return ["dataset", "pack", "--kind", "masks", "--source", s["canon"], "--dest",
            blocker(d) / "m.zip", "--resolution", "32", "--no-progress"]  # fmt: skip


@case("pack_pairs_dest_name_too_long")
def _(d, s):
    return ["dataset", "pack", "--kind", "pairs", "--source", s["canon"], "--dest", d / LONG,
            "--size", "32", "--no-progress"]  # fmt: skip


@case("simulate_out_under_file")
def _(d, s):
    return ["dataset", "simulate", "--out", blocker(d) / "sim", "--num", "2", *SYN]


@case("synth_out_is_a_file")
def _(d, s):
    return ["synth", "--out", blocker(d), "--seeds", "0", *SYN]


@case("synth_out_under_file")
def _(d, s):
    return ["synth", "--out", blocker(d) / "syn", "--seeds", "0", *SYN]


@case("synth_out_name_too_long")
def _(d, s):
    return ["synth", "--out", d / LONG, "--seeds", "0", *SYN]


@case("threshold_out_under_file")
def _(d, s):
    return ["tools", "threshold", s["img"], "--out", blocker(d) / "t.tif"]


@case("threshold_folder_out_name_too_long")
def _(d, s):
    return ["tools", "threshold", s["canon"] / "train", "--out", d / LONG]


@case("points_out_under_file")
def _(d, s):
    return ["tools", "points", s["lab"], "--out", blocker(d) / "p"]


@case("combine_out_name_too_long")
def _(d, s):
    return ["tools", "combine", s["img"], s["img"], "--out", d / (LONG + ".tif")]


@case("sg3_train_outdir_under_file")
def _(d, s):
    return ["stylegan3", "train", "--outdir", blocker(d) / "runs", "--data", s["zip"], *TINY_SG3]


@case("sg3_generate_outdir_under_file")
def _(d, s):
    return ["stylegan3", "generate", "--network", s["snap"], "--seeds", "0",
            "--outdir", blocker(d) / "g"]  # fmt: skip


@case("sg3_generate_outdir_name_too_long")
def _(d, s):
    return ["stylegan3", "generate", "--network", s["snap"], "--seeds", "0", "--outdir", d / LONG]


@case("p2p_train_checkpoints_under_file")
def _(d, s):
    return ["pix2pixhd", "train", "--name", "x", "--dataroot", s["pairs"],
            "--checkpoints_dir", blocker(d) / "ck", *TINY_P2P]  # fmt: skip


@case("benchmark_out_under_file")
def _(d, s):
    return ["benchmark", "run", "--test", s["canon"] / "train", "--segmenters", "classical",
            "--out", blocker(d) / "b", "--quiet"]  # fmt: skip


# --- two runs on one folder, resume
def _synth_done(d: Path, seeds="0-2") -> Path:
    out = d / "syn"
    must(["synth", "--out", out, "--seeds", seeds, *SYN])
    return out


@case("synth_resume_other_seed_list")
def _(d, s):
    return ["synth", "--out", _synth_done(d), "--seeds", "5-6", "--resume", *SYN]


@case("synth_resume_locked_by_live_run")
def _(d, s):
    out = _synth_done(d)
    # what a running `synth` leaves in its folder; this script's PID is alive
    lock = {"pid": os.getpid(), "host": socket.gethostname(), "command": "synth"}
    (out / ".cellsynth.lock").write_text(json.dumps(lock))
    return ["synth", "--out", out, "--seeds", "0-2", "--resume", *SYN]


@case("synth_overwrite_locked_by_live_run")
def _(d, s):
    out = _synth_done(d)
    lock = {"pid": os.getpid(), "host": socket.gethostname(), "command": "synth"}
    (out / ".cellsynth.lock").write_text(json.dumps(lock))
    return ["synth", "--out", out, "--seeds", "0-2", "--overwrite", *SYN]


# --- degenerate input
@case("import_1x1_image")
def _(d, s):
    img, lab = disks()
    src = pairs_dir(d / "src", [("a", img, lab), ("tiny", [[7]], [[1]])])
    return ["dataset", "import", "folders", "--images", src / "images", "--masks", src / "masks",
            "--out", d / "out", "--no-progress"]  # fmt: skip


@case("import_zero_instances")
def _(d, s):
    img, _ = disks()
    empty = np.zeros((32, 32), np.uint16)
    src = pairs_dir(d / "src", [("a", img, empty), ("b", img, empty)])
    return ["dataset", "import", "folders", "--images", src / "images", "--masks", src / "masks",
            "--out", d / "out", "--no-progress"]  # fmt: skip


def _coco(d: Path, anns) -> tuple[Path, Path]:
    img, _ = disks()
    tif(d / "images" / "a.tif", img)
    doc = {
        "images": [{"id": 1, "file_name": "a.tif", "height": 32, "width": 32}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "cell"}],
    }
    (d / "ann.json").write_text(json.dumps(doc))
    return d / "ann.json", d / "images"


SQUARE = [[4, 4, 14, 4, 14, 14, 4, 14]]


@case("coco_orphan_annotation_counted", ("report", "orphan 1"))
def _(d, s):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": SQUARE},
        {"id": 2, "image_id": 99, "category_id": 1, "segmentation": SQUARE},
    ]
    js, imgs = _coco(d, anns)
    return ["dataset", "import", "coco", "--annotations", js, "--images", imgs,
            "--out", d / "out", "--no-progress"]  # fmt: skip


@case("coco_zero_kept_instances")
def _(d, s):
    tiny = [[4, 4, 6, 4, 6, 6, 4, 6]]  # 4 pixels: below --min-pixels 10
    js, imgs = _coco(d, [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": tiny}])
    return ["dataset", "import", "coco", "--annotations", js, "--images", imgs,
            "--out", d / "out", "--no-progress"]  # fmt: skip


def _canon_with(d: Path, items) -> Path:
    pairs_dir(d / "canon" / "train", items)
    return d / "canon"


@case("pack_masks_1x1_image")
def _(d, s):
    img, lab = disks()
    src = _canon_with(d, [("a", img, lab), ("tiny", [[7]], [[1]])])
    return ["dataset", "pack", "--kind", "masks", "--source", src, "--dest", d / "m.zip",
            "--resolution", "32", "--no-progress"]  # fmt: skip


@case("pack_pairs_1x1_image")
def _(d, s):
    img, lab = disks()
    src = _canon_with(d, [("a", img, lab), ("tiny", [[7]], [[1]])])
    return ["dataset", "pack", "--kind", "pairs", "--source", src, "--dest", d / "p",
            "--size", "32", "--no-progress"]  # fmt: skip


@case("pack_masks_only_empty_mask")
def _(d, s):
    img, _ = disks()
    src = _canon_with(d, [("a", img, np.zeros((32, 32), np.uint16))])
    return ["dataset", "pack", "--kind", "masks", "--source", src, "--dest", d / "m.zip",
            "--resolution", "32", "--transform", "center-crop", "--no-progress"]  # fmt: skip


@case("threshold_channel_5_of_1")
def _(d, s):
    return ["tools", "threshold", s["img"], "--out", d / "t.tif", "--channel", "5"]


@case("threshold_channel_5_of_3")
def _(d, s):
    return ["tools", "threshold", s["img3"], "--out", d / "t.tif", "--channel", "5"]


@case("sg3_generate_existing_outdir")
def _(d, s):
    (d / "g").mkdir()
    (d / "g" / "mine.txt").write_text("keep me\n")
    return ["stylegan3", "generate", "--network", s["snap"], "--seeds", "0", "--outdir", d / "g"]


@case("sg3_generate_class_on_unconditional")
def _(d, s):
    return ["stylegan3", "generate", "--network", s["snap"], "--seeds", "0", "--class", "3",
            "--outdir", d / "g"]  # fmt: skip


@case("sg3_generate_translate_on_stylegan2")
def _(d, s):
    return ["stylegan3", "generate", "--network", s["snap"], "--seeds", "0", "--translate",
            "0.1,0", "--outdir", d / "g"]  # fmt: skip


@case("sg3_train_resume_snapshot_of_other_data")
def _(d, s):
    return ["stylegan3", "train", "--outdir", d / "runs", "--data", s["binzip"],
            "--resume", s["snap"], *TINY_SG3]  # fmt: skip


@case("sg3_train_data_not_a_zip")
def _(d, s):
    (d / "x.zip").write_text("not a zip\n")
    return ["stylegan3", "train", "--outdir", d / "runs", "--data", d / "x.zip", *TINY_SG3]


@case("sg3_train_zip_without_images")
def _(d, s):
    with zipfile.ZipFile(d / "x.zip", "w") as z:
        z.writestr("dataset.json", json.dumps({"labels": None}))
    return ["stylegan3", "train", "--outdir", d / "runs", "--data", d / "x.zip", *TINY_SG3]


@case("sg3_train_cond_without_labels")
def _(d, s):
    return ["stylegan3", "train", "--outdir", d / "runs", "--data", s["zip"], "--cond", *TINY_SG3]


# --- cases that were already clean (kept so they stay so)
@case("import_missing_source")
def _(d, s):
    return ["dataset", "import", "dsb2018", d / "nope", "--out", d / "out", "--no-progress"]


@case("import_unknown_format")
def _(d, s):
    return ["dataset", "import", "nosuch", s["canon"], "--out", d / "out"]


@case("import_bad_fractions")
def _(d, s):
    return ["dataset", "import", "embedseg", s["canon"], "--out", d / "out",
            "--split-fractions", "0.5,0.1"]  # fmt: skip


@case("import_existing_out")
def _(d, s):
    (d / "out").mkdir()
    (d / "out" / "mine.txt").write_text("keep\n")
    return ["dataset", "import", "embedseg", s["canon"], "--out", d / "out", "--no-progress"]


@case("pack_missing_source")
def _(d, s):
    return ["dataset", "pack", "--kind", "masks", "--source", d / "nope", "--dest", d / "m.zip",
            "--resolution", "32"]  # fmt: skip


@case("pack_resolution_not_power_of_two")
def _(d, s):
    return ["dataset", "pack", "--kind", "masks", "--source", s["canon"], "--dest", d / "m.zip",
            "--resolution", "30"]  # fmt: skip


@case("pack_dest_not_zip")
def _(d, s):
    return ["dataset", "pack", "--kind", "masks", "--source", s["canon"], "--dest", d / "m.tar",
            "--resolution", "32"]  # fmt: skip


@case("simulate_existing_out")
def _(d, s):
    (d / "sim").mkdir()
    (d / "sim" / "mine.txt").write_text("keep\n")
    return ["dataset", "simulate", "--out", d / "sim", "--num", "2", *SYN]


@case("synth_bad_seeds")
def _(d, s):
    return ["synth", "--out", d / "syn", "--seeds", "5-1", *SYN]


@case("synth_existing_out")
def _(d, s):
    return ["synth", "--out", _synth_done(d), "--seeds", "0-2", *SYN]


@case("synth_missing_checkpoint")
def _(d, s):
    return ["synth", "--out", d / "syn", "--masks", f"stylegan3:{d / 'nope.pt'}", "--seeds", "0",
            *SYN]  # fmt: skip


@case("synth_resume_other_options")
def _(d, s):
    return ["synth", "--out", _synth_done(d), "--seeds", "0-2", "--resume", "--size", "32",
            "--mean-radius", "6", "--no-progress"]  # fmt: skip


@case("synth_merge_without_shards")
def _(d, s):
    (d / "syn").mkdir()
    return ["synth", "merge", d / "syn"]


@case("sg3_train_missing_data")
def _(d, s):
    return ["stylegan3", "train", "--outdir", d / "runs", "--data", d / "nope.zip", *TINY_SG3]


@case("sg3_train_resume_not_a_checkpoint")
def _(d, s):
    (d / "bad.pt").write_bytes(b"not a checkpoint")
    return ["stylegan3", "train", "--outdir", d / "runs", "--data", s["zip"],
            "--resume", d / "bad.pt", *TINY_SG3]  # fmt: skip


@case("sg3_generate_missing_network")
def _(d, s):
    return ["stylegan3", "generate", "--network", d / "nope.pt", "--seeds", "0", "--outdir",
            d / "g"]  # fmt: skip


@case("sg3_generate_bad_seeds")
def _(d, s):
    return ["stylegan3", "generate", "--network", s["snap"], "--seeds", "x", "--outdir", d / "g"]


@case("threshold_missing_source")
def _(d, s):
    return ["tools", "threshold", d / "nope.tif", "--out", d / "t.tif"]


@case("threshold_existing_out")
def _(d, s):
    (d / "t.tif").write_text("keep\n")
    return ["tools", "threshold", s["img"], "--out", d / "t.tif"]


@case("p2p_train_missing_dataroot")
def _(d, s):
    return ["pix2pixhd", "train", "--name", "x", "--dataroot", d / "nope",
            "--checkpoints_dir", d / "ck", *TINY_P2P]  # fmt: skip


@case("benchmark_missing_test_set")
def _(d, s):
    return ["benchmark", "run", "--test", d / "nope", "--segmenters", "classical",
            "--out", d / "b", "--quiet"]  # fmt: skip


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
