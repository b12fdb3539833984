"""`cellsynth demo`: the whole pipeline at the tiny preset, its report, and its bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cellsynth.demo import Pipeline, run_demo
from cellsynth.errors import CellsynthError


@pytest.mark.slow
def test_demo_tiny_end_to_end(tmp_path):
    out = tmp_path / "demo"
    report = run_demo(out=out, preset="tiny", minutes=0.6, echo=lambda m: None)
    assert report == out / "report.html" and report.is_file()
    summary = json.loads((out / "demo.json").read_text())
    status = {s["name"]: s["status"] for s in summary["stages"]}
    assert status == {
        k: "ok" for k in ("data", "pack", "stylegan3", "pix2pixhd", "synth", "realism", "benchmark")
    }, summary["stages"]
    page = report.read_text()
    for heading in (
        "Training curves",
        "Generated masks",
        "Synthetic images and puncta",
        "Mask realism",
        "Segmenter benchmark",
    ):
        assert heading in page
    assert "<script" not in page and "http://" not in page  # self-contained, offline
    assert (out / "synthetic" / "train" / "annotations.json").is_file()
    bench = json.loads((out / "benchmark" / "results.json").read_text())
    assert len(bench["datasets"]) == 2  # synthetic test + held-out (simulated) real test
    # a second run refuses to overwrite without --overwrite, and replaces with it
    with pytest.raises(CellsynthError, match="--overwrite"):
        run_demo(out=out, preset="tiny", echo=lambda m: None)


def test_pipeline_isolates_failures():
    pipe = Pipeline(echo=lambda m: None)
    pipe.run("a", lambda: {"detail": "fine"})
    pipe.run("b", lambda: 1 / 0)
    pipe.run("c", lambda: None, "b")
    pipe.run("d", lambda: None, "a")
    assert [s.status for s in pipe.stages] == ["ok", "failed", "skipped", "ok"]
    assert "ZeroDivisionError" in pipe.get("b").error and pipe.get("c").detail == "needs b"


def test_demo_bad_input(tmp_path):
    with pytest.raises(CellsynthError, match="no such dataset"):
        run_demo(out=tmp_path / "o", data=tmp_path / "missing", echo=lambda m: None)
    assert not (tmp_path / "o").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(CellsynthError, match="not a demo folder"):
        run_demo(out=tmp_path / "other", overwrite=True, echo=lambda m: None)
    assert (tmp_path / "other" / "keep.txt").read_text() == "mine"
    r = subprocess.run(
        [sys.executable, "-m", "cellsynth", "demo", "--preset", "huge"],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "huge" in r.stderr


def test_report_of_failed_stages(tmp_path):
    """The report is written whatever failed, and shows the failures (htmlkit page)."""
    from cellsynth.datasets.simulate import simulate_dataset
    from cellsynth.demo import write_demo_report

    simulate_dataset(tmp_path / "data", n_train=1, n_test=2, size=32, mean_radius=5, seed=0)
    pipe = Pipeline(echo=lambda m: None)
    pipe.run("data", lambda: {"detail": "fine"})
    pipe.run("pack", lambda: 1 / 0, "data")
    pipe.run("synth", lambda: None, "pack")
    summary = {"preset": "tiny", "minutes_budget": 1.0, "seconds_total": 3.0}
    page = write_demo_report(tmp_path, pipe, {"data": tmp_path / "data"}, summary).read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert "ZeroDivisionError" in page and "<h2>Errors</h2>" in page
    assert "needs pack" in page and "Synthetic images" not in page
    assert page.count("data:image/png;base64,") == 4  # 2 held-out images, with contours
