"""The Mesmer segmenter (DeepCell's network from a local model; its pre- and post-processing
written here where the deepcell package does not import): a tiny Keras model with Mesmer's
input and four outputs, built and saved by the test (a SavedModel folder and a .keras file),
the post-processing on ideal maps, pre-processing and resampling, errors, the deepcell path and
save/load. Skipped without TensorFlow."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import pickle
import sys
import types

import numpy as np
import pytest

if importlib.util.find_spec("tensorflow") is None:
    pytest.skip("tensorflow is not installed", allow_module_level=True)

from conftest import check_refused  # noqa: E402

from cellsynth.benchmark.segmenters import available, make_segmenter  # noqa: E402
from cellsynth.benchmark.segmenters._tfutil import import_tensorflow  # noqa: E402
from cellsynth.benchmark.segmenters.mesmer import (  # noqa: E402
    MesmerSegmenter,
    deep_watershed,
    mesmer_preprocess,
    resample,
    two_channels,
)
from cellsynth.errors import CellsynthError  # noqa: E402

try:  # in the safe order (torch's compiler stack first): the other order crashes later tests
    tf = import_tensorflow()
except ImportError:
    pytest.skip("tensorflow is not installed", allow_module_level=True)

import keras  # noqa: E402

TILE = 64  # the tiny model's fixed input side: the 101 x 93 test image takes 4 tiles


def grid_disks(shape=(101, 93)):
    """Nine separate disks (radius 6-8) on a 3 x 3 grid: (uint8 image, uint16 labels)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.uint16)
    k = 0
    for cy in (18, 50, 82):
        for cx in (16, 46, 76):
            k += 1
            r = 6 + k % 3
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    noise = np.random.default_rng(0).normal(30, 10, shape)
    img = np.clip((lab > 0) * 150.0 + noise, 0, 255).astype(np.uint8)
    return img, lab


def _gaussian(k: int, sigma: float) -> np.ndarray:
    r = np.arange(k) - k // 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return (g / g.sum()).astype(np.float32)


def tiny_mesmer(in_channels=2, outputs=(1, 3, 1, 3), tile=TILE):
    """A Keras model with Mesmer's input (N x tile x tile x 2) and outputs (whole-cell inner
    distance, whole-cell pixelwise, nuclear inner distance, nuclear pixelwise; layers
    ``semantic_0..3``) whose fixed weights make the outputs a known function of the
    pre-processed nuclear channel x (in [0, 1]; disks above 0.7, background below 0.55):

    - nuclear pixelwise: softmax of (-30, a (m - 0.8), -a (m - 0.8)) with m the 3 x 3 mean of
      x, so the interior is m > 0.8 (the disks less about a pixel, as Mesmer's interior class);
    - nuclear inner distance: a Gaussian blur (sigma 2.5) of sigmoid(2a (m - 0.6)), one smooth
      peak per disk;
    - whole-cell outputs: zeros and uniform thirds (no maxima, so no whole-cell objects).
    """
    layers, a = keras.layers, 20.0
    inp = keras.Input((tile, tile, in_channels), name="input_0")
    mean3 = layers.Conv2D(1, 3, padding="same", use_bias=False)
    m = mean3(inp)
    k = np.zeros((3, 3, in_channels, 1), np.float32)
    k[:, :, 0, 0] = 1 / 9
    mean3.set_weights([k])
    fg_conv = layers.Conv2D(1, 1, activation="sigmoid")
    fg = fg_conv(m)
    fg_conv.set_weights([np.full((1, 1, 1, 1), 2 * a, np.float32), np.array([-1.2 * a], "f4")])
    blur = layers.Conv2D(1, 9, padding="same", use_bias=False)
    inner = blur(fg)
    blur.set_weights([_gaussian(9, 2.5)[:, :, None, None]])
    pix_conv = layers.Conv2D(3, 1)
    pix = pix_conv(m)
    pix_conv.set_weights(
        [np.array([0, a, -a], "f4").reshape(1, 1, 1, 3), np.array([-30, -0.8 * a, 0.8 * a], "f4")]
    )
    heads = {
        0: layers.Conv2D(1, 1, kernel_initializer="zeros")(m),
        1: layers.Conv2D(3, 1, kernel_initializer="zeros")(m),
        2: inner,
        3: pix,
    }
    outs = []
    for i, c in enumerate(outputs):
        x = heads[i] if c == (1, 3, 1, 3)[i] else layers.Conv2D(c, 1)(m)
        name = f"semantic_{i}"
        act = layers.Activation("relu", name=name) if c == 1 else layers.Softmax(name=name)
        outs.append(act(x))
    return keras.Model(inp, outs)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tiny model as a SavedModel folder (as Mesmer's own MultiplexSegmentation folder)
    and as a .keras file."""
    root = tmp_path_factory.mktemp("mesmer")
    model = tiny_mesmer()
    folder = root / "MultiplexSegmentation"
    model.export(str(folder), format="tf_saved_model", verbose=False)
    model.save(str(root / "tiny.keras"))
    return {"savedmodel": folder, "keras": root / "tiny.keras", "root": root}


def _labels_ok(lab, shape):
    assert lab.dtype in (np.uint16, np.uint32) and lab.shape == shape
    ids = np.unique(lab[lab > 0])
    assert np.array_equal(ids, np.arange(1, len(ids) + 1))


def _best_ious(truth, pred):
    """Each true object's best IoU with a predicted one."""
    out = []
    for i in range(1, int(truth.max()) + 1):
        t = truth == i
        ids = np.unique(pred[t])
        out.append(
            max([((t & (pred == j)).sum() / (t | (pred == j)).sum()) for j in ids if j] or [0])
        )
    return np.array(out)


def _one_line(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg and msg.startswith("mesmer")
    return msg


def test_registered():
    assert "mesmer" in available()
    assert MesmerSegmenter.trainable is False


def test_tiny_model_recovers_disks(models):
    """Through the SavedModel folder and the .keras file alike: nine disks, each found with IoU
    above 0.85; the whole-cell outputs (zero maxima) give nothing, which shows the mapping."""
    img, lab = grid_disks()
    results = {}
    for kind in ("savedmodel", "keras"):
        seg = make_segmenter("mesmer", model=str(models[kind]))
        out = seg.predict(img)
        _labels_ok(out, img.shape)
        assert out.max() == 9
        assert _best_ious(lab, out).min() > 0.85
        assert seg.backend() == "tensorflow" and seg.net.tile == TILE
        results[kind] = out
        whole = make_segmenter("mesmer", model=str(models[kind]), compartment="whole-cell")
        assert whole.predict(img).max() == 0
    np.testing.assert_array_equal(results["savedmodel"], results["keras"])
    # the same image as H x W x 1, RGB and (nuclear, zero membrane) gives the same labels
    seg = make_segmenter("mesmer", model=str(models["savedmodel"]))
    for variant in (img[..., None], np.stack([img] * 3, -1), np.stack([img, 0 * img], -1)):
        np.testing.assert_array_equal(seg.predict(variant), results["savedmodel"])


def test_shapes_resampling_and_tiles(models):
    """Odd sizes smaller and larger than a tile, and images resampled by image_mpp, come back
    at the input's H x W; a resampled image still gives its nine disks."""
    img, lab = grid_disks()
    seg = make_segmenter("mesmer", model=str(models["keras"]))
    for h, w in ((37, 45), (1, 7), (71, 129)):
        _labels_ok(
            seg.predict(img[:h, :w] if w <= img.shape[1] else np.tile(img, 2)[:h, :w]), (h, w)
        )
    for mpp in (0.4, 0.65):  # 0.8 x and 1.3 x the model's 0.5 um/px
        out = make_segmenter("mesmer", model=str(models["keras"]), image_mpp=mpp).predict(img)
        _labels_ok(out, img.shape)
        assert out.max() == 9 and _best_ious(lab, out).min() > 0.7
    # labels go back by nearest neighbour: up and down again is the identity
    up = resample(lab, (202, 186), order=0)
    assert up.dtype == lab.dtype and set(np.unique(up)) == set(np.unique(lab))
    np.testing.assert_array_equal(resample(up, lab.shape, order=0), lab)


def test_deep_watershed_on_ideal_maps():
    """Two touching disks are split in two; an empty map gives no objects; small objects go
    and small holes are filled."""
    from scipy import ndimage as ndi

    from cellsynth.benchmark.segmenters._instances import boundary_map

    yy, xx = np.mgrid[:60, :80]
    truth = np.zeros((60, 80), np.uint16)
    for i, (cy, cx) in enumerate(((30, 28), (30, 48)), start=1):  # radius 11, centres 20 apart
        truth[((yy - cy) ** 2 + (xx - cx) ** 2 <= 121) & (truth == 0)] = i
    inner = np.zeros(truth.shape, np.float32)
    for i in (1, 2):  # per-object distance to the edge, 1 at the centre
        d = ndi.distance_transform_edt(truth == i)
        inner += d / d.max()
    # Mesmer's interior class: the objects less their one-pixel inner boundary
    interior = ((truth > 0) & ~boundary_map(truth)).astype(np.float32)
    out = deep_watershed(inner, interior)
    _labels_ok(out, truth.shape)
    assert out.max() == 2 and _best_ious(truth, out).min() > 0.85
    # one disk alone: one object
    one = deep_watershed(ndi.distance_transform_edt(truth == 1) / 11, (truth == 1) * 1.0)
    assert one.max() == 1
    empty = deep_watershed(np.zeros((40, 30)), np.zeros((40, 30)))
    assert empty.dtype == np.uint16 and empty.max() == 0
    # a 3 x 3 blob is under small_objects_threshold (15); an 8-pixel hole is filled
    blob = np.zeros((40, 40), np.float32)
    blob[5:8, 5:8] = 1
    ring = np.zeros((40, 40), np.float32)
    ring[15:35, 15:35] = 1
    ring[19:21, 19:23] = 0  # off the centre, where the marker is
    interior = np.maximum(blob, ring)
    filled = interior.copy()
    filled[19:21, 19:23] = 1
    inner = ndi.distance_transform_edt(filled) / 10  # one peak per object
    out = deep_watershed(inner, interior, interior_smooth=0)
    assert out.max() == 1 and out[6, 6] == 0 and out[20, 20] == 1
    assert deep_watershed(inner, interior, interior_smooth=0, fill_holes_threshold=0)[20, 20] == 0
    kept = deep_watershed(inner, interior, interior_smooth=0, small_objects_threshold=0)
    assert kept.max() == 2


def test_preprocess():
    """Mesmer's normalisation: [0, 1], a hot pixel no brighter than the next brightest after
    the 99.9th-percentile clip, and a constant (e.g. all-zero membrane) channel all zeros."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 100, (120, 110)).astype(np.float32)
    img[60, 60] = 5000
    x = mesmer_preprocess(two_channels(img))
    assert x.dtype == np.float32 and x.shape == (120, 110, 2)
    assert x.min() >= 0 and x.max() <= 1 and not x[..., 1].any()
    hot = x[60, 60, 0]
    x[60, 60, 0] = 0
    assert hot <= x[..., 0].max() + 1e-6
    assert not mesmer_preprocess(np.full((20, 20, 1), 7.0)).any()


def test_errors(models, tmp_path, monkeypatch):
    """Each problem is one CellsynthError line that says what to put where."""
    img, _ = grid_disks()
    with pytest.raises(CellsynthError, match="needs option model=DIR") as e:
        make_segmenter("mesmer").predict(img)
    assert "MultiplexSegmentation" in _one_line(e) and "licence" in str(e.value)
    with pytest.raises(CellsynthError, match="does not exist") as e:
        make_segmenter("mesmer", model=str(tmp_path / "nope")).predict(img)
    _one_line(e)
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "readme.txt").write_text("weights go here")
    with pytest.raises(CellsynthError, match="no saved_model.pb") as e:
        make_segmenter("mesmer", model=str(tmp_path / "notamodel")).predict(img)
    _one_line(e)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "saved_model.pb").write_bytes(b"not a protobuf")
    with pytest.raises(CellsynthError, match="cannot be loaded") as e:
        make_segmenter("mesmer", model=str(tmp_path / "broken")).predict(img)
    _one_line(e)
    (tmp_path / "weights.pt").write_bytes(b"x")
    with pytest.raises(CellsynthError, match="neither a SavedModel folder") as e:
        make_segmenter("mesmer", model=str(tmp_path / "weights.pt")).predict(img)
    _one_line(e)
    three = tmp_path / "three.keras"
    tiny_mesmer(in_channels=3, tile=32).save(str(three))
    with pytest.raises(CellsynthError, match=r"N x H x W x 2") as e:
        make_segmenter("mesmer", model=str(three)).predict(img)
    _one_line(e)
    wrong = tmp_path / "wrong_outputs"
    tiny_mesmer(outputs=(1, 3, 1, 2), tile=32).export(str(wrong), verbose=False)
    with pytest.raises(CellsynthError, match=r"outputs with \(1, 3, 1, 2\) channels") as e:
        make_segmenter("mesmer", model=str(wrong)).predict(img)
    _one_line(e)
    check_refused(
        "mesmer",
        ("unknown option", dict(no_such=1)),
        ("compartment", dict(compartment="cytoplasm")),
        ("image_mpp", dict(image_mpp=0)),
    )
    seg = make_segmenter("mesmer", model=str(models["keras"]))
    with pytest.raises(CellsynthError, match="H x W"):
        seg.predict(np.zeros((4, 5, 6, 7)))
    with pytest.raises(CellsynthError, match="no saved mesmer model"):
        MesmerSegmenter.load(tmp_path / "empty")
    if importlib.util.find_spec("deepcell") is None:
        with pytest.raises(CellsynthError, match="deepcell package does not import") as e:
            make_segmenter("mesmer", model=str(models["keras"]), backend="deepcell").predict(img)
        _one_line(e)
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # as if not installed
    monkeypatch.setattr(
        "cellsynth.benchmark.segmenters.mesmer.import_tensorflow",
        lambda: __import__("tensorflow"),
    )
    with pytest.raises(CellsynthError, match=r"needs tensorflow .*cellsynth\[stardist\]"):
        make_segmenter("mesmer", model=str(models["keras"])).predict(img)


def _fake_deepcell(monkeypatch, calls: list):
    """A stand-in ``deepcell`` package whose ``applications.Mesmer`` records what it gets."""

    class Mesmer:
        def __init__(self, model=None):
            calls.append(("init", model))

        def predict(self, image, **kwargs):
            calls.append(("predict", image, kwargs))
            lab = np.zeros(image.shape[:3] + (1,), np.int32)
            lab[0, 2:5, 2:5, 0] = 7
            return lab

    pkg = types.ModuleType("deepcell")
    pkg.__spec__ = importlib.machinery.ModuleSpec("deepcell", None, is_package=True)
    apps = types.ModuleType("deepcell.applications")
    apps.Mesmer = Mesmer
    pkg.applications = apps
    monkeypatch.setitem(sys.modules, "deepcell", pkg)
    monkeypatch.setitem(sys.modules, "deepcell.applications", apps)


def test_deepcell_path_is_used_when_it_imports(models, monkeypatch):
    """Where deepcell imports, its Mesmer application gets the tf.keras model and Mesmer's
    arguments (a stand-in package here: deepcell 0.12 needs Python < 3.11)."""
    calls = []
    _fake_deepcell(monkeypatch, calls)
    img, _ = grid_disks()
    seg = make_segmenter("mesmer", model=str(models["keras"]), maxima_threshold=0.2)
    assert seg.backend() == "deepcell"
    out = seg.predict(img)
    _labels_ok(out, img.shape)
    assert out.max() == 1 and out[3, 3] == 1
    (_, model), (_, image, kwargs) = calls
    assert isinstance(model, keras.Model) and image.shape == (1, *img.shape, 2)
    assert kwargs["compartment"] == "nuclear" and kwargs["image_mpp"] is None
    pp = kwargs["postprocess_kwargs_nuclear"]
    assert pp["maxima_threshold"] == 0.2 and pp["interior_threshold"] == 0.2 and pp["radius"] == 2
    assert kwargs["preprocess_kwargs"] == {"percentile": 99.9, "kernel_size": 128}
    # backend=tensorflow insists on the path written here even then
    tf_seg = make_segmenter("mesmer", model=str(models["keras"]), backend="tensorflow")
    assert tf_seg.predict(img).max() == 9 and len(calls) == 2


def test_real_deepcell(models):
    """With the real deepcell package (not installable on this Python) the labels are DeepCell's
    own, of the image's shape."""
    pytest.importorskip("deepcell", reason="deepcell 0.12 needs Python < 3.11")
    img, _ = grid_disks()
    seg = make_segmenter("mesmer", model=str(models["keras"]))
    assert seg.backend() == "deepcell"
    _labels_ok(seg.predict(img), img.shape)


def test_save_load_and_pickle(models, tmp_path):
    """The saved segmenter is its options (naming the model folder) and reloads to identical
    predictions; it pickles without its network (for Dask) and reloads it on use; a model
    folder that has gone away fails the load in one line."""
    img, _ = grid_disks()
    folder = tmp_path / "model-copy"
    import shutil

    shutil.copytree(models["savedmodel"], folder)
    seg = make_segmenter("mesmer", model=str(folder))
    seg.fit(None, tmp_path / "work")
    assert seg.info["steps"] == 0 and seg.info["backend"] == "tensorflow"
    want = seg.predict(img)
    seg.save(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["options.json"]
    again = MesmerSegmenter.load(tmp_path / "saved")
    assert again.options == seg.options
    np.testing.assert_array_equal(again.predict(img), want)
    shipped = pickle.loads(pickle.dumps(seg))
    assert shipped.net is None
    np.testing.assert_array_equal(shipped.predict(img), want)
    shutil.rmtree(folder)
    with pytest.raises(CellsynthError, match="does not exist") as e:
        MesmerSegmenter.load(tmp_path / "saved")
    _one_line(e)
