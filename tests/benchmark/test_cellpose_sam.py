"""Cellpose-SAM (cellpose >= 4) through the ``cellpose`` segmenter: the model name and file
checks, the offline guard, the options and cellpose 4's own prediction, end to end.

The real Cellpose-SAM network is a ViT-L (about 300 M parameters, 1.2 GB). The tests build
cellpose 4's own ``CPSAM`` network around a tiny SAM image encoder instead (2 blocks, width 32):
``CPSAM.__init__`` takes its encoder from ``sam_model_registry["vit_l"]`` as ``cellpose.vit``
imported it, and the fixtures swap that name for a registry whose ``vit_l`` builds the tiny
encoder. Its state dict is saved to a file and loaded through the segmenter's ``model=PATH`` (or
``model=cpsam`` from the model folder) route, so cellpose 4's ``CellposeModel`` constructor,
``get_backbone``, ``load_model`` and ``eval`` all run as they are.

With cellpose 3 installed (the CI environment) these tests skip, except the last one; the
cellpose 3 error for ``model="cpsam"`` is tested in test_segmenters_dl.py.
"""

from __future__ import annotations

import inspect
import shutil
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("cellpose")

from conftest import (  # noqa: E402
    check_labels,
    check_odd_inputs,
    disks_sample,
    tiny_sam_encoder,
)

from cellsynth.benchmark.segmenters import cellpose as cp  # noqa: E402
from cellsynth.benchmark.segmenters import make_segmenter  # noqa: E402
from cellsynth.errors import CellsynthError  # noqa: E402

needs_cp4 = pytest.mark.skipif(
    cp.CELLPOSE_MAJOR < 4,
    reason=f"Cellpose-SAM needs cellpose >= 4; installed {cp.CELLPOSE_VERSION} (the cellpose 3 "
    "error for model=cpsam is tested in test_segmenters_dl.py)",
)
CPU = {"device": "cpu"}
# the eval options of cellpose 4 this segmenter passes on (its defaults must be cellpose 4's)
EVAL_KEYS = [
    "batch_size",
    "diameter",
    "flow_threshold",
    "cellprob_threshold",
    "min_size",
    *cp.CP4_DEFAULTS,
]


def _tiny_sam(checkpoint=None):
    """Stands in for segment_anything's ``build_sam_vit_l``: only the image encoder, tiny."""
    assert checkpoint is None  # cellpose 4 builds the encoder untrained, then loads its file
    encoder = tiny_sam_encoder(1024, 32, 14)
    return types.SimpleNamespace(image_encoder=encoder)


@pytest.fixture
def tiny_sam(monkeypatch):
    """Every CPSAM that cellpose 4 builds in the test has the tiny encoder (never a ViT-L)."""
    from cellpose import vit

    monkeypatch.setattr(vit, "sam_model_registry", {"vit_l": _tiny_sam})


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A cellpose 4 weights file: the state dict of a seeded CPSAM with the tiny encoder."""
    from cellpose import vit

    with pytest.MonkeyPatch.context() as mp, torch.random.fork_rng():
        mp.setattr(vit, "sam_model_registry", {"vit_l": _tiny_sam})
        torch.manual_seed(0)
        net = vit.CPSAM()
    with torch.no_grad():  # readout channels 2 * ps**2 on are the cell probability: above 0
        net.out.bias[2 * net.ps**2 :] += 1.0
    path = tmp_path_factory.mktemp("cpsam") / "tiny_cpsam"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture
def no_network(monkeypatch):
    """cellpose 4's downloader and its model-cache function raise (and record the call)."""
    from cellpose import models, utils

    calls = []

    def download(*args, **kwargs):
        calls.append(args)
        raise AssertionError(f"a download was attempted: {args}")

    monkeypatch.setattr(utils, "download_url_to_file", download)
    monkeypatch.setattr(models, "cache_model_path", download)
    return calls


@needs_cp4
@pytest.mark.usefixtures("tiny_sam")
def test_cpsam_file_gives_labels_1_and_3_channels(tiny_weights):
    seg = make_segmenter("cellpose", model=str(tiny_weights), flow_threshold=0.0, **CPU)
    assert seg.cp4 and seg.model.pretrained_model == str(tiny_weights)
    assert len(seg.model.net.encoder.blocks) == 2  # the tiny network, read from the file
    assert seg.model.net.dtype == (torch.bfloat16 if seg.precision == "bf16" else torch.float32)
    gray = disks_sample(0).image
    rgb = np.stack([gray, gray // 2, 255 - gray], axis=-1)
    for img in (gray, gray[..., None], rgb):
        lab = seg.predict(img)
        check_labels(lab, gray.shape)
        assert lab.max() > 0
        np.testing.assert_array_equal(seg.predict(img), lab)  # deterministic
    check_odd_inputs(seg, gray, tiled=(300, 280))  # odd sizes; several 256 x 256 tiles
    plain = make_segmenter("cellpose", model=str(tiny_weights), **CPU)  # cellpose 4's thresholds
    check_labels(plain.predict(gray), gray.shape)


@needs_cp4
@pytest.mark.usefixtures("tiny_sam")
def test_cpsam_options_reach_cellpose4_eval(tiny_weights, monkeypatch):
    from cellpose import models

    params = inspect.signature(models.CellposeModel.eval).parameters
    defaults = {k: params[k].default for k in EVAL_KEYS}
    assert {k: cp.DEFAULTS[k] for k in EVAL_KEYS} == defaults
    saved_norm = dict(models.normalize_default)
    custom = dict(
        diameter=15.0,
        batch_size=2,
        flow_threshold=0.0,
        cellprob_threshold=-1.0,
        min_size=5,
        max_size_fraction=0.9,
        niter=50,
        augment=True,
        tile_overlap=0.2,
    )
    gray = disks_sample(1).image
    for options, expected in (({}, defaults), (custom, custom)):
        seg = make_segmenter("cellpose", model=str(tiny_weights), **options, **CPU)
        seen = []
        real_eval = seg.model.eval

        def spy(x, _real=real_eval, _seen=seen, **kwargs):
            _seen.append(kwargs)
            return _real(x, **kwargs)

        monkeypatch.setattr(seg.model, "eval", spy)
        check_labels(seg.predict(gray), gray.shape)
        assert {k: seen[-1][k] for k in EVAL_KEYS} == expected
    assert models.normalize_default == saved_norm  # cellpose 4's module default left alone


@needs_cp4
@pytest.mark.usefixtures("tiny_sam")
def test_cpsam_precision_sets_the_weights_dtype(tiny_weights, monkeypatch):
    import cellsynth.precision as precision

    seg = make_segmenter("cellpose", model=str(tiny_weights), precision="fp32", **CPU)
    assert seg.precision == "fp32" and seg.model.net.dtype == torch.float32
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    seg = make_segmenter("cellpose", model=str(tiny_weights), precision="bf16", **CPU)
    assert seg.precision == "bf16" and seg.model.net.dtype == torch.bfloat16
    assert next(seg.model.net.parameters()).dtype == torch.bfloat16
    gray = disks_sample(2).image
    check_labels(seg.predict(gray), gray.shape)


@needs_cp4
def test_cpsam_missing_file_one_line_no_download(tmp_path, monkeypatch, no_network):
    from cellpose import models

    folder = tmp_path / "models"
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(folder))
    assert "cpsam" in models.MODEL_NAMES
    for name in models.MODEL_NAMES:
        with pytest.raises(CellsynthError) as err:
            make_segmenter("cellpose", model=name, **CPU)
        msg = str(err.value)
        assert "\n" not in msg and "not available offline" in msg
        assert f"put the file {name} " in msg and f"into {folder} " in msg
    with pytest.raises(CellsynthError, match="model file .*nope.pt not found"):
        make_segmenter("cellpose", model=str(tmp_path / "nope.pt"), **CPU)
    assert no_network == []


@needs_cp4
def test_cpsam_unknown_model_name(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path))
    for name in ("cyto3", "no_such_model"):
        with pytest.raises(CellsynthError, match=rf"unknown model '{name}'; .*cpsam") as err:
            make_segmenter("cellpose", model=name, **CPU)
        assert "\n" not in str(err.value)
    assert no_network == []


@needs_cp4
@pytest.mark.usefixtures("tiny_sam")
def test_cpsam_rejects_files_that_are_not_cellpose4_models(tmp_path, no_network):
    other = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3)}, other)
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a model")
    for path in (other, junk):
        with pytest.raises(CellsynthError, match="cannot load .* as a cellpose 4 model") as err:
            make_segmenter("cellpose", model=str(path), **CPU)
        assert "\n" not in str(err.value)
    assert no_network == []


@needs_cp4
@pytest.mark.usefixtures("tiny_sam")
def test_offline_guard_stops_cellpose4_downloads(tmp_path, monkeypatch):
    from cellpose import models, utils

    monkeypatch.setattr(models, "MODEL_DIR", tmp_path)
    original = utils.download_url_to_file
    with cp.offline():
        with pytest.raises(CellsynthError, match="downloads are disabled.*cpsam"):
            models.cache_model_path("cpsam")
        # an unknown name: cellpose 4 warns and downloads its default model instead
        with pytest.raises(CellsynthError, match="downloads are disabled.*cpsam_v2"):
            models.CellposeModel(pretrained_model="no_such_model", device=torch.device("cpu"))
    assert utils.download_url_to_file is original
    assert not any(tmp_path.iterdir())


@needs_cp4
@pytest.mark.usefixtures("tiny_sam")
def test_cpsam_by_name_save_load_round_trip(tiny_weights, tmp_path, monkeypatch, no_network):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(tiny_weights, folder / "cpsam")
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(folder))
    seg = make_segmenter("cellpose", model="cpsam", flow_threshold=0.0, min_size=5, **CPU)
    assert seg.model.pretrained_model == str(folder / "cpsam")
    seg.save(tmp_path / "saved")
    assert [p.name for p in (tmp_path / "saved").iterdir()] == ["options.json"]  # no weights
    back = type(seg).load(tmp_path / "saved")
    assert back.cp4 and back.options == seg.options
    img = disks_sample(3).image
    np.testing.assert_array_equal(back.predict(img), seg.predict(img))
    assert no_network == []


@needs_cp4
@pytest.mark.usefixtures("tiny_sam")
def test_cellpose4_refusals(tiny_weights, tmp_path):
    with pytest.raises(CellsynthError, match=r"option\(s\) channels are not used by cellpose 4"):
        make_segmenter("cellpose", model=str(tiny_weights), channels=[2, 3], **CPU)
    seg = make_segmenter("cellpose", model=str(tiny_weights), **CPU)
    with pytest.raises(CellsynthError, match="fit trains from scratch"):
        seg.fit([disks_sample(0)], tmp_path / "w", epochs=1, progress=False)
    with pytest.raises(CellsynthError, match="cannot train from scratch"):
        make_segmenter("cellpose", **CPU).fit([disks_sample(0)], tmp_path / "w", epochs=1)
    (tmp_path / "cpnet").mkdir()
    (tmp_path / "cpnet" / "weights.pt").write_bytes(b"")
    with pytest.raises(CellsynthError, match="needs cellpose 3.1 to load"):
        type(seg).load(tmp_path / "cpnet")


def test_cellpose4_options_refused_without_a_cellpose4_model():
    """Runs under cellpose 3 too: the cellpose 4 eval options are never silently ignored."""
    with pytest.raises(CellsynthError, match=r"option\(s\) niter, augment apply to cellpose 4"):
        make_segmenter("cellpose", augment=True, niter=100)
