"""The bad-input corpus: command lines that must each end with exit status 2, exactly one
``error: ...`` line on stderr and no new or changed file in their folder, and the small inputs
they are built from.

One corpus, two runners: ``tests/test_reliability.py`` runs every case in-process (fast, as a
test), ``perf/bad_input_corpus.py`` runs them as subprocesses of an installed ``cellsynth`` and
counts the verdicts (before/after figures). A case is ``setup(case_dir, shared) -> argv``; the
runner builds ``shared`` (never written by a case) with the keys ``canon`` (a canonical dataset
of 32x32 images), ``zip`` and ``binzip`` (its masks zips, fbd and binary), ``pairs`` (its
Pix2PixHD pairs folder), ``snap`` (a StyleGAN2 snapshot trained on ``zip``), ``img``, ``img3``
and ``lab`` (one image, the same with 3 channels, labels), ``synth_done(folder) -> out`` (a
finished ``synth`` run ``folder/syn`` of seeds 0-2) and ``lock_pid`` (a live process other than
the one that runs the command, for the locks of a run in progress).
"""

from __future__ import annotations

import json
import os
import socket
import zipfile
from pathlib import Path

import numpy as np

LONG = "n" * 300  # longer than the 255 bytes a file name may have
SYN = ["--size", "32", "--mean-radius", "5", "--no-progress"]
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
SQUARE = [[4, 4, 14, 4, 14, 14, 4, 14]]
# two annotations of one image, the second of an image the file does not list (an orphan)
ORPHAN_ANNOTATIONS = [
    {"id": 1, "image_id": 1, "category_id": 1, "segmentation": SQUARE},
    {"id": 2, "image_id": 99, "category_id": 1, "segmentation": SQUARE},
]


# ---------------------------------------------------------------------------------- inputs
def tree(folder: Path) -> dict:
    """Every path below ``folder``: files with their size and mtime, folders by name only (a
    file made and removed again inside a folder changes nothing that stays; this is what 'no
    new files' means)."""
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
    """Write ``array`` as the TIFF ``path`` (folders made as needed)."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.asarray(array))
    return path


def disks(n=32, seed=0):
    """A 32x32 uint8 image with three disk cells, and its labels."""
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


def blocker(d: Path) -> Path:
    """A file ``d/blocker`` where a folder is expected."""
    (d / "blocker").write_text("a file where a folder is expected\n")
    return d / "blocker"


def live_lock(out: Path, pid: int, host: str | None = None) -> None:
    """A lock file as a running ``synth`` writes it (no flock held: the PID decides)."""
    doc = {"pid": pid, "host": host or socket.gethostname(), "command": "synth"}
    (out / ".cellsynth.lock").write_text(json.dumps(doc))


def coco(d: Path, anns) -> tuple[Path, Path]:
    """A COCO file ``d/ann.json`` of one 32x32 image ``d/images/a.tif`` with ``anns``."""
    img, _ = disks()
    tif(d / "images" / "a.tif", img)
    doc = {
        "images": [{"id": 1, "file_name": "a.tif", "height": 32, "width": 32}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "cell"}],
    }
    (d / "ann.json").write_text(json.dumps(doc))
    return d / "ann.json", d / "images"


def full_folder(d: Path, name="g") -> Path:
    """A folder ``d/name`` holding a file of the user's."""
    (d / name).mkdir()
    (d / name / "mine.txt").write_text("keep me\n")
    return d / name


# ------------------------------------------------------------------------------- the corpus
# name -> setup(case folder, shared inputs) -> argv (see the module docstring)
CORPUS = {
    # the system refuses the write
    "import_out_under_file": lambda d, s: [
        "dataset", "import", "embedseg", s["canon"], "--out", blocker(d) / "out", "--no-progress"
    ],
    "import_out_name_too_long": lambda d, s: [
        "dataset", "import", "embedseg", s["canon"], "--out", d / LONG, "--no-progress"
    ],
    "pack_masks_dest_under_file": lambda d, s: [
        "dataset", "pack", "--kind", "masks", "--source", s["canon"], "--dest",
        blocker(d) / "m.zip", "--resolution", "32", "--no-progress",
    ],
    "pack_pairs_dest_name_too_long": lambda d, s: [
        "dataset", "pack", "--kind", "pairs", "--source", s["canon"], "--dest", d / LONG,
        "--size", "32", "--no-progress",
    ],
    "simulate_out_under_file": lambda d, s: [
        "dataset", "simulate", "--out", blocker(d) / "sim", "--num", "2", *SYN
    ],
    "synth_out_is_a_file": lambda d, s: ["synth", "--out", blocker(d), "--seeds", "0", *SYN],
    "synth_out_under_file": lambda d, s: [
        "synth", "--out", blocker(d) / "syn", "--seeds", "0", *SYN
    ],
    "synth_out_name_too_long": lambda d, s: ["synth", "--out", d / LONG, "--seeds", "0", *SYN],
    "threshold_out_under_file": lambda d, s: [
        "tools", "threshold", s["img"], "--out", blocker(d) / "t.tif"
    ],
    "threshold_folder_out_name_too_long": lambda d, s: [
        "tools", "threshold", s["canon"] / "train", "--out", d / LONG
    ],
    "points_out_under_file": lambda d, s: ["tools", "points", s["lab"], "--out", blocker(d) / "p"],
    "combine_out_name_too_long": lambda d, s: [
        "tools", "combine", s["img"], s["img"], "--out", d / (LONG + ".tif")
    ],
    "sg3_train_outdir_under_file": lambda d, s: [
        "stylegan3", "train", "--outdir", blocker(d) / "runs", "--data", s["zip"], *TINY_SG3
    ],
    "sg3_generate_outdir_under_file": lambda d, s: [
        "stylegan3", "generate", "--network", s["snap"], "--seeds", "0", "--outdir",
        blocker(d) / "g",
    ],
    "sg3_generate_outdir_name_too_long": lambda d, s: [
        "stylegan3", "generate", "--network", s["snap"], "--seeds", "0", "--outdir", d / LONG
    ],
    "p2p_train_checkpoints_under_file": lambda d, s: [
        "pix2pixhd", "train", "--name", "x", "--dataroot", s["pairs"], "--checkpoints_dir",
        blocker(d) / "ck", *TINY_P2P,
    ],
    "benchmark_out_under_file": lambda d, s: [
        "benchmark", "run", "--test", s["canon"] / "train", "--segmenters", "classical", "--out",
        blocker(d) / "b", "--quiet",
    ],
    # two runs, resume
    "synth_resume_other_seed_list": lambda d, s: [
        "synth", "--out", s["synth_done"](d), "--seeds", "5-6", "--resume", *SYN
    ],
    "synth_resume_locked_by_live_run": lambda d, s: [
        "synth", "--out", _locked(d, s), "--seeds", "0-2", "--resume", *SYN
    ],
    "synth_overwrite_locked_by_live_run": lambda d, s: [
        "synth", "--out", _locked(d, s), "--seeds", "0-2", "--overwrite", *SYN
    ],
    "synth_locked_by_other_host": lambda d, s: [
        "synth", "--out", _locked(d, s, host="elsewhere"), "--seeds", "0-2", "--resume",
        *SYN,
    ],
    # degenerate input
    "import_1x1_image": lambda d, s: _folders_import(d, [("a", *disks()), ("t", [[7]], [[1]])]),
    "import_zero_instances": lambda d, s: _folders_import(
        d, [(n, disks()[0], np.zeros((32, 32), np.uint16)) for n in "ab"]
    ),
    "coco_zero_kept_instances": lambda d, s: [
        "dataset", "import", "coco", *_coco_args(d, [[4, 4, 6, 4, 6, 6, 4, 6]]), "--out",
        d / "out", "--no-progress",
    ],
    "pack_masks_1x1_image": lambda d, s: [
        "dataset", "pack", "--kind", "masks", "--source", _canon(d, tiny=True), "--dest",
        d / "m.zip", "--resolution", "32", "--no-progress",
    ],
    "pack_pairs_1x1_image": lambda d, s: [
        "dataset", "pack", "--kind", "pairs", "--source", _canon(d, tiny=True), "--dest",
        d / "p", "--size", "32", "--no-progress",
    ],
    "pack_masks_only_empty_mask": lambda d, s: [
        "dataset", "pack", "--kind", "masks", "--source", _canon(d, empty=True), "--dest",
        d / "m.zip", "--resolution", "32", "--transform", "center-crop", "--no-progress",
    ],
    "threshold_channel_5_of_1": lambda d, s: [
        "tools", "threshold", s["img"], "--out", d / "t.tif", "--channel", "5"
    ],
    "threshold_channel_5_of_3": lambda d, s: [
        "tools", "threshold", s["img3"], "--out", d / "t.tif", "--channel", "5"
    ],
    "sg3_generate_existing_outdir": lambda d, s: [
        "stylegan3", "generate", "--network", s["snap"], "--seeds", "0", "--outdir",
        full_folder(d),
    ],
    "sg3_generate_class_on_unconditional": lambda d, s: [
        "stylegan3", "generate", "--network", s["snap"], "--seeds", "0", "--class", "3",
        "--outdir", d / "g",
    ],
    "sg3_generate_translate_on_stylegan2": lambda d, s: [
        "stylegan3", "generate", "--network", s["snap"], "--seeds", "0", "--translate", "0.1,0",
        "--outdir", d / "g",
    ],
    "sg3_train_data_not_a_zip": lambda d, s: [
        "stylegan3", "train", "--outdir", d / "runs", "--data", _text(d / "x.zip"), *TINY_SG3
    ],
    "sg3_train_zip_without_images": lambda d, s: [
        "stylegan3", "train", "--outdir", d / "runs", "--data", _no_images_zip(d), *TINY_SG3
    ],
    "sg3_train_cond_without_labels": lambda d, s: [
        "stylegan3", "train", "--outdir", d / "runs", "--data", s["zip"], "--cond", *TINY_SG3
    ],
    "sg3_train_resume_snapshot_of_other_data": lambda d, s: [
        "stylegan3", "train", "--outdir", d / "runs", "--data", s["binzip"], "--resume",
        s["snap"], *TINY_SG3,
    ],
    # cases that were clean before this file existed: they stay so
    "import_missing_source": lambda d, s: [
        "dataset", "import", "dsb2018", d / "nope", "--out", d / "out", "--no-progress"
    ],
    "import_unknown_format": lambda d, s: [
        "dataset", "import", "nosuch", s["canon"], "--out", d / "out"
    ],
    "import_bad_fractions": lambda d, s: [
        "dataset", "import", "embedseg", s["canon"], "--out", d / "out", "--split-fractions",
        "0.5,0.1",
    ],
    "import_existing_out": lambda d, s: [
        "dataset", "import", "embedseg", s["canon"], "--out", full_folder(d, "out"),
        "--no-progress",
    ],
    "pack_missing_source": lambda d, s: [
        "dataset", "pack", "--kind", "masks", "--source", d / "nope", "--dest", d / "m.zip",
        "--resolution", "32",
    ],
    "pack_resolution_not_power_of_two": lambda d, s: [
        "dataset", "pack", "--kind", "masks", "--source", s["canon"], "--dest", d / "m.zip",
        "--resolution", "30",
    ],
    "pack_dest_not_zip": lambda d, s: [
        "dataset", "pack", "--kind", "masks", "--source", s["canon"], "--dest", d / "m.tar",
        "--resolution", "32",
    ],
    "simulate_existing_out": lambda d, s: [
        "dataset", "simulate", "--out", full_folder(d, "sim"), "--num", "2", *SYN
    ],
    "synth_bad_seeds": lambda d, s: ["synth", "--out", d / "syn", "--seeds", "5-1", *SYN],
    "synth_existing_out": lambda d, s: [
        "synth", "--out", s["synth_done"](d), "--seeds", "0-2", *SYN
    ],
    "synth_missing_checkpoint": lambda d, s: [
        "synth", "--out", d / "syn", "--masks", f"stylegan3:{d / 'nope.pt'}", "--seeds", "0",
        *SYN,
    ],
    "synth_resume_other_options": lambda d, s: [
        "synth", "--out", s["synth_done"](d), "--seeds", "0-2", "--resume", "--size", "32",
        "--mean-radius", "6", "--no-progress",
    ],
    "synth_merge_without_shards": lambda d, s: ["synth", "merge", full_folder(d, "syn")],
    "sg3_train_missing_data": lambda d, s: [
        "stylegan3", "train", "--outdir", d / "runs", "--data", d / "nope.zip", *TINY_SG3
    ],
    "sg3_train_resume_not_a_checkpoint": lambda d, s: [
        "stylegan3", "train", "--outdir", d / "runs", "--data", s["zip"], "--resume",
        _text(d / "bad.pt"), *TINY_SG3,
    ],
    "sg3_generate_missing_network": lambda d, s: [
        "stylegan3", "generate", "--network", d / "nope.pt", "--seeds", "0", "--outdir", d / "g"
    ],
    "sg3_generate_bad_seeds": lambda d, s: [
        "stylegan3", "generate", "--network", s["snap"], "--seeds", "x", "--outdir", d / "g"
    ],
    "threshold_missing_source": lambda d, s: [
        "tools", "threshold", d / "nope.tif", "--out", d / "t.tif"
    ],
    "threshold_existing_out": lambda d, s: [
        "tools", "threshold", s["img"], "--out", _text(d / "t.tif")
    ],
    "p2p_train_missing_dataroot": lambda d, s: [
        "pix2pixhd", "train", "--name", "x", "--dataroot", d / "nope", "--checkpoints_dir",
        d / "ck", *TINY_P2P,
    ],
    "benchmark_missing_test_set": lambda d, s: [
        "benchmark", "run", "--test", d / "nope", "--segmenters", "classical", "--out", d / "b",
        "--quiet",
    ],
}  # fmt: skip


def _locked(d: Path, s: dict, host=None) -> Path:
    out = s["synth_done"](d)
    live_lock(out, s["lock_pid"], host=host)
    return out


def _folders_import(d: Path, items) -> list:
    src = pairs_dir(d / "src", items)
    return ["dataset", "import", "folders", "--images", src / "images", "--masks", src / "masks",
            "--out", d / "out", "--no-progress"]  # fmt: skip


def _coco_args(d: Path, polygon) -> list:
    js, imgs = coco(d, [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": polygon}])
    return ["--annotations", js, "--images", imgs]


def _canon(d: Path, tiny=False, empty=False) -> Path:
    img, lab = disks()
    items = [("a", img, np.zeros_like(lab) if empty else lab)]
    if tiny:
        items.append(("tiny", [[7]], [[1]]))
    pairs_dir(d / "canon" / "train", items)
    return d / "canon"


def _text(path: Path) -> Path:
    path.write_text("not what it should be\n")
    return path


def _no_images_zip(d: Path) -> Path:
    with zipfile.ZipFile(d / "x.zip", "w") as z:
        z.writestr("dataset.json", json.dumps({"labels": None}))
    return d / "x.zip"
