"""The StarDist segmenter (the real stardist package): fit, predict, save/load, learning,
pretrained local models and errors. Tiny networks on 64 x 64 disks; skipped without stardist."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("stardist")

from conftest import (  # noqa: E402
    check_labels,
    check_odd_inputs,
    check_reload,
    check_untrained,
    disks_sample,
    fit_segmenter,
)

from cellsynth.benchmark.metrics import average_precision  # noqa: E402
from cellsynth.benchmark.segmenters import make_segmenter  # noqa: E402
from cellsynth.benchmark.segmenters._tfutil import import_tensorflow  # noqa: E402
from cellsynth.benchmark.segmenters.stardist import StarDistSegmenter, _pad_to  # noqa: E402
from cellsynth.errors import CellsynthError  # noqa: E402

try:  # in the safe order (torch's compiler stack first): the other order crashes later tests
    import_tensorflow()
except ImportError:
    pytest.skip("tensorflow is not installed", allow_module_level=True)

TINY = dict(patch=64, unet_depth=2, unet_filters=8, n_rays=16, batch_size=4, n_evals=2)


@pytest.fixture(scope="module")
def trained(disks, tmp_path_factory):
    """One tiny model trained for 300 steps (shared by the tests below)."""
    return fit_segmenter(
        tmp_path_factory, disks, "stardist", 150, **TINY, lr=3e-3, val_fraction=0.2
    )


@pytest.mark.slow
def test_fit_learns_and_round_trips(trained, disks, tmp_path):
    seg, work = trained
    info = seg.info
    assert info["steps"] > 0 and info["validation"]["n_images"] >= 1
    # better than its untrained state (the curve's first point) on the validation slice
    curve = [p["val_ap50"] for p in info["curve"]]
    assert info["best"]["val_ap50"] > curve[0]
    assert info["postprocess"]["params"].keys() == {"prob_thresh", "nms_thresh"}
    # and on a fresh image it does better than the same network untrained
    s = disks_sample(99)
    lab = seg.predict(s.image)
    check_labels(lab, s.image.shape)
    untrained = make_segmenter("stardist", **TINY, lr=3e-3, val_fraction=0.2)
    untrained._ensure_model(1)
    ap_untrained = average_precision(s.labels, untrained.predict(s.image), [0.5])[0][0]
    assert average_precision(s.labels, lab, [0.5])[0][0] > ap_untrained + 0.2
    # odd sizes and 3-D single-channel images
    check_odd_inputs(seg, s.image)
    # weights only on disk; the same predictions after a reload
    check_reload(seg, work / "model", s.image, lab)


def test_pretrained_local_folder(tmp_path, disks):
    """A model in StarDist's own folder format (config.json + weights) is used as it is, with
    its own thresholds, and gives what StarDist itself gives."""
    from stardist.models import Config2D, StarDist2D

    conf = Config2D(n_rays=16, grid=(2, 2), unet_n_depth=2, unet_n_filter_base=8)
    model = StarDist2D(conf, name="tiny_fluo", basedir=str(tmp_path))
    model.keras_model.save_weights(str(tmp_path / "tiny_fluo" / "weights_best.weights.h5"))
    (tmp_path / "tiny_fluo" / "thresholds.json").write_text('{"prob": 0.6, "nms": 0.3}')
    seg = make_segmenter("stardist", pretrained=str(tmp_path / "tiny_fluo"))
    seg.fit(disks, tmp_path / "work", epochs=1, progress=False)  # nothing trained
    assert seg.info["steps"] == 0
    img = disks[0].image
    from csbdeep.utils import normalize

    want, _ = model.predict_instances(
        normalize(img.astype(np.float32), 1, 99.8), prob_thresh=0.6, nms_thresh=0.3
    )
    got = seg.predict(img)
    check_labels(got, img.shape)
    assert (got > 0).sum() == (want > 0).sum()
    again = StarDistSegmenter.load(tmp_path / "work" / "model")
    np.testing.assert_array_equal(again.predict(img), got)


def test_errors(tmp_path, monkeypatch):
    with pytest.raises(CellsynthError, match="unknown option"):
        make_segmenter("stardist", no_such=1)
    with pytest.raises(CellsynthError, match="multiple of 16"):
        make_segmenter("stardist", patch=100)
    seg = make_segmenter("stardist", **TINY)
    check_untrained(seg, tmp_path)
    bad = make_segmenter("stardist", pretrained=str(tmp_path / "nope"))
    with pytest.raises(CellsynthError, match="config.json and weights_best.h5"):
        bad.predict(np.zeros((32, 32), np.uint8))
    monkeypatch.setitem(sys.modules, "stardist.models", None)  # as if not installed
    with pytest.raises(CellsynthError, match=r"cellsynth\[stardist\]"):
        make_segmenter("stardist", **TINY).fit(
            [disks_sample(0)], tmp_path / "w", epochs=1, progress=False
        )


def test_tensorflow_then_torchvision_in_one_process():
    """The crash this module's import order avoids: TensorFlow (through the segmenter) and
    then torchvision's models (Mask R-CNN's imports) in one fresh process."""
    import subprocess

    code = (
        "from cellsynth.benchmark.segmenters._tfutil import import_tensorflow; "
        "import_tensorflow(); import torchvision.models.detection; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-500:]


def test_pad_to():
    img = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = _pad_to(img, 6)
    assert out.shape == (6, 6) and np.array_equal(out[:3, :4], img)
    # the padded image is empty where the padded labels are: no reflected nuclei there
    assert out[3:].sum() == 0 and out[:, 4:].sum() == 0
    rgb = np.ones((3, 4, 2), np.float32)
    assert _pad_to(rgb, 5).shape == (5, 5, 2) and _pad_to(rgb, 5)[3:].sum() == 0
    lab = np.ones((3, 4), np.int32)
    padded = _pad_to(lab, 5)
    assert padded.shape == (5, 5) and padded[3:].sum() == 0 and padded[:, 4:].sum() == 0
    assert _pad_to(img, 2) is img


def test_fit_patch_shrinks_to_the_smallest_training_image():
    from cellsynth.benchmark.segmenters._torchutil import fit_patch

    assert fit_patch(256, 16, [(300, 400), (256, 260)]) == 256  # all large enough: as set
    assert fit_patch(256, 16, [(128, 128), (520, 696)]) == 128  # the synthetic 128-px tiles
    assert fit_patch(256, 16, [(100, 140)]) == 96  # the largest multiple of 16 that fits
    assert fit_patch(256, 16, [(10, 10)]) == 16  # never below the network's divisor
    assert fit_patch(64, 16, [(128, 128)]) == 64  # never above the patch asked for
