"""The micro-sam segmenter (the real micro_sam package): a tiny Segment Anything model the tests
write (Segment Anything's own classes at small widths, random weights) and a decoder of micro-sam's
own UNETR for it, run through micro-sam's AMG / AIS / APG; its input handling, save/load, the
local-only weights (micro-sam's cache folder, no download) and the errors. Random weights: the
tests check validity, determinism and equalities micro-sam guarantees, not accuracy. Skipped
without micro-sam."""

from __future__ import annotations

import shutil
import socket
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("micro_sam.automatic_segmentation", reason="micro-sam is not installed")

from conftest import disks_sample, tiny_sam_encoder  # noqa: E402
from micro_sam import util as ms_util  # noqa: E402
from micro_sam.instance_segmentation import get_unetr  # noqa: E402
from segment_anything import sam_model_registry  # noqa: E402
from segment_anything.modeling import (  # noqa: E402
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from cellsynth.benchmark.segmenters import make_segmenter  # noqa: E402
from cellsynth.benchmark.segmenters.base import get_segmenter_class  # noqa: E402
from cellsynth.benchmark.segmenters.microsam import (  # noqa: E402
    MicroSamSegmenter,
    _import_microsam,
    build_sam,
    sam_architecture,
)
from cellsynth.errors import CellsynthError  # noqa: E402


def tiny_sam(seed: int = 0) -> Sam:
    """A Segment Anything network 64 pixels wide (a 4 x 4 grid of 16-pixel patches), 32-wide
    encoder of 2 blocks (one windowed, one global), 16-wide prompt encoder and mask decoder:
    0.1 M parameters, random weights."""
    torch.manual_seed(seed)
    return Sam(
        image_encoder=tiny_sam_encoder(64, 16, 2),
        prompt_encoder=PromptEncoder(
            embed_dim=16, image_embedding_size=(4, 4), input_image_size=(64, 64), mask_in_chans=4
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=16, mlp_dim=32, num_heads=8),
            transformer_dim=16,
            iou_head_depth=2,
            iou_head_hidden_dim=16,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The tiny model in micro-sam's three file layouts: ``sam`` (a bare SAM state dict, as
    sam_vit_b_01ec64.pth or micro-sam's vit_b_lm file), ``decoder`` (the AIS decoder alone, as
    micro-sam's vit_b_lm_decoder file: its UNETR's state without the encoder, which is what its
    training exports) and ``joint`` (a training checkpoint: ``model_state`` with the ``sam.``
    prefix and ``decoder_state``)."""
    folder = tmp_path_factory.mktemp("microsam")
    sam = tiny_sam()
    state = sam.state_dict()
    torch.manual_seed(1)
    unetr = get_unetr(sam.image_encoder, device="cpu")  # micro-sam's decoder for this encoder
    decoder = {k: v for k, v in unetr.state_dict().items() if not k.startswith("encoder")}
    paths = {name: folder / f"{name}.pt" for name in ("sam", "decoder", "joint")}
    torch.save(state, paths["sam"])
    torch.save(decoder, paths["decoder"])
    joint = {"model_state": {f"sam.{k}": v for k, v in state.items()}, "decoder_state": decoder}
    torch.save(joint, paths["joint"])
    return paths


@pytest.fixture(scope="module")
def image():
    return disks_sample(0).image  # 64 x 64 uint8 disks


def _labels_ok(lab, shape):
    assert lab.dtype == np.uint32 and lab.shape == shape
    ids = np.unique(lab[lab > 0])
    assert np.array_equal(ids, np.arange(1, len(ids) + 1))


def _one_line(match, fn, *args, **kwargs) -> str:
    with pytest.raises(CellsynthError, match=match) as info:
        fn(*args, **kwargs)
    text = str(info.value)
    assert "\n" not in text and "Traceback" not in text
    return text


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_architecture_of_sam_models(name):
    """The network read off a checkpoint's shapes is the one Segment Anything builds for
    vit_b / vit_l / vit_h (built without memory on the meta device)."""
    ms = _import_microsam()
    with torch.device("meta"):
        reference = sam_model_registry[name]().state_dict()
        arch = sam_architecture(reference)
        built = build_sam(ms, arch).state_dict()
    assert arch["name"] == name
    assert {k: v.shape for k, v in built.items()} == {k: v.shape for k, v in reference.items()}
    enc = arch["encoder"]
    assert enc["img_size"] == 1024 and enc["window_size"] == 14 and enc["out_chans"] == 256
    assert (
        len(enc["global_attn_indexes"]) == 4 and enc["global_attn_indexes"][-1] == enc["depth"] - 1
    )
    if name == "vit_b":
        assert enc["num_heads"] == 12 and enc["global_attn_indexes"] == [2, 5, 8, 11]


def test_architecture_of_the_tiny_model():
    arch = sam_architecture(tiny_sam().state_dict())
    assert arch["name"] == "sam"
    assert arch["encoder"]["embed_dim"] == 32 and arch["encoder"]["img_size"] == 64
    assert arch["encoder"]["global_attn_indexes"] == [1] and arch["encoder"]["window_size"] == 2
    assert arch["transformer"]["mlp_dim"] == 32 and arch["decoder"]["iou_head_depth"] == 2


def test_modes(weights, image):
    """AMG (the bare SAM file), AIS and APG (with the decoder): valid uint32 labels of the
    image's shape, the same on a second call and from a second segmenter; mode auto is
    micro-sam's rule (ais with a decoder, else amg)."""
    cases = [
        ("amg", {"checkpoint": str(weights["sam"]), "points_per_side": 8}),
        ("ais", {"checkpoint": str(weights["joint"])}),
        ("ais", {"checkpoint": str(weights["sam"]), "decoder": str(weights["decoder"])}),
        ("apg", {"checkpoint": str(weights["joint"])}),
    ]
    out = {}
    for mode, options in cases:
        seg = make_segmenter("microsam", mode=mode, **options)
        lab = seg.predict(image)
        _labels_ok(lab, image.shape)
        assert np.array_equal(seg.predict(image), lab)
        assert np.array_equal(make_segmenter("microsam", mode=mode, **options).predict(image), lab)
        assert seg.info["mode"] == mode and seg.info["architecture"]["name"] == "sam"
        out.setdefault(mode, []).append(lab)
    # the same weights in micro-sam's two layouts (one file; SAM file + decoder file)
    assert np.array_equal(out["ais"][0], out["ais"][1])
    # the decoder's foreground + distances, watershed by micro-sam: objects even at random
    assert out["ais"][0].max() > 0
    auto = make_segmenter("microsam", checkpoint=str(weights["joint"]))
    assert np.array_equal(auto.predict(image), out["ais"][0]) and auto.info["mode"] == "ais"
    auto = make_segmenter("microsam", checkpoint=str(weights["sam"]), points_per_side=8)
    assert np.array_equal(auto.predict(image), out["amg"][0]) and auto.info["mode"] == "amg"


def test_inputs(weights, image):
    """8-bit, 16-bit, float and H x W x 1 images of the same picture give the same labels
    (micro-sam scales each channel's range to 8 bits, truncating: float pictures match when
    their values are exact multiples, as here); gray equals gray replicated to RGB (micro-sam
    replicates it), RGBA its RGB; the labels of a non-square RGB image have its shape."""
    seg = make_segmenter("microsam", checkpoint=str(weights["joint"]))
    ref = seg.predict(image)
    x = image.astype(np.float64)
    for variant in (
        (x * 257).astype(np.uint16),
        (x / 4 - 3).astype(np.float32),  # exact in float32: the same 8-bit values
        image[..., None],
        np.repeat(image[..., None], 3, axis=-1),
        np.dstack([image, image, image, np.full_like(image, 255)]),
    ):
        assert np.array_equal(seg.predict(variant), ref)
    rgb = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    _labels_ok(seg.predict(rgb), (48, 80))
    _labels_ok(seg.predict(image > 100), image.shape)


def test_tiled(weights):
    """Tiled embeddings (micro-sam's tiled AIS and AMG) on an image larger than the model's."""
    img = disks_sample(3, size=96, n=8).image
    seg = make_segmenter("microsam", checkpoint=str(weights["joint"]), tile_shape=64, halo=8)
    _labels_ok(seg.predict(img), img.shape)
    amg = make_segmenter(
        "microsam",
        checkpoint=str(weights["sam"]),
        tile_shape=[64, 64],
        halo=[8, 8],
        points_per_side=4,
    )
    _labels_ok(amg.predict(img), img.shape)


def test_save_load(weights, image, tmp_path, monkeypatch):
    """A saved segmenter names the weights by absolute path (it loads from elsewhere) and
    predicts the same."""
    monkeypatch.chdir(weights["joint"].parent)
    seg = make_segmenter("microsam", checkpoint="joint.pt", center_distance_threshold=0.4)
    lab = seg.predict(image)
    seg.save(tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    again = get_segmenter_class("microsam").load(tmp_path / "m")
    assert again.options["checkpoint"] == str(weights["joint"])
    assert again.options["center_distance_threshold"] == 0.4
    assert np.array_equal(again.predict(image), lab)
    assert (tmp_path / "m" / "info.json").is_file()
    _one_line("no saved microsam model", MicroSamSegmenter.load, tmp_path / "nothing")


def test_cache_folder_and_no_download(weights, image, tmp_path, monkeypatch):
    """Without ``checkpoint``, micro-sam's cache folder is where the model must be; a missing
    one is one line naming the file, where to put it and where micro-sam gets it; no socket is
    opened either way."""

    def no_network(*args, **kwargs):
        raise AssertionError("the network was reached")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("MICROSAM_CACHEDIR", str(tmp_path / "cache"))
    models = tmp_path / "cache" / "models"
    text = _one_line("not here", make_segmenter("microsam").predict, image)
    assert str(models / "vit_b_lm") in text and "diplomatic-bug" in text
    assert "nothing is downloaded" in text
    text = _one_line("vit_l_lm", make_segmenter("microsam", model_type="vit_l_lm").predict, image)
    assert str(models / "vit_l_lm") in text
    # micro-sam's layout: the model and its decoder beside it
    models.mkdir(parents=True)
    shutil.copy(weights["sam"], models / "vit_b_lm")
    shutil.copy(weights["decoder"], models / "vit_b_lm_decoder")
    seg = make_segmenter("microsam")
    lab = seg.predict(image)
    ref = make_segmenter("microsam", checkpoint=str(weights["joint"])).predict(image)
    assert np.array_equal(lab, ref)
    assert seg.info["mode"] == "ais" and seg.info["decoder"] == str(models / "vit_b_lm_decoder")
    assert ms_util.models is not None and ms_util.models.__module__ == "micro_sam.util"


class _NotAWeight:
    """Any object: a checkpoint holding it needs pickled code, which weights_only refuses."""


def test_errors(weights, image, tmp_path, monkeypatch):
    sam, joint = str(weights["sam"]), str(weights["joint"])

    def refused(match, **options):  # the segmenter builds its model at the first predict
        return _one_line(match, make_segmenter("microsam", **options).predict, image)

    # options
    _one_line("unknown option", make_segmenter, "microsam", no_such=1)
    _one_line("unknown mode 'best'; use one of", make_segmenter, "microsam", mode="best")
    _one_line("tile_shape and halo go together", make_segmenter, "microsam", tile_shape=64)
    _one_line("exceed twice the halo", make_segmenter, "microsam", tile_shape=32, halo=16)
    _one_line("must be an int or", make_segmenter, "microsam", tile_shape="big", halo=8)
    unused = "pred_iou_thresh not used by mode=ais"
    _one_line(unused, make_segmenter, "microsam", mode="ais", pred_iou_thresh=0.5)
    refused(unused, checkpoint=joint, pred_iou_thresh=0.5)  # mode auto -> ais (a decoder)
    # weights
    refused("checkpoint /no/sam.pt not found", checkpoint="/no/sam.pt")
    refused("decoder /no/dec.pt not found", checkpoint=sam, decoder="/no/dec.pt")
    refused("mode=ais needs micro-sam's instance segmentation decoder", checkpoint=sam, mode="ais")
    refused("model_type=vit_b but .* holds a sam network", checkpoint=sam, model_type="vit_b")
    text = tmp_path / "notes.txt"
    text.write_text("not weights\n")
    refused("weights only", checkpoint=str(text))
    code = tmp_path / "with_code.pt"
    torch.save({"model_state": torch.load(sam, weights_only=True), "logger": _NotAWeight()}, code)
    refused("weights only", checkpoint=str(code))
    other = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(1)}, other)
    refused("not a Segment Anything ViT", checkpoint=str(other))
    state = torch.load(sam, weights_only=True)
    broken = tmp_path / "broken.pt"
    torch.save({k: v for k, v in state.items() if "neck.3" not in k}, broken)
    refused("does not fit the Segment Anything network", checkpoint=str(broken))
    decoder = torch.load(weights["decoder"], weights_only=True)
    bad_decoder = tmp_path / "bad_decoder.pt"
    torch.save({k: v for k, v in decoder.items() if not k.startswith("out_conv")}, bad_decoder)
    refused("the decoder does not fit", checkpoint=sam, decoder=str(bad_decoder))
    # images
    seg = make_segmenter("microsam", checkpoint=joint)
    _one_line("expected an H x W", seg.predict, np.zeros((2, 64, 64, 3), np.uint8))
    _one_line("expected an H x W", seg.predict, np.zeros((64, 64, 5), np.uint8))
    nan = image.astype(np.float32)
    nan[0, 0] = np.nan
    _one_line("NaN", seg.predict, nan)
    # micro-sam not installed
    monkeypatch.setitem(sys.modules, "micro_sam.automatic_segmentation", None)
    refused(r"needs the micro-sam package .*pip install 'cellsynth\[microsam\]'", checkpoint=joint)


def test_micro_sam_then_torchvision_in_one_process():
    """micro-sam's imports load TensorFlow where it is installed; torchvision's detection models
    (Mask R-CNN's imports) still load after them in one fresh process."""
    import subprocess

    code = (
        "from cellsynth.benchmark.segmenters.microsam import _import_microsam; "
        "_import_microsam(); import torchvision.models.detection; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-500:]
