"""`cellsynth benchmark run --dask`: the test images predicted and scored by Dask workers give
the results of a run in one process (failures included), also when a worker is killed mid-run;
a bad --dask is one line."""

from __future__ import annotations

import csv
import filecmp
import io
import json
import threading
import time

import numpy as np
import pytest
from conftest import dir_files, disks_sample, free_port, kill_busy_worker
from scipy import ndimage as ndi

from cellsynth.benchmark.runner import run_benchmark
from cellsynth.benchmark.segmenters import Segmenter, register
from cellsynth.datasets.canonical import write_dataset
from cellsynth.errors import CellsynthError

TIMING = {"created", "train_s", "predict_s", "predict_s_per_image"}


@register
class _BrittleFake(Segmenter):
    """Thresholds the image; fails on the image whose pixels sum to option ``fail_on``."""

    name = "test-dask-brittle"

    def predict(self, image):
        if int(image.sum()) == self.options.get("fail_on"):
            raise RuntimeError("boom on one image")
        return ndi.label(image > 100)[0].astype(np.uint16)


@register
class _SlowFake(Segmenter):
    """Thresholds the image, slowly (time for a test to kill a worker)."""

    name = "test-dask-slow"

    def predict(self, image):
        time.sleep(0.15)
        return ndi.label(image > 100)[0].astype(np.uint16)


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    write_dataset(
        root,
        {
            "train": [disks_sample(i, size=48) for i in range(2)],
            "test": [disks_sample(100 + i, size=48) for i in range(11)],
        },
    )
    return root


def _untimed(x):
    if isinstance(x, dict):
        return {k: _untimed(v) for k, v in x.items() if k not in TIMING}
    if isinstance(x, list):
        return [_untimed(v) for v in x]
    return x


def _csv_untimed(path):
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _same_results(a, b):
    assert dir_files(a) == dir_files(b)  # no fallback log: the workers predicted
    ra = json.loads((a / "results.json").read_text())
    rb = json.loads((b / "results.json").read_text())
    assert _untimed(ra) == _untimed(rb)
    assert _csv_untimed(a / "results.csv") == _csv_untimed(b / "results.csv")
    samples = [f for f in dir_files(a) if f.startswith("samples/")]
    assert samples and samples == [f for f in dir_files(b) if f.startswith("samples/")]
    for f in samples:
        assert filecmp.cmp(a / f, b / f, shallow=False), f
    return ra


def test_same_results_as_one_process(tmp_path, data, dask_cluster):
    from cellsynth.datasets import CanonicalDataset

    test = CanonicalDataset(data, "test")
    fail_on = int(test[6].image.sum())  # the 7th of 11 images fails
    kw = dict(
        options={"test-dask-brittle": {"fail_on": fail_on}, "classical": {"tune": False}},
        progress=False,
        n_samples=4,
    )

    def run(out, dask=None):
        return run_benchmark(
            data,
            [data / "test"],
            ["classical", "test-dask-brittle"],
            out,
            dask=dask,
            **kw,
        )

    run(tmp_path / "one")
    run(tmp_path / "dk", dask=dask_cluster.scheduler.address)
    res = _same_results(tmp_path / "one", tmp_path / "dk")
    brittle = res["segmenters"]["test-dask-brittle"]["datasets"]["data-test"]
    assert brittle["status"] == "failed" and "boom on one image" in brittle["error"]
    assert len(brittle["images"]) == 6  # the images before the failing one
    assert res["segmenters"]["classical"]["datasets"]["data-test"]["summary"]["n_images"] == 11
    log = (tmp_path / "dk" / "logs" / "test-dask-brittle.txt").read_text()
    assert "boom on one image" in log


def test_worker_killed_mid_benchmark(tmp_path, data, dask_cluster):
    run_benchmark(data, [data / "test"], ["test-dask-slow"], tmp_path / "one", progress=False)
    killed: dict = {}

    def kill():
        killed.update(kill_busy_worker(dask_cluster, lambda: True))

    t = threading.Thread(target=kill)
    t.start()
    out = tmp_path / "dk"
    res = run_benchmark(
        data,
        [data / "test"],
        ["test-dask-slow"],
        out,
        progress=False,
        dask=dask_cluster.scheduler.address,
    )
    t.join()
    assert killed, "no worker was busy"
    assert res["segmenters"]["test-dask-slow"]["status"] == "ok"
    _same_results(tmp_path / "one", out)


def test_bad_dask_gives_one_line(tmp_path, data, capsys):
    from cellsynth.cli import main

    out = tmp_path / "bench"
    with pytest.raises(CellsynthError, match="not a Dask scheduler address"):
        run_benchmark(data, [data / "test"], ["classical"], out, dask="nowhere")
    assert not out.exists()
    pytest.importorskip("distributed", reason="dask.distributed is not installed")
    import dask.config

    args = ["benchmark", "run", "--test", str(data / "test"), "--out", str(out), "--quiet"]
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main([*args, "--dask", f"tcp://127.0.0.1:{free_port()}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "no Dask scheduler answered" in err[0]
    assert not out.exists()
