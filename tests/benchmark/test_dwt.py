"""The Deep Watershed Transform segmenter (``segmenters/dwt.py``): its targets against analytic
disks, the targets under flips/rotations, the energy cut's round trip on touching disks, and a
tiny model trained on 64 x 64 disks (learning, valid labels, tiling, save/reload, errors)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import (  # noqa: E402
    check_odd_inputs,
    check_refused,
    check_reload,
    check_untrained,
    disks_labels,
    disks_sample,
    fit_segmenter,
)
from scipy import ndimage as ndi  # noqa: E402

from cellsynth.benchmark.metrics import average_precision  # noqa: E402
from cellsynth.benchmark.segmenters import make_segmenter  # noqa: E402
from cellsynth.benchmark.segmenters._fitting import pooled_ap50  # noqa: E402
from cellsynth.benchmark.segmenters.dwt import (  # noqa: E402
    DWTSegmenter,
    dwt_targets,
    energy_summary,
    flip_rot_targets,
    level_weights,
    watershed_cut,
)
from cellsynth.errors import CellsynthError  # noqa: E402

TINY = dict(
    widths=[8, 16, 32],
    wtn_widths=[8, 16, 32],
    levels=6,
    crop=64,
    tile=64,
    batch_size=4,
    lr=5e-3,
    val_fraction=0.2,
    n_evals=3,
)


def _disk(size, cy, cx, r):
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _one_hot(levels, k):
    return np.eye(k, dtype=np.float32)[levels.astype(np.int64)].transpose(2, 0, 1)


def _same_partition(a, b) -> bool:
    """The two label images hold the same objects (up to renumbering)."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return (
        len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
        and ((pairs[0] == 0) == (pairs[1] == 0)).all()
    )


def _disk_chain(seed, gap, size=96, n=6):
    """``n`` disks (radius 6-10), each placed at a random angle ``r1 + r2 + gap`` from the
    previous one's centre: gap 1 -> touching corner to corner (8-adjacent), gap 0 -> sharing a
    short contact line (the later disk keeps only its own pixels)."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((size, size), np.uint16)
    c, r = np.array([size / 2, size / 2]), int(rng.integers(6, 11))
    lab[_disk(size, *c, r)] = 1
    i = 1
    for _ in range(1000):
        if i == n:
            break
        r2, a = int(rng.integers(6, 11)), rng.uniform(0, 2 * np.pi)
        c2 = c + (r + r2 + gap) * np.array([np.sin(a), np.cos(a)])
        disk = _disk(size, *c2, r2)
        overlap = (lab[disk] > 0).sum()
        if (c2 < r2 + 1).any() or (c2 > size - r2 - 2).any() or overlap > (gap < 1) * 3 * r2:
            continue
        i += 1
        lab[disk & (lab == 0)] = i
        c, r = c2, r2
    return lab


# --- targets -----------------------------------------------------------------------------------
@pytest.mark.parametrize("radius", [5, 12, 20])
def test_directions_point_away_from_the_boundary_of_a_disk(radius):
    size, cy, cx = 64, 31, 33
    lab = _disk(size, cy, cx, radius).astype(np.uint16)
    t = dwt_targets(lab, levels=8, level_step=2.0)
    fg, u, valid = t[0] > 0, t[1:3], t[3] > 0
    assert np.array_equal(fg, lab > 0)
    assert not (np.abs(t[1:]) > 0).any(axis=0)[~fg].any()  # nothing on the background
    np.testing.assert_allclose(np.hypot(*u)[valid], 1.0, atol=1e-5)  # unit vectors
    assert valid[fg].mean() > 0.98  # only pixels at the centre are left out
    # the analytic direction away from a disk's nearest boundary: toward its centre
    yy, xx = np.mgrid[:size, :size]
    ry, rx = cy - yy, cx - xx
    rho = np.hypot(ry, rx)
    m = valid & (rho >= 1.5)
    cos = (u[0] * ry + u[1] * rx)[m] / rho[m]
    angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    assert angle.max() < 12.0 and angle.mean() < 5.0


def test_energy_levels_quantise_the_distance_and_rise_toward_the_centre():
    size, cy, cx, r, k, step = 80, 40, 40, 25, 8, 2.0
    lab = _disk(size, cy, cx, r).astype(np.uint16)
    level = dwt_targets(lab, levels=k, level_step=step)[4]
    assert (level[lab == 0] == 0).all()
    # an independent distance: to the nearest background pixel, brute force
    ys, xs = np.nonzero(lab == 0)
    fy, fx = np.nonzero(lab > 0)
    d = np.sqrt(((fy[:, None] - ys[None]) ** 2 + (fx[:, None] - xs[None]) ** 2).min(axis=1))
    np.testing.assert_array_equal(level[fy, fx], np.minimum(np.floor(d / step), k - 1))
    assert level[cy, cx] == k - 1 and set(np.unique(level[lab > 0])) == set(range(k))
    # monotone toward the centre along every row and column through it
    for profile in (level[cy, cx:], level[cy, cx::-1], level[cy:, cx], level[cy::-1, cx]):
        assert (np.diff(profile) <= 0).all()


def test_targets_of_touching_objects_stay_apart():
    lab = np.zeros((20, 30), np.uint16)
    lab[5:15, 3:15], lab[5:15, 15:27] = 1, 2  # two rectangles sharing an edge
    t = dwt_targets(lab, levels=4, level_step=2.0)
    assert (t[4][:, 14:16][lab[:, 14:16] > 0] == 0).all()  # the shared edge is boundary band
    # on either side of it, the directions point away from the other object
    assert (t[2][6:14, 14] < -0.5).all() and (t[2][6:14, 15] > 0.5).all()


@pytest.mark.parametrize("seed", range(8))
def test_targets_turn_with_flips_and_rotations(seed):
    lab = disks_labels(seed)
    t = dwt_targets(lab)
    image = lab[None].astype(np.float32)
    moved, t_moved = flip_rot_targets(image, t, np.random.default_rng(seed))
    np.testing.assert_array_equal(dwt_targets(moved[0].astype(np.uint16)), t_moved)


def test_level_weights_balance_the_levels():
    t = np.zeros((5, 10, 10), np.float32)
    t[4, :5] = 1
    t[4, :1] = 2  # frequencies 0.5, 0.4, 0.1 of 4 levels
    w = level_weights([t], 4)
    freq = np.array([0.5, 0.4, 0.1])
    np.testing.assert_allclose(w[:3] / w[0], np.sqrt(freq[0] / freq))
    assert abs(float((w[:3] * freq).sum()) - 1.0) < 1e-5
    assert w[3] == w.max()  # never seen: the largest weight


# --- the cut -----------------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [8, 16])
def test_cut_recovers_touching_disks_from_true_energy(levels):
    for seed in range(10):
        lab = _disk_chain(seed, gap=1)
        assert ndi.label(lab > 0, structure=np.ones((3, 3)))[1] < lab.max()  # some touch
        t = dwt_targets(lab, levels=levels)
        cum, energy = energy_summary(_one_hot(t[4], levels))
        for cut in (1, 2):
            out = watershed_cut(t[0], cum, energy, energy_cut=cut, min_size=1)
            assert out.dtype == np.uint16
            assert _same_partition(lab, out), (seed, cut)


def test_cut_separates_disks_sharing_a_contact_line():
    """Disks sharing contact lines: each is found (IoU >= 0.9); only band pixels on diagonal
    stretches of a contact, where the quantised energy does not say which side they are on,
    may go to the neighbour."""
    for seed in range(10):
        lab = _disk_chain(seed, gap=0)
        t = dwt_targets(lab, levels=8)
        cum, energy = energy_summary(_one_hot(t[4], 8))
        out = watershed_cut(t[0], cum, energy, energy_cut=1, min_size=1)
        assert out.max() == lab.max()
        assert average_precision(lab, out, [0.9])[0][0] == 1.0


def test_cut_details():
    fg = np.zeros((40, 40), np.float32)
    probs = np.zeros((4, 40, 40), np.float32)
    probs[0] = 1
    cum, energy = energy_summary(probs)
    empty = watershed_cut(fg, cum, energy)
    assert empty.dtype == np.uint16 and empty.max() == 0
    # foreground without any core: an object of its own; tiny ones removed
    fg[5:15, 5:15] = 1
    fg[30:32, 30:32] = 1
    out = watershed_cut(fg, cum, energy, energy_cut=1, min_size=8)
    assert out.max() == 1 and (out > 0).sum() == 100
    # two cores in one foreground region: two objects, unless the small one is dropped
    fg[20:28, 5:25] = 1
    probs[:, 22:26, 7:15] = 0
    probs[1, 22:26, 7:15] = 1  # a core of 32 pixels
    probs[:, 24, 20:22] = 0
    probs[1, 24, 20:22] = 1  # a core of 2 pixels
    cum, energy = energy_summary(probs)
    assert watershed_cut(fg, cum, energy, energy_cut=1).max() == 3  # + the core-less square
    two = watershed_cut(fg, cum, energy, energy_cut=1, core_min_size=4)
    assert two.max() == 2 and (two > 0).sum() == 100 + 160
    with pytest.raises(CellsynthError, match="energy_cut"):
        watershed_cut(fg, cum, energy, energy_cut=4)
    with pytest.raises(CellsynthError, match="K x H x W"):
        energy_summary(np.zeros((40, 40)))


# --- the segmenter -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(disks, tmp_path_factory):
    return fit_segmenter(tmp_path_factory, disks, "dwt", 60, **TINY)


@pytest.mark.slow
def test_fit_learns_and_predicts(trained):
    seg, work = trained
    info = seg.info
    assert info["steps"] > 0 and info["validation"]["n_images"] >= 1
    curve = [p["val_ap50"] for p in info["curve"]]
    assert info["best"]["val_ap50"] > curve[0]
    assert set(info["postprocess"]["params"]) == {
        "energy_cut",
        "core_threshold",
        "fg_threshold",
        "core_min_size",
        "min_size",
    }
    assert len(info["level_weights"]) == TINY["levels"]
    # better than the same network untrained, on fresh images
    fresh = [disks_sample(s) for s in (97, 98, 99)]
    untrained = make_segmenter("dwt", **TINY, in_channels=1)
    untrained._ensure_net(1)
    truth = [s.labels for s in fresh]
    ap = pooled_ap50(truth, [seg.predict(s.image) for s in fresh])
    ap0 = pooled_ap50(truth, [untrained.predict(s.image) for s in fresh])
    assert ap > ap0 + 0.2, (ap, ap0)
    maps = seg.predict_maps(fresh[0].image)
    assert maps["energy"].shape == (TINY["levels"], 64, 64)
    np.testing.assert_allclose(maps["energy"].sum(axis=0), 1.0, atol=1e-4)
    # odd sizes, a trailing channel axis, and an image of several tiles
    check_odd_inputs(seg, fresh[0].image, tiled=(120, 170))


@pytest.mark.slow
def test_save_reload_same_predictions(trained, tmp_path):
    seg, work = trained
    folder = work / "model"
    assert {p.name for p in folder.iterdir()} >= {"weights.pt", "options.json", "info.json"}
    assert json.loads((folder / "options.json").read_text())["levels"] == TINY["levels"]
    image = disks_sample(42).image
    check_reload(seg, folder, image, seg.predict(image))
    seg.save(tmp_path / "copy")
    np.testing.assert_array_equal(
        DWTSegmenter.load(tmp_path / "copy").predict(image), seg.predict(image)
    )


def test_options_and_errors(tmp_path):
    check_refused(
        "dwt",
        ("unknown option", dict(no_such_option=1)),
        # DenseSegmenter's watershed seeds do not apply
        ("unknown option.*seeds", dict(seeds="edt")),
        ("energy_cut", dict(levels=4, energy_cut=4)),
        ("multiple of 16", dict(widths=[8, 16, 32, 64], wtn_widths=[8, 16], crop=40)),
        ("teacher", dict(teacher=2)),
    )
    seg = make_segmenter("dwt", **TINY)
    check_untrained(seg, tmp_path)
