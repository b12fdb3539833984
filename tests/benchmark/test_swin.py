"""The ``swin`` segmenter: Swin transformer + FPN backbone, space-filling augmentation, and the
Mask R-CNN mechanics (fit, predict, save/load) with a tiny backbone on 64 x 64 disks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from conftest import SMALL_MASKRCNN, check_refused, disks_dataset, disks_labels  # noqa: E402

from cellsynth.benchmark.segmenters import get_segmenter_class, make_segmenter  # noqa: E402
from cellsynth.benchmark.segmenters.swin import (  # noqa: E402
    SwinFPN,
    cut_cells,
    space_fill,
    swin_heads,
)
from cellsynth.errors import CellsynthError  # noqa: E402

TINY_SWIN = dict(
    {k: v for k, v in SMALL_MASKRCNN.items() if k != "arch"},
    swin_embed_dim=12,
    swin_depths=[1, 1, 1, 1],
    fpn_channels=32,
    mask_head=[32],
    score_threshold=0.0,
    max_detections=10,
    box_batch_size_per_image=16,
    lr=1e-3,
    space_fill=1.0,
    space_fill_cells=5,
)


def _donor_image(seed=0, size=64, n=6):
    lab = disks_labels(seed, size, n)
    rng = np.random.default_rng(seed)
    img = rng.random((3, size, size)).astype(np.float32)
    img[:, lab > 0] += 2.0  # cells are > 2, background < 1
    return img, lab


# --- space filling -------------------------------------------------------------------------------
def test_cut_cells_leaves_out_border_and_small():
    lab = np.zeros((20, 20), np.int32)
    lab[0:3, 5:8] = 1  # touches the border
    lab[5:9, 5:9] = 2
    lab[12, 12] = 3  # one pixel
    img = np.arange(400, dtype=np.float32).reshape(20, 20)
    donors = cut_cells(img, lab, min_area=4)
    assert len(donors) == 1
    pixels, mask = donors[0]
    assert mask.shape == (4, 4) and mask.all()
    np.testing.assert_array_equal(pixels, img[5:9, 5:9])
    assert len(cut_cells(img, lab, min_area=1, border=True)) == 3


def test_space_fill_pastes_cells_unchanged_without_overlap():
    donor_img, donor_lab = _donor_image(1)
    donors = cut_cells(donor_img, donor_lab)
    assert donors
    lab = disks_labels(2, 64, 3).astype(np.int32)
    img = np.full((3, 64, 64), -1.0, np.float32)
    img[:, lab > 0] = -5.0
    rng = np.random.default_rng(0)
    out_img, out_lab, n = space_fill(img, lab, donors, rng, max_cells=20, margin=1)
    assert n >= 3 and out_img.shape == img.shape and out_lab.shape == lab.shape
    # the original cells and the input arrays are untouched
    np.testing.assert_array_equal(out_lab[lab > 0], lab[lab > 0])
    np.testing.assert_array_equal(out_img[:, lab > 0], img[:, lab > 0])
    assert img.max() == -1.0
    new_ids = [i for i in np.unique(out_lab) if i > lab.max()]
    assert len(new_ids) == n and new_ids == list(range(lab.max() + 1, lab.max() + 1 + n))
    # the image agrees with the labels: pasted pixels exactly where the new labels are
    pasted = out_lab > lab.max()
    np.testing.assert_array_equal(out_img[0] > 1.0, pasted)
    unchanged = ~pasted
    np.testing.assert_array_equal(out_img[:, unchanged], img[:, unchanged])
    shapes: dict = {}
    for p, m in donors:
        shapes.setdefault((m.shape, m.tobytes()), []).append(p)
    grown_old = ndi.binary_dilation(lab > 0)
    for i in new_ids:
        cell = out_lab == i
        ys, xs = np.nonzero(cell)
        box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        key = (cell[box].shape, cell[box].tobytes())
        assert key in shapes  # a donor's shape, unchanged
        got = out_img[(slice(None), *box)][:, cell[box]]
        assert any(np.array_equal(got, p[:, cell[box]]) for p in shapes[key])  # and pixels
        assert not (cell & grown_old).any()  # a margin of 1 px from the cells already there


def test_space_fill_pasted_cells_keep_apart():
    donors = cut_cells(*_donor_image(3))
    lab = np.zeros((48, 48), np.int32)
    out_img, out_lab, n = space_fill(
        np.zeros((3, 48, 48), np.float32), lab, donors, np.random.default_rng(1), 40, margin=2
    )
    assert n >= 2
    for i in range(1, n + 1):
        grown = ndi.binary_dilation(out_lab == i, iterations=2)
        others = (out_lab > 0) & (out_lab != i)
        assert not (grown & others).any()


def test_space_fill_stops_when_full():
    donors = cut_cells(*_donor_image(4))
    full = np.arange(1, 32 * 32 + 1, dtype=np.int32).reshape(32, 32)
    img = np.zeros((3, 32, 32), np.float32)
    out_img, out_lab, n = space_fill(img, full, donors, np.random.default_rng(0), 30)
    assert n == 0
    np.testing.assert_array_equal(out_lab, full)
    np.testing.assert_array_equal(out_img, img)
    # a fraction target already met: nothing either
    lab = np.zeros((32, 32), np.int32)
    lab[:20] = 1
    assert space_fill(img, lab, donors, np.random.default_rng(0), 30, max_fraction=0.5)[2] == 0
    # no donors, or donors larger than the image
    assert space_fill(img, lab * 0, [], np.random.default_rng(0))[2] == 0
    big = [(np.ones((3, 40, 40), np.float32), np.ones((40, 40), bool))]
    assert space_fill(img, lab * 0, big, np.random.default_rng(0))[2] == 0


def test_space_fill_2d_and_seeded():
    img, lab = _donor_image(5)
    donors = cut_cells(img[0], lab)
    target = np.zeros((64, 64), np.float32)
    a = space_fill(target, np.zeros((64, 64), np.int32), donors, np.random.default_rng(7), 10)
    b = space_fill(target, np.zeros((64, 64), np.int32), donors, np.random.default_rng(7), 10)
    assert a[2] == 10
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0] > 1.0, a[1] > 0)


# --- backbone ------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(64, 64), (50, 45)])
def test_backbone_fpn_strides(size):
    net = SwinFPN(embed_dim=12, depths=[1, 1, 1, 1], channels=16)
    assert net.out_channels == 16
    out = net(torch.randn(2, 3, *size))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    h, w = size
    for key, stride in zip(out, [4, 8, 16, 32, 64], strict=True):
        assert out[key].shape == (2, 16, -(-h // stride), -(-w // stride)), key


def test_backbone_options_checked():
    assert swin_heads(96) == [3, 6, 12, 24]
    assert swin_heads(12) == [1, 2, 4, 8]
    with pytest.raises(CellsynthError, match="divisible"):
        swin_heads(12, [5, 2, 4, 8])
    with pytest.raises(CellsynthError, match="swin_depths"):
        SwinFPN(embed_dim=12, depths=[1, 1, 1])


def test_local_swin_t_backbone_weights(tmp_path):
    """An ImageNet-style torchvision swin_t state_dict loads into the backbone by name."""
    import torchvision

    from cellsynth.benchmark.segmenters.maskrcnn import build_model
    from cellsynth.benchmark.segmenters.swin import DEFAULTS

    with torch.random.fork_rng():
        torch.manual_seed(5)
        ref = torchvision.models.swin_t(weights=None)
    torch.save(ref.state_dict(), tmp_path / "swin_t.pth")
    opts = {**DEFAULTS, "mask_head": [16], "backbone_weights": str(tmp_path / "swin_t.pth")}
    model = build_model(opts)
    body = model.backbone.body
    assert body.channels == [96, 192, 384, 768] and model.backbone.out_channels == 256
    np.testing.assert_array_equal(
        body.features[0][0].weight.detach().numpy(), ref.features[0][0].weight.detach().numpy()
    )
    with pytest.raises(CellsynthError, match="do not fit"):
        build_model({**opts, "swin_embed_dim": 48})


# --- the segmenter -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return disks_dataset(tmp_path_factory.mktemp("swin") / "ds", 4)


def test_registered_and_options():
    cls = get_segmenter_class("swin")
    assert cls.trainable and cls.name == "swin"
    seg = make_segmenter("swin")
    assert seg.options["arch"] == "swin_t_fpn" and seg.options["swin_embed_dim"] == 96
    check_refused(
        "swin",
        ("unknown option.*no_such_option", dict(no_such_option=1)),
        ("arch", dict(arch="resnet18_fpn")),
        ("space_fill", dict(space_fill=1.5)),
        ("heads", dict(swin_embed_dim=12, swin_heads=[5, 5, 5, 5])),
    )
    seg = make_segmenter("swin", **TINY_SWIN)
    with pytest.raises(CellsynthError, match="not trained"):
        seg.predict(np.zeros((32, 32), np.uint8))


def test_augmenter_fills_training_crops(tiny_dataset):
    from cellsynth.benchmark.segmenters.maskrcnn import to_rgb

    seg = make_segmenter("swin", **TINY_SWIN)
    images = [to_rgb(s.image) for s in tiny_dataset]
    labels = [s.labels.astype(np.int32) for s in tiny_dataset]
    augment = seg._crop_augmenter(images, labels, np.random.default_rng(0))
    x, y = augment(images[0], labels[0], 0)
    assert x.shape == images[0].shape and len(np.unique(y)) > len(np.unique(labels[0]))
    np.testing.assert_array_equal(y[labels[0] > 0], labels[0][labels[0] > 0])
    off = make_segmenter("swin", **{**TINY_SWIN, "space_fill": 0.0})
    assert off._crop_augmenter(images, labels, np.random.default_rng(0)) is None


def test_maskrcnn_takes_swin_arch():
    """The plain maskrcnn segmenter builds arch swin_t_fpn at swin_t's size."""
    seg = make_segmenter("maskrcnn", arch="swin_t_fpn", mask_head=[16])
    model = seg._ensure_model()
    assert model.backbone.body.channels == [96, 192, 384, 768]


@pytest.mark.slow
def test_fit_predict_save_load(tiny_dataset, tmp_path, monkeypatch):
    from cellsynth.benchmark.segmenters import swin

    pasted, real = [], swin.space_fill

    def counting(*args, **kwargs):
        out = real(*args, **kwargs)
        pasted.append(out[2])
        return out

    monkeypatch.setattr(swin, "space_fill", counting)
    seg = make_segmenter("swin", **TINY_SWIN, n_evals=1, precision="fp32")
    seg.fit(tiny_dataset, tmp_path / "work", epochs=2, progress=False)
    assert seg.info["steps"] == 2 * 2  # 3 training images (1 held out), batches of 2
    assert len(pasted) == 2 * 4 and sum(pasted) > 0  # every crop filled (space_fill=1)
    weights = tmp_path / "work" / "model" / "weights.pt"
    state = torch.load(weights, map_location="cpu", weights_only=True)
    assert any(k.startswith("backbone.body.features.") for k in state)
    image = tiny_dataset[0].image
    lab = seg.predict(image)
    assert lab.dtype in (np.uint16, np.uint32) and lab.shape == image.shape
    ids = np.unique(lab)
    assert np.array_equal(ids[ids > 0], np.arange(1, len(ids)))
    odd = np.ascontiguousarray(image[:50, :45])
    assert seg.predict(odd).shape == odd.shape
    again = type(seg).load(tmp_path / "work" / "model")
    assert again.options == seg.options
    np.testing.assert_array_equal(again.predict(image), lab)
    np.testing.assert_array_equal(again.predict(odd), seg.predict(odd))
