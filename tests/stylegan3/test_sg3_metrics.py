"""StyleGAN3 metrics: FID and KID against direct formulas, Inception loading errors, and the
mask-realism measure against hand-made instance labels."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from conftest import labels_with_disks

from cellsynth.errors import CellsynthError


def _tiny_features(seed, n=40, shift=0.0):
    """Features of random images from a tiny random conv net (through ImageFeatures)."""
    from cellsynth.stylegan3.metrics import ImageFeatures

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten()
    )
    rng = np.random.default_rng(seed)
    imgs = np.clip(rng.normal(128 + shift, 40, (n, 1, 16, 16)), 0, 255).astype(np.uint8)
    return ImageFeatures(net, size=8)(imgs)


def test_fid_matches_scipy_sqrtm():
    from cellsynth.stylegan3.metrics import fid_from_features

    a, b = _tiny_features(0), _tiny_features(1, shift=30)
    assert a.shape == (40, 24)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert fid_from_features(a, b) == pytest.approx(ref, rel=1e-6, abs=1e-8)
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)
    assert fid_from_features(a, b) > fid_from_features(a, _tiny_features(2))


def test_kid_matches_direct_unbiased_formula():
    from cellsynth.stylegan3.metrics import kid_from_features

    x, y = _tiny_features(0, n=12), _tiny_features(1, n=12, shift=30)
    d = x.shape[1]

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1) ** 3

    m = 12  # one subset holding everything: the estimator is then deterministic
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    ref = xx + yy - 2 * xy
    assert kid_from_features(y, x, num_subsets=3, max_subset_size=m) == pytest.approx(ref)
    with pytest.raises(CellsynthError):
        kid_from_features(x[:1], y)


def test_inception_weights_errors(tmp_path, monkeypatch):
    from cellsynth.stylegan3.metrics import inception_path, load_inception

    monkeypatch.delenv("CELLSYNTH_INCEPTION", raising=False)
    with pytest.raises(CellsynthError, match="CELLSYNTH_INCEPTION"):
        inception_path(None)
    with pytest.raises(CellsynthError, match="no such"):
        inception_path(tmp_path / "none.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save(torch.nn.Linear(2, 2).state_dict(), wrong)
    monkeypatch.setenv("CELLSYNTH_INCEPTION", str(wrong))
    with pytest.raises(CellsynthError, match="inception_v3"):
        load_inception()


def test_object_features_and_realism():
    from scipy.stats import wasserstein_distance
    from skimage.measure import regionprops

    from cellsynth.stylegan3.metrics import object_features, realism

    real = [labels_with_disks([(10, 10, 4), (30, 30, 6)]), labels_with_disks([(20, 20, 5)])]
    fake = [labels_with_disks([(10, 10, 8)]), np.zeros((48, 48), np.uint16)]
    f = object_features(real)
    assert list(f["count"]) == [2, 1]
    areas = [p.area for lab in real for p in regionprops(lab)]
    assert np.array_equal(f["area"], areas)
    assert np.all((f["solidity"] > 0.85) & (f["eccentricity"] < 0.3))
    same = realism(real, real)
    assert same["w1_mean"] == pytest.approx(0.0) and same["ks_mean"] == pytest.approx(0.0)
    r = realism(real, fake)
    ref = wasserstein_distance(areas, object_features(fake)["area"]) / np.std(areas)
    assert r["w1_area"] == pytest.approx(ref)
    assert r["objects_per_image_real"] == 1.5 and r["objects_per_image_fake"] == 0.5
    assert r["edge_objects_per_image_real"] == 0 and r["edge_objects_per_image_fake"] == 0
    assert r["mean_area_real"] == pytest.approx(np.mean(areas))
    assert r["num_objects_fake"] == 1 and r["num_images_fake"] == 2
    with pytest.raises(CellsynthError, match="no objects"):
        realism([np.zeros((8, 8), np.uint16)], fake)


def test_edge_objects_are_those_the_image_edge_cuts():
    from cellsynth.stylegan3.metrics import object_features, realism

    # cut by the top edge, by the right edge, and one inside
    lab = labels_with_disks([(2, 20, 5), (30, 45, 6), (24, 20, 4)])
    # a disk that ends one pixel short of the bottom edge is inside
    inner = labels_with_disks([(40, 10, 6)])
    assert inner[47].max() == 0 and inner[46].max() == 1
    f = object_features([lab, inner])
    assert list(f["edge"]) == [1, 1, 0, 0]
    r = realism([lab, inner], [inner, inner, lab])
    assert r["edge_objects_per_image_real"] == 1.0
    assert r["edge_objects_per_image_fake"] == pytest.approx(2 / 3)


def test_metrics_command_realism(tmp_path, capsys):
    import json

    from conftest import make_masks_zip, sg3_options

    from cellsynth.cli import main
    from cellsynth.stylegan3.training_loop import Trainer

    data = make_masks_zip(tmp_path / "m.zip", encoding="binary")
    snap = Trainer(sg3_options(data, tmp_path, cfg="stylegan2")).save_snapshot(tmp_path / "s.pt")
    main(["stylegan3", "metrics", "--network", str(snap), "--data", str(data), "--num-gen", "8"])
    out = json.loads(capsys.readouterr().out)["realism"]
    assert out["num_images_fake"] == 8 and out["num_images_real"] == 8
    assert out["objects_per_image_real"] > 0 and np.isfinite(out["w1_mean"])


def test_realism_without_generated_objects_is_json_safe():
    import json

    from cellsynth.stylegan3.metrics import realism

    r = realism([labels_with_disks([(10, 10, 4)])], [np.zeros((48, 48), np.uint16)] * 2)
    assert r["w1_area"] is None and r["w1_mean"] is None and r["ks_area"] == 1.0
    assert r["objects_per_image_fake"] == 0 and r["w1_count"] is not None
    json.loads(json.dumps(r, allow_nan=False))
