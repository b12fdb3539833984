"""Classical segmenter: disks (separated and touching) in every supported image flavour."""

from __future__ import annotations

import numpy as np
import pytest

from cellsynth.benchmark import metrics
from cellsynth.benchmark.segmenters import make_segmenter
from cellsynth.datasets.canonical import Sample
from cellsynth.errors import CellsynthError


def disks(seed=0, size=64, touching=True):
    """Ground truth of two separated disks and (optionally) two touching ones, and a noisy
    fluorescence-like uint8 image of them."""
    yy, xx = np.mgrid[:size, :size]
    centres = [(14, 14, 7), (14, 48, 6)]
    if touching:
        centres += [(44, 22, 9), (44, 39, 9)]  # centres 17 px apart, radii 9: they overlap
    labels = np.zeros((size, size), np.uint16)
    for k, (cy, cx, r) in enumerate(centres, start=1):
        labels[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (labels == 0)] = k
    rng = np.random.default_rng(seed)
    image = np.where(labels > 0, 190.0, 25.0) + rng.normal(0, 8, labels.shape)
    return labels, np.clip(image, 0, 255).astype(np.uint8)


def ap50(true, pred):
    return metrics.match_instances(true, pred, 0.5).ap


def test_separates_touching_disks():
    true, image = disks()
    seg = make_segmenter("classical")
    pred = seg.predict(image)
    assert pred.shape == true.shape and pred.dtype == np.uint16
    assert set(np.unique(pred)) == set(range(int(pred.max()) + 1))  # labels 0..N
    m = metrics.match_instances(true, pred, 0.5)
    assert m.n_pred == 4 and m.tp == 4
    assert m.sq > 0.8
    # without declumping the touching pair stays one object
    merged = make_segmenter("classical", declump="none").predict(image)
    assert int(merged.max()) == 3
    assert make_segmenter("classical", declump="hmax", h=1.0).predict(image).max() == 4


@pytest.mark.parametrize("flavour", ["uint16", "rgb", "rgba", "float", "inverted", "local"])
def test_image_flavours(flavour):
    true, image = disks(seed=1)
    opts = {}
    if flavour == "uint16":
        image = image.astype(np.uint16) * 257
    elif flavour == "rgb":
        image = np.stack([image, image // 2, image], axis=-1)
    elif flavour == "rgba":
        image = np.dstack([image, image, image, np.full_like(image, 255)])
    elif flavour == "float":
        image = image.astype(np.float32) / 255.0
    elif flavour == "inverted":
        image = 255 - image
        opts = {"invert": "auto"}
    elif flavour == "local":
        opts = {"method": "local", "block_size": 31}
    pred = make_segmenter("classical", **opts).predict(image)
    assert pred.shape == true.shape
    assert ap50(true, pred) >= 0.75


def test_separated_disks_and_empty_image():
    true, image = disks(touching=False)
    for method in ("otsu", "li", "triangle", "mean"):
        pred = make_segmenter("classical", method=method).predict(image)
        assert ap50(true, pred) == 1.0
    flat = make_segmenter("classical").predict(np.full((32, 32), 7, np.uint8))
    assert flat.shape == (32, 32) and flat.max() == 0


def test_fit_tunes_and_roundtrips(tmp_path):
    samples = []
    for seed in range(2):
        true, image = disks(seed=seed)
        samples.append(Sample(f"s{seed}", image, true))
    seg = make_segmenter("classical", tune_images=2)
    seg.fit(samples, tmp_path / "work", progress=False)
    assert seg.options["method"] in ("otsu", "li", "local")
    assert seg.options["min_distance"] in (3, 5, 8, 12)
    assert seg.options["tuned_ap50"] >= 0.75
    seg.save(tmp_path / "model")
    again = type(seg).load(tmp_path / "model")
    np.testing.assert_array_equal(again.predict(samples[0].image), seg.predict(samples[0].image))


def test_bad_options_and_images():
    with pytest.raises(CellsynthError, match="unknown option"):
        make_segmenter("classical", thresh=3)
    with pytest.raises(CellsynthError, match="threshold method"):
        make_segmenter("classical", method="magic").predict(disks()[1])
    with pytest.raises(CellsynthError, match="block_size"):
        make_segmenter("classical", method="local", block_size=4).predict(disks()[1])
    with pytest.raises(CellsynthError, match="image"):
        make_segmenter("classical").predict(np.zeros((4, 8, 8, 2), np.uint8))
    with pytest.raises(CellsynthError, match="channel"):
        make_segmenter("classical", channel=5).predict(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(CellsynthError, match="no saved"):
        type(make_segmenter("classical")).load("/nonexistent/model")
