"""The EmbedSeg segmenter (the real EmbedSeg package): fit, predict, save/load, learning, its
clustering on ideal embeddings, the workarounds of its CPU/torch bugs, and errors. 64 x 64 disks;
skipped without EmbedSeg."""

from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("EmbedSeg.models.BranchedERFNet", reason="EmbedSeg is not installed")

from conftest import (  # noqa: E402
    check_labels,
    check_odd_inputs,
    check_reload,
    disks_labels,
    disks_sample,
    fit_segmenter,
)

from cellsynth.benchmark.metrics import average_precision  # noqa: E402
from cellsynth.benchmark.segmenters import make_segmenter  # noqa: E402
from cellsynth.benchmark.segmenters._fitting import pooled_ap50  # noqa: E402
from cellsynth.benchmark.segmenters.embedseg import (  # noqa: E402
    PITCH,
    EmbedSegSegmenter,
    _cuda_means,
    _import_embedseg,
    _loss,
)
from cellsynth.errors import CellsynthError  # noqa: E402

# ERFNet has no width option: the network is EmbedSeg's own (2.3 M parameters), on small crops
TINY = dict(crop=64, tile=64, overlap=16, batch_size=2, lr=5e-3, n_evals=3, val_fraction=0.2)


@pytest.fixture(scope="module")
def trained(disks, tmp_path_factory):
    """One model trained for 300 steps of 2 x 64^2 (shared by the tests below)."""
    return fit_segmenter(tmp_path_factory, disks, "embedseg", 100, **TINY)


def _ap50(truth, pred) -> float:
    """AP@0.5 of one image, or pooled over lists of images."""
    if isinstance(truth, list):
        return pooled_ap50(truth, pred)
    return float(average_precision(truth, pred, [0.5])[0][0])


@pytest.mark.slow
def test_fit_learns_and_round_trips(trained, tmp_path):
    seg, work = trained
    info = seg.info
    assert info["steps"] == 300 and info["validation"]["n_images"] == 1
    assert info["precision"] in ("bf16", "fp32") and info["embedseg"] == "0.2.3"
    # better than its untrained state (the curve's first point) on the validation slice
    curve = info["curve"]
    assert info["best"]["val_ap50"] > curve[0]["val_ap50"]
    assert curve[-1]["loss"] < curve[1]["loss"]
    assert info["postprocess"]["params"].keys() == {"seed_thresh", "min_object_size"}
    # and on fresh images it does better than the same network untrained
    fresh = [disks_sample(90 + i) for i in range(3)]
    labs = [seg.predict(s.image) for s in fresh]
    for s, lab in zip(fresh, labs):
        check_labels(lab, s.image.shape)
    untrained = make_segmenter("embedseg", **TINY)
    untrained._ensure_net(1)
    truth = [s.labels for s in fresh]
    ap_untrained = _ap50(truth, [untrained.predict(s.image) for s in fresh])
    assert _ap50(truth, labs) > ap_untrained + 0.1
    # odd sizes, a 3-D single-channel image, and an image of several tiles
    check_odd_inputs(seg, fresh[0].image, tiled=(120, 150))
    # weights only on disk; the same predictions after a reload
    check_reload(seg, work / "model", fresh[0].image, labs[0])


def _ideal_maps(labels: np.ndarray, n_sigma: int = 2, shift: float = 0.0) -> np.ndarray:
    """The network output that EmbedSeg's clustering should turn back into ``labels``: offsets
    pointing every object pixel at its object's centroid (moved by ``shift`` pixels down and
    right), a bandwidth of 2 pixels, seed logits +6 inside objects and -6 outside."""
    h, w = labels.shape
    yy, xx = np.mgrid[:h, :w].astype(np.float64) * PITCH
    out = np.zeros((2 + n_sigma + 1, h, w), np.float32)
    out[2 + n_sigma] = np.where(labels > 0, 6.0, -6.0)
    for i in np.unique(labels[labels > 0]):
        m = labels == i
        cy, cx = yy[m].mean() + shift * PITCH, xx[m].mean() + shift * PITCH
        out[0][m] = np.arctanh(cx - xx[m])
        out[1][m] = np.arctanh(cy - yy[m])
    # exp(-d^2 exp(10 s)) = 0.5 at d = 2 pixels (in grid units)
    out[2 : 2 + n_sigma] = np.log(np.log(2.0) / (2.0 * PITCH) ** 2) / 10.0
    return out


@pytest.mark.parametrize("n_sigma", [1, 2])
def test_clustering_of_ideal_embeddings(n_sigma):
    """EmbedSeg's Cluster (on the CPU, through the .cuda() and centre-index workarounds), run
    by regions on an image of any size, recovers the objects from ideal embeddings on the
    training pixel pitch, objects on the image's last row and column included."""
    seg = make_segmenter(
        "embedseg", n_sigma=n_sigma, seed_thresh=0.5, min_object_size=0, device="cpu"
    )
    edge = disks_labels(5)
    edge[20:40, -1] = edge.max() + 1  # centre on the last column: EmbedSeg's index is past it
    edge[-1, 10:30] = edge.max() + 1  # and on the last row
    for lab in (disks_labels(3), disks_labels(4, size=100, n=12)[:90, :77], edge):
        for shift in (0.0, 12.0):  # 12: every centre is outside its object's box
            got = seg._instances(_ideal_maps(lab, n_sigma, shift), seg.options)
            check_labels(got, lab.shape)
            assert _ap50(lab, got) == 1.0
    # min_object_size drops the objects of at most that many pixels
    lab = disks_labels(3)
    sizes = np.bincount(lab.ravel())[1:]
    big = make_segmenter("embedseg", seed_thresh=0.5, min_object_size=int(sizes.max()))
    assert big._instances(_ideal_maps(lab), big.options).max() == 0


def test_workarounds_leave_torch_as_it_was():
    """The .cuda() redirection ends with its block; the loss runs on bool masks on the CPU."""
    before = torch.Tensor.cuda
    with _cuda_means(torch.device("cpu")):
        assert torch.ones(2).cuda().device.type == "cpu"
    assert torch.Tensor.cuda is before and "cuda" not in vars(torch.Tensor)
    es = _import_embedseg()
    _import_embedseg()  # the loss wrapper is installed once
    from EmbedSeg.criterions import my_loss

    assert my_loss.lovasz_hinge.cellsynth_uint8_labels
    lab = disks_labels(5).astype(np.int32)[None]
    instances = torch.from_numpy(lab)
    centers = torch.from_numpy(
        np.stack([es.generate_center_image(lab[0], "medoid", np.unique(lab)[1:], False)])
    )
    crit = es.SpatialEmbLoss(64, 64, 63 * PITCH, 63 * PITCH, False, n_sigma=2)
    pred = torch.zeros(1, 5, 64, 64, requires_grad=True)
    loss = _loss(crit, pred, instances, centers, {})
    loss.backward()
    assert torch.isfinite(loss) and pred.grad.abs().sum() > 0


def test_errors(tmp_path, monkeypatch):
    with pytest.raises(CellsynthError, match="unknown option"):
        make_segmenter("embedseg", no_such=1)
    with pytest.raises(CellsynthError, match="multiple of 8"):
        make_segmenter("embedseg", crop=100)
    with pytest.raises(CellsynthError, match="n_sigma"):
        make_segmenter("embedseg", n_sigma=3)
    with pytest.raises(CellsynthError, match="unknown center"):
        make_segmenter("embedseg", center="middle")
    seg = make_segmenter("embedseg", **TINY)
    with pytest.raises(CellsynthError, match="not trained"):
        seg.predict(np.zeros((32, 32), np.uint8))
    with pytest.raises(CellsynthError, match="nothing to save"):
        seg.save(tmp_path / "m")
    with pytest.raises(CellsynthError, match="no saved embedseg model"):
        EmbedSegSegmenter.load(tmp_path)
    with pytest.raises(CellsynthError, match="empty"):
        seg.fit([], tmp_path, epochs=1, progress=False)
    # weights of another network
    seg._ensure_net(1)
    seg.save(tmp_path / "m")
    state = torch.load(tmp_path / "m" / "weights.pt", weights_only=True)
    torch.save({k: v for k, v in list(state.items())[:-3]}, tmp_path / "m" / "weights.pt")
    with pytest.raises(CellsynthError, match="do not fit the embedseg network"):
        EmbedSegSegmenter.load(tmp_path / "m")
    monkeypatch.setitem(sys.modules, "EmbedSeg.models.BranchedERFNet", None)  # not installed
    with pytest.raises(CellsynthError, match=r"pip install --no-deps EmbedSeg==0\.2\.3"):
        make_segmenter("embedseg").fit([disks_sample(0)], tmp_path / "w", epochs=1, progress=False)


class _NotAWeight:
    """Any object: a checkpoint holding it needs pickled code, which weights_only refuses."""


@pytest.mark.slow
def test_pretrained_checkpoint_of_embedseg(trained, disks, tmp_path):
    seg, _ = trained
    # EmbedSeg's own training saves a DataParallel model's state dict inside a dict
    state = {f"module.{k}": v for k, v in seg.net.state_dict().items()}
    ckpt = tmp_path / "best_iou_model.pth"
    torch.save({"epoch": 3, "model_state_dict": state, "optim_state_dict": {}, "iou": 0.5}, ckpt)
    keep = {k: seg.options[k] for k in ("seed_thresh", "min_object_size", "tile", "overlap")}
    pre = make_segmenter("embedseg", pretrained=str(ckpt), **keep)
    image = disks[0].image
    assert np.array_equal(pre.predict(image), seg.predict(image))
    assert pre.options["in_channels"] == seg.options["in_channels"]
    assert pre.options["n_sigma"] == seg.options["n_sigma"]
    pre.save(tmp_path / "saved")  # a saved model loads without the checkpoint file
    ckpt.unlink()
    again = type(pre).load(tmp_path / "saved")
    assert np.array_equal(again.predict(image), seg.predict(image))
    with pytest.raises(CellsynthError, match="not found"):
        make_segmenter("embedseg", pretrained=str(ckpt)).predict(image)
    code = tmp_path / "with_code.pth"
    torch.save({"model_state_dict": state, "logger": _NotAWeight()}, code)
    with pytest.raises(CellsynthError, match="weights only"):
        make_segmenter("embedseg", pretrained=str(code)).predict(image)
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, other)
    with pytest.raises(CellsynthError, match="not a BranchedERFNet"):
        make_segmenter("embedseg", pretrained=str(other)).predict(image)
