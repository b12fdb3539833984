"""Deep-learning segmenters (cellpose, maskrcnn, u2net, unet) and their shared helpers.

Networks are tiny and trained for one or two epochs on 64 x 64 disks: the tests check the
mechanics (valid labels, save/load, seeding, errors, conversions), not accuracy.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import (  # noqa: E402
    SMALL_MASKRCNN,
    check_labels,
    check_untrained,
    disks_dataset,
    disks_labels,
    disks_sample,
)

from cellsynth.benchmark.segmenters import make_segmenter  # noqa: E402
from cellsynth.benchmark.segmenters._instances import (  # noqa: E402
    boundary_map,
    distance_map,
    instance_targets,
    maps_to_instances,
)
from cellsynth.benchmark.segmenters._torchutil import (  # noqa: E402
    normalize_image,
    predict_tiled,
    random_crop,
    random_flip_rot,
)
from cellsynth.benchmark.segmenters.base import package_version  # noqa: E402
from cellsynth.errors import CellsynthError  # noqa: E402

# cellpose 4 neither trains nor loads a CPnet (its Cellpose-SAM tests: test_cellpose_sam.py)
CELLPOSE_VERSION = package_version("cellpose")
CELLPOSE4 = CELLPOSE_VERSION[:1].isdigit() and int(CELLPOSE_VERSION.split(".")[0]) >= 4
needs_cellpose3 = pytest.mark.skipif(
    CELLPOSE4,
    reason=f"a CPnet (training, cellpose 3 models) needs cellpose 3.x; installed {CELLPOSE_VERSION}",
)

TINY = {
    "u2net": dict(variant="small", crop=32, tile=64, batch_size=2),
    "unet": dict(
        unet_channels=[4, 8, 16], strides=[2, 2], num_res_units=1, crop=64, tile=64, batch_size=2
    ),
    "maskrcnn": dict(
        SMALL_MASKRCNN, score_threshold=0.0, max_detections=5, box_batch_size_per_image=16
    ),
    "cellpose": dict(bsize=64, batch_size=2, min_train_masks=1),
}


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return disks_dataset(tmp_path_factory.mktemp("tiny") / "ds", 4)


# --- each segmenter: fit, predict, save/load round trip --------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["u2net", "unet", "maskrcnn", pytest.param("cellpose", marks=needs_cellpose3)]
)
def test_fit_predict_save_load(name, tiny_dataset, tmp_path):
    seg = make_segmenter(name, **TINY[name])
    assert seg.trainable
    seg.fit(tiny_dataset, tmp_path / "work", epochs=1 if name == "maskrcnn" else 2, progress=False)
    assert (tmp_path / "work" / "model" / "weights.pt").is_file()
    image = tiny_dataset[0].image
    lab = seg.predict(image)
    check_labels(lab, image.shape)
    # odd-sized image: still H x W labels
    odd = np.ascontiguousarray(image[:50, :45])
    check_labels(seg.predict(odd), odd.shape)

    seg.save(tmp_path / "saved")
    again = type(seg).load(tmp_path / "saved")
    assert again.options == seg.options
    np.testing.assert_array_equal(again.predict(image), lab)


def test_unet_learns_foreground(tiny_dataset):
    """A few dozen steps on the disks already give a foreground map better than chance."""
    seg = make_segmenter("unet", **{**TINY["unet"], "batch_size": 4, "lr": 1e-2})
    seg.fit(tiny_dataset, None, epochs=40, progress=False)
    fg = seg.predict_maps(tiny_dataset[1].image)[0]
    truth = tiny_dataset[1].labels > 0
    assert fg[truth].mean() > fg[~truth].mean() + 0.3


def test_same_seed_same_weights(tiny_dataset):
    a = make_segmenter("unet", **TINY["unet"], seed=3)
    b = make_segmenter("unet", **TINY["unet"], seed=3)
    c = make_segmenter("unet", **TINY["unet"], seed=4)
    for s in (a, b, c):
        s.fit(tiny_dataset, None, epochs=2, progress=False)
    img = tiny_dataset[2].image
    np.testing.assert_array_equal(a.predict_maps(img), b.predict_maps(img))
    assert not np.array_equal(a.predict_maps(img), c.predict_maps(img))


# --- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["u2net", "unet", "maskrcnn", "cellpose"])
def test_unknown_option_and_untrained(name, tmp_path):
    with pytest.raises(CellsynthError, match="unknown option"):
        make_segmenter(name, no_such_option=1)
    seg = make_segmenter(name, **TINY[name])
    # cellpose 4 cannot train: its fit says so before it looks at the data
    check_untrained(seg, tmp_path, can_fit=not (name == "cellpose" and CELLPOSE4))


def test_bad_sizes_rejected():
    with pytest.raises(CellsynthError, match="multiple of 32"):
        make_segmenter("u2net", crop=50)
    with pytest.raises(CellsynthError, match="multiple of 4"):
        make_segmenter("unet", unet_channels=[4, 8, 16], strides=[2, 2], tile=66)
    with pytest.raises(CellsynthError, match="strides"):
        make_segmenter("unet", unet_channels=[4, 8, 16], strides=[2])
    with pytest.raises(CellsynthError, match="variant"):
        make_segmenter("u2net", variant="medium")
    with pytest.raises(CellsynthError, match="arch"):
        make_segmenter("maskrcnn", arch="vgg")


@needs_cellpose3
def test_cellpose_pretrained_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path / "models"))
    with pytest.raises(CellsynthError, match=r"cyto3.*not available offline.*models"):
        make_segmenter("cellpose", model="cyto3")
    with pytest.raises(CellsynthError, match="nucleitorch_0"):
        make_segmenter("cellpose", model="nuclei")
    with pytest.raises(CellsynthError, match="not found"):
        make_segmenter("cellpose", model=str(tmp_path / "nope.pth"))
    with pytest.raises(CellsynthError, match="unknown model"):
        make_segmenter("cellpose", model="no_such_model")
    from cellsynth.benchmark.segmenters import cellpose as cp

    if cp.CELLPOSE_MAJOR < 4:
        with pytest.raises(CellsynthError, match="cellpose >= 4"):
            make_segmenter("cellpose", model="cpsam")


@needs_cellpose3
def test_cellpose_local_weights_by_path(tiny_dataset, tmp_path, monkeypatch):
    """A CPnet file saved the Cellpose way loads by path (as a pretrained model)."""
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path / "models"))
    from cellpose import models

    net = models.CellposeModel(pretrained_model=False, diam_mean=12.0, mkldnn=False).net
    net.save_model(str(tmp_path / "my_model"))
    seg = make_segmenter("cellpose", model=str(tmp_path / "my_model"), diameter=12.0)
    lab = seg.predict(tiny_dataset[0].image)
    check_labels(lab, (64, 64))
    seg.save(tmp_path / "saved")
    assert type(seg).load(tmp_path / "saved").options["model"] == str(tmp_path / "my_model")


def test_cellpose_offline_guard():
    from cellpose import models

    from cellsynth.benchmark.segmenters.cellpose import offline

    with offline(), pytest.raises(CellsynthError, match="downloads are disabled"):
        models.utils.download_url_to_file("https://example.invalid/x", "/tmp/x")
    assert models.utils.download_url_to_file.__module__ == "cellpose.utils"


def test_maskrcnn_weights_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.hub.set_dir(str(tmp_path / "torch" / "hub"))
    seg = make_segmenter("maskrcnn", arch="resnet18_fpn", backbone_weights="DEFAULT")
    with pytest.raises(CellsynthError, match=r"not available offline.*resnet18"):
        seg.fit([disks_sample(0)], tmp_path / "w", epochs=1, progress=False)
    seg = make_segmenter("maskrcnn", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(CellsynthError, match="not found"):
        seg.predict(np.zeros((32, 32), np.uint8))


def test_maskrcnn_local_backbone_weights(tmp_path):
    """A local ImageNet-style ResNet-18 state_dict is loaded into the backbone."""
    import torchvision

    from cellsynth.benchmark.segmenters.maskrcnn import DEFAULTS, build_model

    with torch.random.fork_rng():
        torch.manual_seed(123)
        resnet = torchvision.models.resnet18(weights=None)
    torch.save(resnet.state_dict(), tmp_path / "r18.pth")
    model = build_model(
        {**DEFAULTS, "arch": "resnet18_fpn", "backbone_weights": str(tmp_path / "r18.pth")}
    )
    np.testing.assert_array_equal(
        model.backbone.body.conv1.weight.detach().numpy(), resnet.conv1.weight.detach().numpy()
    )
    assert model.roi_heads.detections_per_img == DEFAULTS["max_detections"]
    sizes = [s[0] for s in model.rpn.anchor_generator.sizes]
    assert sizes == DEFAULTS["anchor_sizes"]


# --- U^2-Net ----------------------------------------------------------------------------------
def test_u2net_parameter_counts():
    from cellsynth.benchmark.segmenters.u2net import U2Net, count_parameters

    full = count_parameters(U2Net(3, 1, "full"))
    small = count_parameters(U2Net(3, 1, "small"))
    # paper: 176.3 MB (float32) ~ 44.1 M and 4.7 MB ~ 1.1 M parameters
    assert abs(full - 44.0e6) / 44.0e6 < 0.10
    assert abs(small - 1.13e6) / 1.13e6 < 0.10


def test_u2net_outputs_and_deep_supervision():
    from cellsynth.benchmark.segmenters.u2net import RSU, U2Net

    net = U2Net(1, 2, "small").eval()
    with torch.no_grad():
        outs = net(torch.zeros(1, 1, 50, 37))
    assert len(outs) == 7 and all(o.shape == (1, 2, 50, 37) for o in outs)
    for dilated in (False, True):
        block = RSU(5, 3, 4, 6, dilated=dilated).eval()
        with torch.no_grad():
            y = block(torch.randn(2, 3, 33, 20))
        assert y.shape == (2, 6, 33, 20)


# --- instance conversion ----------------------------------------------------------------------
def two_touching_disks(size=64, r=12, gap=22):
    yy, xx = np.mgrid[:size, :size]
    c = size // 2
    a = (yy - c) ** 2 + (xx - (c - gap // 2)) ** 2 <= r * r
    b = ((yy - c) ** 2 + (xx - (c + gap // 2)) ** 2 <= r * r) & ~a
    lab = np.zeros((size, size), np.uint16)
    lab[a], lab[b] = 1, 2
    return lab


def best_iou(pred, truth_mask):
    ious = []
    for i in np.unique(pred[truth_mask]):
        if i == 0:
            continue
        p = pred == i
        ious.append((p & truth_mask).sum() / (p | truth_mask).sum())
    return max(ious, default=0.0)


@pytest.mark.parametrize("maps", ["boundary", "distance", "edt"])
def test_maps_to_instances_separates_touching_disks(maps):
    truth = two_touching_disks()
    fg, bd, dist = instance_targets(truth)
    assert (truth > 0).sum() > 0 and ((truth == 1) & np.roll(truth == 2, -1, axis=1)).any()
    kwargs = (
        {"boundary": bd} if maps == "boundary" else {"distance": dist} if maps == "distance" else {}
    )
    # soften the maps a bit, as a network would
    pred = maps_to_instances(
        fg * 0.9 + 0.05, min_distance=5, **{k: v * 0.9 + 0.05 for k, v in kwargs.items()}
    )
    assert pred.dtype == np.uint16 and pred.max() == 2
    for k in (1, 2):
        assert best_iou(pred, truth == k) > 0.8
    # the plain threshold would merge them
    from scipy import ndimage as ndi

    assert ndi.label(fg > 0.5)[1] == 1


def test_maps_to_instances_edge_cases():
    assert maps_to_instances(np.zeros((8, 8))).max() == 0
    fg = np.zeros((20, 20))
    fg[2:4, 2:4] = 1  # 4 px: below min_size
    fg[10:16, 10:16] = 1
    out = maps_to_instances(fg, min_size=8)
    assert out.max() == 1 and out[12, 12] == 1 and out[3, 3] == 0
    with pytest.raises(CellsynthError):
        maps_to_instances(np.zeros((4, 4, 2)))
    with pytest.raises(CellsynthError):
        maps_to_instances(np.zeros((4, 4)), boundary=np.zeros((5, 4)))
    with pytest.raises(CellsynthError):
        maps_to_instances(np.full((4, 4), np.nan))


def test_targets_against_reference():
    from skimage.segmentation import find_boundaries

    lab = np.pad(disks_labels(7, 40), 1)  # no object touches the image edge
    bd = boundary_map(lab)
    np.testing.assert_array_equal(
        bd, find_boundaries(lab, connectivity=1, mode="inner") & (lab > 0)
    )
    # distance: brute force min distance from each object pixel to any pixel outside the object
    dist = distance_map(lab)
    ys, xs = np.mgrid[: lab.shape[0], : lab.shape[1]]
    for i in np.unique(lab)[1:]:
        inside = lab == i
        oy, ox = ys[~inside], xs[~inside]
        d = np.array(
            [np.sqrt(((oy - y) ** 2 + (ox - x) ** 2).min()) for y, x in zip(ys[inside], xs[inside])]
        )
        np.testing.assert_allclose(dist[inside], d / d.max(), rtol=1e-5)
    assert dist[lab == 0].max() == 0


# --- _torchutil -------------------------------------------------------------------------------
def test_predict_tiled_matches_direct():
    rng = np.random.default_rng(0)
    x = rng.random((2, 70, 45)).astype(np.float32)

    def fn(t):  # pointwise map with 3 outputs: tiling must not change it
        return np.concatenate([t[:, :1] * 2, t[:, 1:] + 1, t[:, :1] * t[:, 1:]], axis=1)

    out = predict_tiled(fn, x, tile=32, overlap=8, multiple=16)
    np.testing.assert_allclose(out, fn(x[None])[0], rtol=1e-5, atol=1e-6)
    small = predict_tiled(fn, x[:, :10, :7], tile=32, overlap=8, multiple=16)
    np.testing.assert_allclose(small, fn(x[None, :, :10, :7])[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(CellsynthError):
        predict_tiled(fn, x, tile=30, multiple=16)


def test_normalize_image():
    rng = np.random.default_rng(1)
    img8 = rng.integers(0, 256, (20, 30)).astype(np.uint8)
    a = normalize_image(img8)
    b = normalize_image(img8.astype(np.uint16) * 257)
    assert a.shape == (1, 20, 30) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-5)
    lo, hi = np.percentile(img8.astype(np.float32), (1.0, 99.8))
    np.testing.assert_allclose(a[0], np.clip((img8 - lo) / (hi - lo), -1, 3), rtol=1e-5, atol=1e-6)
    assert normalize_image(img8, channels=3).shape == (3, 20, 30)
    rgb = rng.integers(0, 256, (20, 30, 3)).astype(np.uint8)
    assert normalize_image(rgb).shape == (3, 20, 30)
    assert normalize_image(rgb, channels=1).shape == (1, 20, 30)
    assert np.isfinite(normalize_image(np.zeros((5, 5), np.uint8))).all()
    with pytest.raises(CellsynthError):
        normalize_image(rgb, channels=2)
    with pytest.raises(CellsynthError):
        normalize_image(np.zeros((5, 5, 7)))


def test_crop_and_augment_keep_pairs_aligned():
    rng = np.random.default_rng(2)
    lab = disks_labels(3, 40)
    img = np.stack([lab.astype(np.float32), -lab.astype(np.float32)])
    for _ in range(10):
        x, y = random_flip_rot(random_crop([img, lab], 32, rng), rng)
        assert x.shape == (2, 32, 32) and y.shape == (32, 32)
        np.testing.assert_array_equal(x[0], y)
        np.testing.assert_array_equal(x[1], -y.astype(np.float32))
    x, y = random_crop([img[:, :20, :10], lab[:20, :10]], 32, rng)  # padded up
    assert x.shape == (2, 32, 32) and y[20:].max() == 0 and y[:, 10:].max() == 0


def test_maskrcnn_paint_in_score_order():
    from cellsynth.benchmark.segmenters.maskrcnn import crop_targets, paint_instances

    masks = np.zeros((2, 10, 10), np.float32)
    masks[0, 2:6, 2:6] = 0.9
    masks[1, 4:8, 4:8] = 0.9
    lab = paint_instances(None, masks, np.array([0.6, 0.8]), (10, 10))
    assert lab[5, 5] == 1 and lab[3, 3] == 2  # the higher score owns the overlap
    assert (lab == 1).sum() == 16 and (lab == 2).sum() == 12
    # box-relative 2x2 masks pasted into their boxes (one partly outside the image)
    small = np.ones((2, 2, 2), np.float32)
    boxes = np.array([[1, 1, 4, 3], [8, 8, 12, 12]], np.float32)
    lab = paint_instances(boxes, small, np.array([0.9, 0.7]), (10, 10))
    assert (lab == 1).sum() == 6 and lab[1:3, 1:4].min() == 1 and (lab == 2).sum() == 4
    t = crop_targets(two_touching_disks(32, 6, 10))
    assert t["boxes"].shape == (2, 4) and t["masks"].shape == (2, 32, 32)
    assert (t["boxes"][:, 2] > t["boxes"][:, 0]).all()


def test_dense_fit_honours_budget(tiny_dataset):
    import time

    seg = make_segmenter("unet", **TINY["unet"])
    t0 = time.perf_counter()
    seg.fit(tiny_dataset, None, budget_minutes=0.02, progress=False)
    assert seg.info["steps"] >= 1 and time.perf_counter() - t0 < 1.2 + 20
    with pytest.raises(CellsynthError, match="budget"):
        seg.fit(tiny_dataset, None, budget_minutes=0, progress=False)


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["u2net", "unet", "maskrcnn"])
def test_fit_predict_cuda(name, tiny_dataset):
    seg = make_segmenter(name, **TINY[name], device="cuda")
    seg.fit(tiny_dataset, None, epochs=1, progress=False)
    check_labels(seg.predict(tiny_dataset[0].image), (64, 64))
