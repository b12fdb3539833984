"""`cellsynth synth --dask`: the same files as a run in one process (workers writing, or the
client), a worker killed mid-run, resume after the client was killed, and one line for a bad
--dask or a missing Dask."""

from __future__ import annotations

import filecmp
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import dir_files, free_port, kill_busy_worker, tiny_translator, worker_pids

from cellsynth.errors import CellsynthError
from cellsynth.synth import synth

KW = dict(size=48, mean_radius=6, density=0.6, spots_count=2)


def _identical(a: Path, b: Path) -> None:
    assert dir_files(a) == dir_files(b)
    for f in dir_files(a):
        assert filecmp.cmp(a / f, b / f, shallow=False), f


def _masks(out: Path) -> int:
    return len(list((out / "masks").glob("seed*.tif"))) if (out / "masks").is_dir() else 0


@pytest.fixture(scope="module")
def address(dask_cluster):
    return dask_cluster.scheduler.address


# ---- one clear line ----------------------------------------------------------------------------
def test_bad_dask_values_give_one_line(tmp_path, capsys):
    from cellsynth.cli import main

    out = tmp_path / "x"
    for bad, match in (
        ("nowhere", "not a Dask scheduler address"),
        ("local:0", "local:N"),
        ("local:two", "local:N"),
        ("http://host:8786", "not a Dask scheduler address"),
        ("tcp://host", "not a Dask scheduler address"),
        (str(tmp_path / "sched.json"), "no such scheduler file"),
    ):
        with pytest.raises(CellsynthError, match=match):
            synth(out, seeds="0", dask=bad, **KW)
        assert not out.exists()
    with pytest.raises(CellsynthError, match="not both"):
        synth(out, seeds="0", dask="local:2", workers=2, **KW)
    (tmp_path / "bad.json").write_text('{"no": "address"}')
    with pytest.raises(CellsynthError, match="records no 'address'"):
        synth(out, seeds="0", dask=str(tmp_path / "bad.json"), **KW)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--out", str(out), "--seeds", "0", "--size", "32", "--dask", "nowhere"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: --dask 'nowhere'")
    assert not out.exists()


def test_without_dask_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` fails
    out = tmp_path / "x"
    with pytest.raises(CellsynthError, match=r"pip install 'cellsynth\[dask\]'"):
        synth(out, seeds="0", dask="local:2", **KW)
    assert not out.exists()


def test_no_scheduler_at_the_address(tmp_path, capsys):
    pytest.importorskip("distributed", reason="dask.distributed is not installed")
    import dask.config

    from cellsynth.cli import main

    out = tmp_path / "x"
    where = f"tcp://127.0.0.1:{free_port()}"
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(CellsynthError, match="no Dask scheduler answered"):
            synth(out, seeds="0", dask=where, **KW)
        assert not out.exists()
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(["synth", "--out", str(out), "--seeds", "0", "--dask", where, "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "no Dask scheduler answered" in err[0]
    assert not out.exists()


# ---- the same files ----------------------------------------------------------------------------
def test_same_files_as_one_process(tmp_path, address):
    one = tmp_path / "one"
    synth(one, seeds="0-9", batch=3, **KW)
    for mode in ("auto", "client"):
        out = tmp_path / mode
        summary = synth(out, seeds="0-9", batch=3, dask=address, dask_write=mode, **KW)
        _identical(one, out)
        facts = summary["dask"]
        assert facts["chunks"] == 4 and summary["written"] == 10
        who = "written_by_workers" if mode == "auto" else "written_by_client"
        assert facts[who] == 10
    # resume and shards work the same way with --dask
    sh = tmp_path / "sh"
    for i in (0, 1):
        synth(sh, seeds="0-9", batch=3, shard=f"{i}/2", dask=address, **KW)
    from cellsynth.synth import merge_shards

    merge_shards(sh)
    assert [f for f in dir_files(sh) if "shard" not in f] == dir_files(one)
    for f in dir_files(one):
        assert filecmp.cmp(one / f, sh / f, shallow=False), f
    for s in (2, 7):
        os.remove(tmp_path / "client" / "masks" / f"seed{s:06d}.tif")
    summary = synth(tmp_path / "client", seeds="0-9", batch=3, dask=address, resume=True, **KW)
    assert summary["written"] == 2 and summary["skipped"] == 8
    _identical(one, tmp_path / "client")


def _blind(on: bool) -> None:
    """On a worker: make it see no --out (as without a shared filesystem), or see again."""
    import cellsynth.synth.cluster as c

    if on:
        c._real_sees = getattr(c, "_real_sees", c._sees)
        c._sees = lambda *args: False
    else:
        c._sees = getattr(c, "_real_sees", c._sees)


def test_workers_without_a_shared_folder(tmp_path, dask_cluster, address):
    one = tmp_path / "one"
    synth(one, seeds="0-5", batch=2, **KW)
    dask_cluster.run(_blind, True)
    try:
        summary = synth(tmp_path / "auto", seeds="0-5", batch=2, dask=address, **KW)
        assert summary["dask"]["written_by_client"] == 6  # auto: the client wrote them
        _identical(one, tmp_path / "auto")
        out = tmp_path / "w"
        with pytest.raises(CellsynthError, match="does not see --out"):
            synth(out, seeds="0-5", batch=2, dask=address, dask_write="workers", **KW)
        assert not out.exists()
    finally:
        dask_cluster.run(_blind, False)


def test_gan_sources_same_files(tmp_path, address, sg2_snapshot):
    pytest.importorskip("cellsynth.pix2pixhd.translator", reason="pix2pixhd not built")
    p = tiny_translator(tmp_path)
    kw = dict(masks=f"stylegan3:{sg2_snapshot}", images=f"pix2pixhd:{p}", batch=2, device="cpu")
    synth(tmp_path / "one", seeds="0-4", **kw)
    summary = synth(tmp_path / "dk", seeds="0-4", dask=address, **kw)
    _identical(tmp_path / "one", tmp_path / "dk")
    assert summary["dask"]["chunks"] == 3  # the GAN batches [0, 1], [2, 3], [4]


# ---- failures ----------------------------------------------------------------------------------
def test_worker_killed_mid_run(tmp_path, dask_cluster, address):
    kw = dict(KW, size=96, seeds="0-39", batch=2)
    one = tmp_path / "one"
    synth(one, **kw)
    out = tmp_path / "dk"
    before = set(worker_pids(dask_cluster).values())
    killed: dict = {}
    at: list[int] = []

    def kill():
        killed.update(kill_busy_worker(dask_cluster, lambda: _masks(out) >= 2))
        at.append(_masks(out))

    t = threading.Thread(target=kill)
    t.start()
    summary = synth(out, dask=address, **kw)
    t.join()
    assert killed and killed["pid"] in before, "no worker was busy"
    assert at[0] < 40, "the run was over before the kill"
    _identical(one, out)
    assert summary["written"] == 40
    deadline = time.monotonic() + 60
    while len(worker_pids(dask_cluster)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)  # its nanny starts a new worker
    assert killed["pid"] not in worker_pids(dask_cluster).values()


def test_resume_after_the_client_was_killed(tmp_path, address):
    kw = dict(KW, size=96, seeds="0-39", batch=2)
    one = tmp_path / "one"
    synth(one, **kw)
    out = tmp_path / "dk"
    args = [sys.executable, "-m", "cellsynth", "synth", "--out", str(out), "--no-progress"]
    args += ["--seeds", "0-39", "--batch", "2", "--size", "96", "--mean-radius", "6"]
    args += ["--density", "0.6", "--spots-count", "2", "--dask", "local:2"]
    # its own session: the client and the workers it starts form one process group
    proc = subprocess.Popen(
        args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 180
        while _masks(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert 2 <= _masks(out) < 40 and not (out / "manifest.json").exists()
    time.sleep(0.5)  # workers the kill left orphaned, if any, finish their last chunk
    with pytest.raises(CellsynthError, match="--resume"):
        synth(out, dask=address, **kw)
    summary = synth(out, dask=address, resume=True, **kw)
    assert 0 < summary["written"] < 40
    _identical(one, out)
