"""`cellsynth demo`: the whole pipeline at the tiny preset, its report, and its bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import labels_with_disks

from cellsynth.demo import Pipeline, run_demo
from cellsynth.errors import CellsynthError

STAGES = ("data", "synth", "realism", "finetune-masks", "finetune-images", "benchmark")


@pytest.mark.slow
def test_demo_tiny_end_to_end(tmp_path):
    lines = []
    out = tmp_path / "demo"
    report = run_demo(out=out, preset="tiny", echo=lines.append)
    assert report == out / "report.html" and report.is_file()
    summary = json.loads((out / "demo.json").read_text())
    status = {s["name"]: s["status"] for s in summary["stages"]}
    assert status == {k: "ok" for k in STAGES}, summary["stages"]
    assert "embedded real sample" in summary["facts"]["data"]["what"]
    page = report.read_text()
    headings = [
        "The answer",
        "The demo's goals",
        "Synthetic images, masks and puncta",
        "Real held-out images",
        "Mask realism",
        "Segmenter benchmark: synthetic against real",
        "Training works",
    ]
    at = [page.index(h) for h in headings]
    assert at[0] < page.index("<h2>Stages</h2>")  # the answer leads
    assert "Trust " in page and "Spearman" in page
    assert "<script" not in page and "http://" not in page  # self-contained, offline
    assert any(line.startswith("[demo] Trust ") for line in lines)
    assert sum("[demo] goal " in line for line in lines) == 4
    assert (out / "synthetic" / "train" / "annotations.json").is_file()
    assert (out / "finetune" / "masks_before.png").is_file()
    assert (out / "finetune" / "masks_after.png").is_file()
    assert (out / "finetune" / "images_before_after.png").is_file()
    bench = json.loads((out / "benchmark" / "results.json").read_text())
    assert len(bench["datasets"]) == 2  # synthetic test + the real sample's test split
    assert bench["validity"]["comparisons"][0]["metrics"]["ap50"]["spearman"]["ci"] is not None
    realism = json.loads((out / "realism.json").read_text())
    assert realism["tile"] == 128 and realism["objects_per_image_real"] > 0
    # a second run refuses to overwrite without --overwrite
    with pytest.raises(CellsynthError, match="--overwrite"):
        run_demo(out=out, preset="tiny", echo=lambda m: None)


def test_answer_from_made_up_results():
    """The headline on hand-made per-image counts: the best segmenter, its lead, the goals."""
    from cellsynth.demo.answer import best_on_real, demo_goals, headline
    from cellsynth.stylegan3.metrics import realism

    def rows(tp50, n_true=10, n_pred=10):
        return [
            {
                "tp": [t] * 10,
                "fp": [n_pred - t] * 10,
                "fn": [n_true - t] * 10,
                "tp50": t,
                "n_true": n_true,
                "n_pred": n_pred,
                "iou_sum": 0.8 * t,
            }
            for t in tp50
        ]

    def seg(real, syn):
        ok = {"status": "ok", "summary": {"ap50": 0.0}}
        return {
            "datasets": {"real": dict(ok, images=rows(real)), "syn": dict(ok, images=rows(syn))}
        }

    results = {
        "datasets": {"real": {"synthetic": False}, "syn": {"synthetic": True}},
        "segmenters": {
            "stardist": seg([9, 9, 8, 9], [9, 8, 9, 9]),
            "classical": seg([6, 7, 6, 5], [7, 7, 6, 6]),
            "unet": seg([4, 5, 3, 4], [5, 4, 5, 4]),
        },
    }
    ranked = best_on_real(results, n_boot=300)
    assert [r["segmenter"] for r in ranked["ranking"]] == ["stardist", "classical", "unet"]
    tp, n = 35, 40
    assert ranked["ranking"][0]["ap50"] == pytest.approx(tp / (tp + 2 * (n - tp)))
    ci = ranked["ranking"][0]["ci"]
    assert ci["low"] <= ranked["ranking"][0]["ap50"] <= ci["high"]
    assert ranked["lead"]["over"] == "classical" and ranked["lead"]["share"] == 1.0
    assert best_on_real(results, n_boot=300) == ranked  # seeded
    text = " ".join(headline(results))
    assert "Trust stardist" in text and "a clear lead" in text
    block = {
        "spearman": {"value": 0.5, "ci": {"low": 0.1, "high": 0.9}},
        "kendall": {"value": 0.3, "ci": None},
        "flips": [{"better_on_synthetic": "unet", "better_on_real": "classical"}],
        "ranking_synthetic": [],
        "ranking_real": [],
    }
    results["validity"] = {
        "comparisons": [{"synthetic": "syn", "real": "real", "metrics": {"ap50": block}}]
    }
    text = " ".join(headline(results))
    assert "Spearman 0.500 (95% CI 0.100 to 0.900)" in text and "unet over classical" in text
    assert "does not predict the real ranking" in text
    goals = demo_goals(results, None)
    deep = goals["every deep segmenter above AP@0.5 0.5 on the real images"]
    assert deep["met"] is False and "unet 0.250" in deep["value"]  # 16 / (16 + 24 + 24)
    real = labels_with_disks([(2, 20, 5), (30, 45, 6), (24, 20, 4)])  # 2 cut by the edge
    fake = labels_with_disks([(24, 20, 4), (30, 30, 5)])  # none cut
    fig = realism([real], [fake, fake])
    fig["goals"] = {
        "objects_per_image": {"synthetic": 2.0, "real": 3.0, "met": False},
        "mean_area": {"synthetic": 60.0, "real": 70.0, "met": True},
    }
    count = demo_goals(None, fig)["synthetic objects per image within 15% of real"]
    assert count == {"value": "2 vs 3 (cut by the edge 0 vs 2)", "met": False}


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
