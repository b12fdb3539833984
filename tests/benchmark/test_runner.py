"""Benchmark runner end to end on a tiny canonical dataset, failure isolation, bad input, CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from cellsynth.benchmark import metrics
from cellsynth.benchmark.runner import check_prediction, run_benchmark
from cellsynth.benchmark.segmenters import Segmenter, make_segmenter, register
from cellsynth.datasets.canonical import Sample, write_dataset
from cellsynth.errors import CellsynthError


@register
class _FailingFake(Segmenter):
    name = "test-failing"

    def predict(self, image):
        raise RuntimeError("boom in predict")


@register
class _WrongShapeFake(Segmenter):
    name = "test-wrongshape"

    def predict(self, image):
        return np.zeros((image.shape[0] + 1, image.shape[1]), np.uint16)


@register
class _CountingFake(Segmenter):
    """Trainable fake: 'learns' a threshold (mean image value); counts its fits."""

    name = "test-counting"
    trainable = True
    fits = 0

    def fit(self, train, workdir, budget_minutes=None, epochs=None, progress=True):
        type(self).fits += 1
        self.options["level"] = float(np.mean([s.image.mean() for s in train]))

    def predict(self, image):
        return ndi.label(image > self.options.get("level", 100))[0].astype(np.uint16)


def _sample(name, seed, size=48):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.uint16)
    for k in range(1, 4):
        cy, cx = rng.integers(8, size - 8, 2)
        labels[((yy - cy) ** 2 + (xx - cx) ** 2 <= 25) & (labels == 0)] = k
    image = np.where(labels > 0, 200, 20).astype(np.uint8) + rng.integers(0, 10, labels.shape)
    return Sample(name, image.astype(np.uint8), labels)


@pytest.fixture
def tiny(tmp_path):
    root = tmp_path / "tiny"
    write_dataset(
        root,
        {
            "train": [_sample(f"a{i}", i) for i in range(2)],
            "test": [_sample(f"b{i}", 10 + i) for i in range(3)],
        },
        info={"source": "unit test"},
    )
    return root


def test_end_to_end_with_failures(tiny, tmp_path):
    out = tmp_path / "bench"
    results = run_benchmark(
        tiny,
        [tiny / "test"],
        ["classical", "test-failing", "test-wrongshape"],
        out,
        options={"classical": {"tune_images": 2}},
        progress=False,
        n_samples=2,
    )
    for f in ("results.json", "results.csv", "report.html"):
        assert (out / f).is_file()
    saved = json.loads((out / "results.json").read_text())
    assert saved["segmenters"].keys() == results["segmenters"].keys()
    dkey = "tiny-test"
    assert list(saved["datasets"]) == [dkey] and saved["datasets"][dkey]["n_images"] == 3
    assert saved["datasets"][dkey]["provenance"]["dataset.json"]["content"]["source"] == "unit test"

    cl = saved["segmenters"]["classical"]
    assert cl["status"] == "ok" and cl["trained"] and cl["train_s"] > 0
    d = cl["datasets"][dkey]
    assert d["status"] == "ok" and len(d["images"]) == 3
    # the stored metrics are those of the (saved) prediction against the ground truth
    tuned = {k: v for k, v in cl["options"].items()}
    assert "tuned_ap50" not in tuned  # options recorded are the user's, not the tuned ones
    pred = make_segmenter("classical", tune_images=2)
    from cellsynth.datasets.canonical import CanonicalDataset

    test = CanonicalDataset(tiny, "test")
    assert (out / "samples" / "classical" / dkey / "b0.tif").is_file()
    from cellsynth.datasets.io import read_labels

    kept = read_labels(out / "samples" / "classical" / dkey / "b0.tif")
    direct = metrics.image_metrics(test[0].labels, kept)
    assert d["images"][0]["tp"] == direct["tp"]
    assert d["images"][0]["aji"] == pytest.approx(direct["aji"])
    rows = [metrics.image_metrics(s.labels, pred.predict(s.image)) for s in test]
    assert d["summary"]["n_true"] == sum(r["n_true"] for r in rows) == 9
    assert d["summary"]["ap50"] >= 0.6

    fail = saved["segmenters"]["test-failing"]
    assert fail["status"] == "failed" and "boom in predict" in fail["error"]
    assert fail["datasets"][dkey]["status"] == "failed"
    assert "boom in predict" in (out / "logs" / "test-failing.txt").read_text()
    wrong = saved["segmenters"]["test-wrongshape"]
    assert wrong["status"] == "failed" and "shape" in wrong["error"]

    with open(out / "results.csv") as fh:
        table = list(csv.DictReader(fh))
    summary_rows = [r for r in table if r["level"] == "dataset"]
    assert {r["segmenter"]: r["status"] for r in summary_rows} == {
        "classical": "ok",
        "test-failing": "failed",
        "test-wrongshape": "failed",
    }
    image_rows = [r for r in table if r["level"] == "image"]
    assert len(image_rows) == 3 and float(image_rows[0]["ap50"]) == pytest.approx(
        d["images"][0]["ap50"]
    )

    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 1 + 2 * 3  # AP plot + overlays
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "boom in predict" in page and "classical" in page

    # the report can be rebuilt from the results folder
    (out / "report.html").unlink()
    from cellsynth.benchmark.runner import rewrite_report

    assert rewrite_report(out).is_file()


def test_cache_reuses_trained_models(tiny, tmp_path):
    _CountingFake.fits = 0
    cache = tmp_path / "cache"
    kwargs = dict(cache_dir=cache, progress=False, budgets={"test-counting": {"epochs": 1}})
    r1 = run_benchmark(tiny, [tiny], ["test-counting"], tmp_path / "o1", **kwargs)
    r2 = run_benchmark(tiny, [tiny], ["test-counting"], tmp_path / "o2", **kwargs)
    assert _CountingFake.fits == 1
    s1, s2 = r1["segmenters"]["test-counting"], r2["segmenters"]["test-counting"]
    assert not s1["cached"] and s2["cached"] and s1["cache_key"] == s2["cache_key"]
    assert s1["datasets"]["tiny-test"]["summary"] == s2["datasets"]["tiny-test"]["summary"]
    # another budget is another model
    kwargs["budgets"] = {"test-counting": {"epochs": 2}}
    run_benchmark(tiny, [tiny], ["test-counting"], tmp_path / "o3", **kwargs)
    assert _CountingFake.fits == 2
    assert len(list(cache.iterdir())) == 2


def test_bad_input(tiny, tmp_path):
    with pytest.raises(CellsynthError, match="unknown segmenter"):
        run_benchmark(None, [tiny], ["nosuchseg"], tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(CellsynthError, match="not a canonical dataset"):
        run_benchmark(None, [tmp_path / "empty"], ["classical"], tmp_path / "x", progress=False)
    with pytest.raises(CellsynthError, match="no such dataset"):
        run_benchmark(None, [tmp_path / "missing"], ["classical"], tmp_path / "x", progress=False)
    with pytest.raises(CellsynthError, match="no test dataset"):
        run_benchmark(None, [], ["classical"], tmp_path / "x", progress=False)
    with pytest.raises(CellsynthError, match="not being run"):
        run_benchmark(None, [tiny], ["classical"], tmp_path / "x", options={"unet": {}})
    assert not (tmp_path / "x").exists()
    (tmp_path / "taken").mkdir()
    with pytest.raises(CellsynthError, match="already exists"):
        run_benchmark(None, [tiny], ["classical"], tmp_path / "taken", progress=False)
    # bad options of one segmenter are a failure of that segmenter only
    r = run_benchmark(
        None,
        [tiny],
        ["classical", "test-counting"],
        tmp_path / "y",
        options={"classical": {"bogus": 1}},
        progress=False,
        max_images=1,
    )
    assert r["segmenters"]["classical"]["status"] == "failed"
    assert "unknown option" in r["segmenters"]["classical"]["error"]
    assert r["segmenters"]["test-counting"]["status"] == "ok"
    assert r["datasets"]["tiny-test"]["n_images"] == 1

    image = np.zeros((8, 9, 3), np.uint8)
    with pytest.raises(CellsynthError, match="shape"):
        check_prediction(np.zeros((9, 8), np.uint16), image, "x")
    with pytest.raises(CellsynthError, match="dtype"):
        check_prediction(np.zeros((8, 9), np.float32), image, "x")
    with pytest.raises(CellsynthError, match="numpy"):
        check_prediction([[0]], image, "x")


def _run_cli(test, out, *extra):
    """``cellsynth benchmark run --test TEST --out OUT EXTRA...``, in-process."""
    from cellsynth.cli import main

    main(["benchmark", "run", "--test", str(test), "--out", str(out), *map(str, extra)])


def test_cli(tiny, tmp_path, capsys):
    from cellsynth.cli import main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("segmenters:\n  classical:\n    options: {tune: false}\nmax_images: 2\n")
    out = tmp_path / "cli"
    _run_cli(tiny, out, "--config", cfg, "--quiet")
    text = capsys.readouterr().out
    assert "classical" in text and "tiny-test" in text
    saved = json.loads((out / "results.json").read_text())
    assert saved["segmenters"]["classical"]["options"] == {"tune": False}
    assert saved["datasets"]["tiny-test"]["n_images"] == 2
    main(["benchmark", "report", str(out)])
    assert "report.html" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        _run_cli(tiny, tmp_path / "z", "--segmenters", "classical,nosuchseg", "--quiet")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown segmenter 'nosuchseg'") and err.count("\n") == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("segmenterz: {}\n")
    with pytest.raises(SystemExit) as exc:
        _run_cli(tiny, tmp_path / "z", "--config", bad)
    assert exc.value.code == 2 and "unknown config key" in capsys.readouterr().err
    main(["benchmark", "list"])
    assert "classical" in capsys.readouterr().out
