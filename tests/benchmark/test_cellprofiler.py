"""The cellprofiler segmenter (IdentifyPrimaryObjects on centrosome): disks, options, tuning."""

from __future__ import annotations

import numpy as np
import pytest
from test_classical import disks

from cellsynth.benchmark import metrics
from cellsynth.benchmark.segmenters import make_segmenter
from cellsynth.datasets.canonical import Sample
from cellsynth.errors import CellsynthError

pytest.importorskip("centrosome", reason="centrosome (CellProfiler's library) not installed")
SHAPE = {"unclump": "shape", "watershed": "shape"}  # flat disks: declump by shape


def shaded_disks(size=64):
    """Two touching disks, each brightest at its own centre (an intensity valley between them)."""
    yy, xx = np.mgrid[:size, :size].astype(float)
    truth = np.zeros((size, size), np.uint16)
    image = np.full((size, size), 20.0)
    for k, (cy, cx) in enumerate([(32, 22), (32, 40)], start=1):
        d = np.hypot(yy - cy, xx - cx)
        inside = (d <= 10) & (truth == 0)
        truth[inside] = k
        image = np.where(d <= 10, np.maximum(image, 230 - 9 * d), image)
    return truth, image.clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "unclump,lines", [("shape", "shape"), ("shape", "propagate"), ("intensity", "intensity")]
)
def test_declumps_touching_disks(unclump, lines):
    true, image = shaded_disks()
    seg = make_segmenter("cellprofiler", unclump=unclump, watershed=lines, min_diameter=8)
    pred = seg.predict(image)
    assert pred.shape == true.shape and pred.dtype == np.uint16
    m = metrics.match_instances(true, pred, 0.5)
    assert m.n_pred == 2 and m.tp == 2 and m.sq > 0.8
    merged = make_segmenter("cellprofiler", unclump="none").predict(image)
    assert int(merged.max()) == 1  # without declumping the pair stays one object


def test_four_disks_and_thresholds():
    true, image = disks()
    for method in ("mct", "otsu", "robust_background"):
        pred = make_segmenter("cellprofiler", threshold_method=method, **SHAPE).predict(image)
        m = metrics.match_instances(true, pred, 0.5)
        assert m.tp == 4 and m.n_pred == 4, method
    adaptive = make_segmenter("cellprofiler", threshold_strategy="adaptive", **SHAPE)
    assert metrics.match_instances(true, adaptive.predict(image), 0.5).tp == 4
    blank = make_segmenter("cellprofiler").predict(np.full((32, 32), 7, np.uint8))
    assert blank.shape == (32, 32) and blank.max() == 0


def test_size_range_and_border():
    true, image = disks()  # radii 6-9: areas 113-254 px, diameters 12-18 px
    small = make_segmenter("cellprofiler", **SHAPE, min_diameter=14, max_diameter=40)
    pred = small.predict(image)  # the disk of radius 6 (area ~113 < pi 14^2 / 4) is gone
    assert int(pred.max()) == 3
    shifted = np.roll(image, -10, axis=1)  # the disk at x=14 now touches the left border
    keep = make_segmenter("cellprofiler", **SHAPE).predict(shifted)
    drop = make_segmenter("cellprofiler", **SHAPE, discard_border=True).predict(shifted)
    assert int(keep.max()) == 4 and int(drop.max()) == 3


def test_fit_tunes_and_round_trips(tmp_path):
    samples = []
    for i in range(3):
        lab, img = disks(seed=i)
        samples.append(Sample(f"s{i}", img, lab, {}))
    seg = make_segmenter("cellprofiler", tune_images=3)
    seg.fit(samples, tmp_path, progress=False)
    params = seg.info["postprocess"]["params"]
    assert set(params) == {
        "min_diameter",
        "max_diameter",
        "threshold_method",
        "unclump",
        "watershed",
    }
    assert {k: seg.options[k] for k in params} == params
    assert seg.info["postprocess"]["val_ap50"] >= seg.info["postprocess"]["default_val_ap50"]
    assert seg.info["postprocess"]["tried"] == len(seg.tune_grid())
    seg.save(tmp_path / "m")
    again = type(seg).load(tmp_path / "m")
    image = samples[0].image
    assert np.array_equal(again.predict(image), seg.predict(image))


def test_bad_options():
    with pytest.raises(CellsynthError, match="unknown option"):
        make_segmenter("cellprofiler", diameter=5)
    with pytest.raises(CellsynthError, match="min_diameter"):
        make_segmenter("cellprofiler", min_diameter=20, max_diameter=10)
    image = disks()[1]
    for key, value in [("threshold_method", "li"), ("unclump", "x"), ("watershed", "y")]:
        with pytest.raises(CellsynthError, match=key):
            make_segmenter("cellprofiler", **{key: value}).predict(image)
