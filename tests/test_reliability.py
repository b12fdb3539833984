"""Reliability: a bad-input corpus run through the CLI (exit 2, one ``error:`` line, no new
files), failed writes, two runs on one folder, and training resumed in its own run folder.

The corpus and its inputs live in ``tests/bad_inputs.py``; ``perf/bad_input_corpus.py`` counts
the same cases as subprocesses (before/after figures), here they run in-process so the file
stays fast. Sizes are tiny: 32x32 images, untrained 16-channel
networks.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import (
    CORPUS,
    LONG,
    ORPHAN_ANNOTATIONS,
    SYN,
    TINY_SG3,
    coco,
    disks,
    full_folder,
    live_lock,
    pairs_dir,
    tif,
    tree,
)

from cellsynth.cli import main


# ---------------------------------------------------------------------------------- helpers
def cli(argv, capsys) -> tuple[int, str, str]:
    """Run ``cellsynth ARGV`` in-process; (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_error(code, err, before, after, *, text=None):
    """Exit 2, exactly one ``error:`` line (containing ``text``), nothing new on disk."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    if text is not None:
        assert text in lines[0], lines[0]
    changed = sorted(k for k in after if before.get(k) != after[k])
    assert changed == [], changed


def synth_done(d: Path, seeds="0-2") -> Path:
    """A finished ``synth`` run ``d/syn`` (32x32, seeds ``seeds``)."""
    from cellsynth.synth import synth

    out = d / "syn"
    synth(out, seeds=seeds, size=32, mean_radius=5)
    return out


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_masks_zip, sg2_snapshot):
    """Inputs the cases read (never write): a canonical dataset, masks zips, a pairs folder,
    a snapshot, single images (see ``bad_inputs``); the lock of a live run is this process's
    parent's (its own PID would be this run's)."""
    from conftest import make_masks_zip

    from cellsynth.datasets.pack import pack_pairs
    from cellsynth.datasets.simulate import simulate_dataset

    base = tmp_path_factory.mktemp("shared")
    s = {"canon": base / "canon", "zip": tiny_masks_zip, "snap": sg2_snapshot}
    s.update(synth_done=synth_done, lock_pid=os.getppid())
    simulate_dataset(s["canon"], 4, size=(32, 32), mean_radius=5)
    s["binzip"] = make_masks_zip(base / "binary.zip", encoding="binary")
    s["pairs"] = base / "pairs"
    pack_pairs(s["canon"], s["pairs"], 32)
    img, lab = disks()
    s["img"] = tif(base / "img.tif", img)
    s["img3"] = tif(base / "img3.tif", np.stack([img] * 3, -1))
    s["lab"] = tif(base / "lab.tif", lab)
    return s


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_bad_input_corpus(name, shared, tmp_path, capsys):
    d = tmp_path / "case"
    d.mkdir()
    argv = CORPUS[name](d, shared)
    capsys.readouterr()
    before = tree(d)
    code, _, err = cli(argv, capsys)
    assert_clean_error(code, err, before, tree(d))


# ----------------------------------------------------------------- failed writes, in-process
def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _read_only(*args, **kwargs):
    raise OSError(errno.EROFS, "Read-only file system", kwargs.get("dir"))


def _forbidden(*args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied")


@pytest.mark.parametrize(
    "what, target, fake, cause",
    [
        ("import", "tifffile.imwrite", _no_space, "No space left on device"),
        ("synth", "tifffile.imwrite", _no_space, "No space left on device"),
        ("pack", "tempfile.mkstemp", _read_only, "Read-only file system"),
        ("threshold", "tifffile.imwrite", _forbidden, "Permission denied"),
        ("generate", "PIL.Image.Image.save", _no_space, "No space left on device"),
    ],
)
def test_failed_writes_one_line_and_nothing_left(
    what, target, fake, cause, shared, tmp_path, capsys, monkeypatch
):
    d = tmp_path / "case"
    d.mkdir()
    argv = {
        "import": ["dataset", "import", "embedseg", shared["canon"], "--out", d / "out",
                   "--no-progress"],
        "synth": ["synth", "--out", d / "a" / "syn", "--seeds", "0-1", *SYN],
        "pack": ["dataset", "pack", "--kind", "masks", "--source", shared["canon"], "--dest",
                 d / "m.zip", "--resolution", "32", "--no-progress"],
        "threshold": ["tools", "threshold", shared["canon"] / "train", "--out", d / "t"],
        "generate": ["stylegan3", "generate", "--network", shared["snap"], "--seeds", "0-1",
                     "--outdir", d / "g"],
    }[what]  # fmt: skip
    module, attr = target.rsplit(".", 1)
    if module == "PIL.Image.Image":
        from PIL import Image

        monkeypatch.setattr(Image.Image, attr, fake)
    else:
        monkeypatch.setattr(__import__(module), attr, fake)
    before = tree(d)
    code, _, err = cli(argv, capsys)
    assert_clean_error(code, err, before, tree(d), text=cause)
    assert str(d) in err  # the line names the path that failed


def test_os_error_message_names_path_and_cause(tmp_path):
    from cellsynth.atomic import os_error_message

    f = tmp_path / "file"
    f.write_text("x")
    msg = os_error_message(NotADirectoryError(errno.ENOTDIR, "Not a directory", str(f / "a")))
    assert msg == f"{f / 'a'}: {f} is a file, not a folder; choose another location"
    msg = os_error_message(OSError(errno.ENOSPC, "No space left on device", "/x/y.tif"))
    assert msg == "/x/y.tif: No space left on device (free some space or write somewhere else)"
    msg = os_error_message(OSError(errno.ENAMETOOLONG, "File name too long", "/x/" + LONG))
    assert "(300 characters)" in msg and len(msg) < 200
    msg = os_error_message(OSError(errno.EROFS, "Read-only file system", "/ro/out"))
    assert msg == "/ro/out: Read-only file system (choose a writable location)"


def test_atomic_dir_never_replaces_what_another_run_made_meanwhile(tmp_path):
    from cellsynth.atomic import atomic_dir
    from cellsynth.errors import CellsynthError

    out = tmp_path / "out"
    with pytest.raises(CellsynthError, match="appeared while this run was writing"):
        with atomic_dir(out) as tmp:
            (tmp / "mine.txt").write_text("mine")
            out.mkdir()  # another run finished first
            (out / "theirs.txt").write_text("theirs")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]


def test_train_failure_after_start_leaves_no_run_folder(tiny_masks_zip, tmp_path, capsys):
    import torch

    runs = tmp_path / "runs"
    real_save = torch.save
    try:
        torch.save = _no_space  # the first snapshot write fails
        code, _, err = cli(
            ["stylegan3", "train", "--outdir", runs, "--data", tiny_masks_zip, *TINY_SG3], capsys
        )
    finally:
        torch.save = real_save
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "network-snapshot-000000.004.pt: No space left" in err
    assert not runs.exists()  # the new run folder (no snapshot in it) and --outdir are gone


# --------------------------------------------------------------------------- two runs, locks
def test_second_synth_run_on_a_locked_folder_stops(tmp_path, capsys):
    from cellsynth.lock import lock_folder

    out = synth_done(tmp_path)
    with lock_folder(out, "synth"):  # a run is writing the folder (this process holds it)
        before = tree(tmp_path)
        code, _, err = cli(["synth", "--out", out, "--seeds", "0-2", "--resume", *SYN], capsys)
        assert_clean_error(code, err, before, tree(tmp_path), text="is in use by a `synth` run")
        assert f"PID {os.getpid()}" in err
        # the same from another process
        cmd = [sys.executable, "-m", "cellsynth", "synth", "--out", str(out), "--seeds", "0-2",
               "--overwrite", *SYN]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "is in use" in r.stderr
    assert not (out / ".cellsynth.lock").exists()  # released
    assert cli(["synth", "--out", out, "--seeds", "0-2", "--resume", *SYN], capsys)[0] == 0


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    out = synth_done(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live_lock(out, pid=dead.pid)
    code, _, err = cli(["synth", "--out", out, "--seeds", "0-2", "--resume", *SYN], capsys)
    assert code == 0, err
    assert f"took over the stale lock {out / '.cellsynth.lock'} of PID {dead.pid}" in err
    assert not (out / ".cellsynth.lock").exists()


def test_empty_lock_refused_while_fresh_and_taken_over_when_abandoned(tmp_path, capsys):
    out = synth_done(tmp_path)
    lock = out / ".cellsynth.lock"
    lock.write_bytes(b"")  # a run is taking the lock right now (or was killed doing it)
    args = ["synth", "--out", out, "--seeds", "0-2", "--resume", *SYN]
    code, _, err = cli(args, capsys)
    assert code == 2 and "is in use by another run" in err and len(err.splitlines()) == 1
    os.utime(lock, (0, 0))  # nobody took it for a long time: abandoned
    code, _, err = cli(args, capsys)
    assert code == 0 and "took over the abandoned, unreadable lock" in err
    assert not lock.exists()


def test_two_concurrent_synth_runs_one_refuses_cleanly(tmp_path):
    out = synth_done(tmp_path, seeds="0-5")
    cmd = [sys.executable, "-m", "cellsynth", "synth", "--out", str(out), "--seeds", "0-5",
           "--overwrite", *SYN]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for code, err in results:
        assert "Traceback" not in err, err
        assert code == 0 or (code == 2 and len(err.strip().splitlines()) == 1), err
    assert any(code == 0 for code, _ in results)
    man = json.loads((out / "manifest.json").read_text())
    assert man["count"] == 6 and len(list((out / "masks").glob("*.tif"))) == 6
    assert not list(out.glob(".cellsynth*.lock"))


def test_resume_keeps_the_seed_list_and_shards_may_share_a_folder(tmp_path):
    from cellsynth.errors import CellsynthError
    from cellsynth.lock import lock_folder
    from cellsynth.synth import merge_shards, synth

    kw = dict(size=32, mean_radius=5)
    out = tmp_path / "sh"
    synth(out, seeds="0-3", shard="0/2", **kw)
    with pytest.raises(CellsynthError, match="was started with --seeds 0-3, not 0-5"):
        synth(out, seeds="0-5", shard="1/2", **kw)
    with lock_folder(out, "synth", ".cellsynth.shard-0-of-2.lock"):  # shard 0 still running
        synth(out, seeds="0-3", shard="1/2", **kw)  # another shard may write meanwhile
        with pytest.raises(CellsynthError, match="in use"):
            merge_shards(out)  # but not a whole run
    assert merge_shards(out)["count"] == 4


# ---------------------------------------------------------------------- degenerate, accepted
def test_import_allow_empty_and_orphans_counted(tmp_path, capsys):
    src = pairs_dir(tmp_path / "src", [("a", disks()[0], np.zeros((32, 32), np.uint16))])
    args = ["dataset", "import", "folders", "--images", src / "images", "--masks",
            src / "masks", "--no-progress"]  # fmt: skip
    code, out, err = cli([*args, "--out", tmp_path / "e", "--allow-empty"], capsys)
    assert code == 0 and "train 1 images / 0 instances" in out, err
    js, imgs = coco(tmp_path / "c", ORPHAN_ANNOTATIONS)
    code, out, err = cli(["dataset", "import", "coco", "--annotations", js, "--images", imgs,
                          "--out", tmp_path / "o", "--no-progress"], capsys)  # fmt: skip
    assert code == 0, err
    assert "annotations 2: kept 1, dropped 1 (orphan 1)" in out
    doc = json.loads((tmp_path / "o" / "dataset.json").read_text())
    assert doc["import"]["dropped"]["orphan"] == 1 and doc["import"]["instances_total"] == 1


def test_pack_skips_and_counts_empty_masks(tmp_path):
    from cellsynth.datasets.pack import pack_masks, pack_pairs

    img, lab = disks()
    src = pairs_dir(tmp_path / "c" / "train", [("a", img, lab), ("b", img, 0 * lab)])
    s = pack_masks(src, tmp_path / "m.zip", 32)
    assert (s["items"], s["skipped_empty"]) == (1, 1)
    assert pack_masks(src, tmp_path / "k.zip", 32, keep_empty=True)["items"] == 2
    p = pack_pairs(src, tmp_path / "p", 32)
    assert (p["splits"], p["skipped_empty"]) == ({"train": 1}, 1)


def test_generate_overwrite_writes_into_an_existing_outdir(shared, tmp_path, capsys):
    g = full_folder(tmp_path)
    args = ["stylegan3", "generate", "--network", shared["snap"], "--seeds", "0", "--outdir", g]
    assert cli([*args, "--overwrite"], capsys)[0] == 0
    assert sorted(p.name for p in g.iterdir()) == ["mine.txt", "seed0000.png"]


# ---------------------------------------------------------------- training: resume in place
def test_snapshot_names_keep_fractional_kimg_apart(tmp_path):
    from cellsynth.stylegan3.snapshot import list_snapshots, snapshot_name, snapshot_nimg

    names = [snapshot_name(n) for n in (4, 8, 996, 1000, 12345)]
    assert names[0] == "network-snapshot-000000.004.pt" and len(set(names)) == 5
    assert names == sorted(names)  # names sort in training order
    assert [snapshot_nimg(n) for n in names] == [4, 8, 996, 1000, 12345]
    assert snapshot_nimg("network-snapshot-000012.pt") == 12000  # the old names still count
    assert snapshot_nimg(".network-snapshot-000000.004.pt.x1.tmp") is None
    for i, n in enumerate(["network-snapshot-000001.pt", names[0]]):
        (tmp_path / n).write_bytes(b"x")
        os.utime(tmp_path / n, (1000 + i, 1000 + i))
    assert [p.name for p in list_snapshots(tmp_path)] == ["network-snapshot-000001.pt", names[0]]


def test_resume_continues_in_the_same_run_folder_after_a_killed_snapshot_write(
    tiny_masks_zip, tmp_path, capsys
):
    import torch

    runs = tmp_path / "runs"
    args = ["stylegan3", "train", "--outdir", runs, "--data", tiny_masks_zip, *TINY_SG3]
    assert cli(args, capsys)[0] == 0
    (run,) = runs.iterdir()
    # what a SIGKILL during the next snapshot write leaves: a 0-byte temporary file
    stale = run / ".network-snapshot-000000.008.pt.k1ll3d.tmp"
    stale.write_bytes(b"")
    code, out, err = cli([*args, "--resume", "latest", "--kimg", "0.008"], capsys)
    assert code == 0, err
    assert list(runs.iterdir()) == [run]  # no second run folder
    assert not stale.exists()
    snaps = sorted(p.name for p in run.glob("network-snapshot-*.pt"))
    assert snaps == ["network-snapshot-000000.004.pt", "network-snapshot-000000.008.pt"]
    last = torch.load(run / snaps[-1], weights_only=True)
    assert last["counters"]["cur_nimg"] == 8  # the kimg count went on
    assert "starting at kimg 0.004" in (run / "log.txt").read_text()
    assert not (run / ".cellsynth.lock").exists()
