"""Gaussian puncta (placement, intensities, rendering, CSV) and compositing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cellsynth.errors import CellsynthError
from cellsynth.tools.combine import combine
from cellsynth.tools.points import (
    SPOT_DTYPE,
    cell_moments,
    render_spots,
    simulate_spots,
    spots_from_csv,
    spots_mask,
    spots_to_csv,
)


def _cells():
    lab = np.zeros((60, 80), np.uint16)
    lab[5:25, 5:30] = 1
    lab[30:55, 10:20] = 2
    yy, xx = np.mgrid[:60, :80]
    lab[(yy - 35) ** 2 + (xx - 55) ** 2 < 15**2] = 4  # id 3 absent on purpose
    lab[20:24, 40:75] = 5  # thin cell, touching 4
    return lab


def _inside(lab, s):
    r = np.floor(s["y"] + 0.5).astype(int)
    c = np.floor(s["x"] + 0.5).astype(int)
    return lab[r, c] == s["cell_id"]


def test_cell_moments_match_direct():
    lab = _cells()
    ids, area, cen, cov = cell_moments(lab)
    assert ids.tolist() == [1, 2, 4, 5]
    for k, i in enumerate(ids):
        yy, xx = np.nonzero(lab == i)
        assert area[k] == yy.size
        assert np.allclose(cen[k], [yy.mean(), xx.mean()])
        assert np.allclose(cov[k], np.cov(np.stack([yy, xx]), bias=True))


def test_fixed_counts_inside_and_seeded():
    lab = _cells()
    s = simulate_spots(lab, 1, count=7, count_mode="fixed", sigma=6.0)
    assert s.dtype == SPOT_DTYPE
    assert np.bincount(s["cell_id"], minlength=6).tolist() == [0, 7, 7, 0, 7, 7]
    assert np.all(_inside(lab, s))
    assert np.array_equal(s, simulate_spots(lab, 1, count=7, count_mode="fixed", sigma=6.0))
    assert not np.array_equal(s, simulate_spots(lab, 2, count=7, count_mode="fixed", sigma=6.0))


def test_fallback_keeps_spots_inside():
    lab = _cells()
    # a huge spread and no redraws: every spot goes through the uniform in-cell fallback
    s = simulate_spots(lab, 0, count=50, count_mode="fixed", sigma=500.0, max_tries=0)
    assert s.size == 200 and np.all(_inside(lab, s))


def test_poisson_counts_mean():
    lab = np.arange(1, 401, dtype=np.uint16).reshape(20, 20).repeat(3, 0).repeat(3, 1)
    s = simulate_spots(lab, 3, count=4.0, sigma=0.5)
    counts = np.bincount(s["cell_id"], minlength=401)[1:]
    # 400 Poisson(4) draws: the mean is within 4 standard errors (0.1) of 4
    assert abs(counts.mean() - 4.0) < 0.4 and counts.var() > 2.0
    assert np.all(_inside(lab, s))


def _big_cell():
    lab = np.zeros((301, 301), np.uint16)
    lab[20:281, 20:281] = 1
    return lab


def test_isotropic_position_distribution():
    s = simulate_spots(_big_cell(), 0, count=4000, count_mode="fixed", sigma=5.0)
    pts = np.stack([s["y"], s["x"]])
    assert np.allclose(pts.mean(1), [150, 150], atol=0.4)
    assert np.allclose(np.cov(pts), 25 * np.eye(2), atol=2.0)


def test_shape_and_matrix_spreads():
    lab = np.zeros((200, 200), np.uint16)
    lab[90:110, 20:180] = 1  # long horizontal cell
    _, _, cen, cov = cell_moments(lab)
    s = simulate_spots(lab, 0, count=4000, count_mode="fixed", spread="shape", scale=0.3)
    pts = np.stack([s["y"], s["x"]])
    assert np.allclose(pts.mean(1), cen[0], atol=0.5)
    c = np.cov(pts)
    assert np.allclose(np.diag(c), 0.09 * np.diag(cov[0]), rtol=0.1)
    assert abs(c[0, 1]) / np.sqrt(c[0, 0] * c[1, 1]) < 0.06  # uncorrelated, like the cell
    m = np.array([[9.0, 4.0], [4.0, 4.0]])  # (x, y) order
    s = simulate_spots(_big_cell(), 1, count=4000, count_mode="fixed", spread="matrix", matrix=m)
    assert np.allclose(np.cov(np.stack([s["x"], s["y"]])), m, atol=0.8)


@pytest.mark.parametrize("kind", ["lognormal", "gamma", "uniform", "constant"])
def test_intensity_distributions(kind):
    s = simulate_spots(
        _big_cell(),
        0,
        count=3000,
        count_mode="fixed",
        intensity=kind,
        intensity_mean=5.0,
        intensity_spread=0.4,
    )
    v = s["intensity"]
    assert abs(v.mean() - 5.0) < 0.15 and v.min() >= 0
    if kind == "constant":
        assert np.all(v == 5.0)
    elif kind == "uniform":
        assert v.min() >= 3.0 and v.max() <= 7.0
        assert abs(v.std() - 0.4 * 5 / np.sqrt(3)) < 0.1
    else:
        assert abs(v.std() / v.mean() - 0.4) < 0.04


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"count_mode": "many"}, "count mode"),
        ({"spread": "wide"}, "spread"),
        ({"intensity": "flat"}, "intensity"),
        ({"count": -1}, "count"),
        ({"count": 2.5, "count_mode": "fixed"}, "integer"),
        ({"spread": "matrix", "matrix": [[1, 2], [0, 1]]}, "symmetric"),
        ({"spread": "matrix", "matrix": [[1, 2], [2, 1]]}, "semi-definite"),
        ({"spread": "matrix"}, "2 x 2"),
    ],
)
def test_spot_bad_input(kwargs, match):
    with pytest.raises(CellsynthError, match=match):
        simulate_spots(_cells(), 0, **kwargs)
    with pytest.raises(CellsynthError, match="integer"):
        simulate_spots(_cells().astype(np.float32), 0)


def _direct_render(shape, y, x, intensity, sigma, sub=24):
    """Supersampled integral of the Gaussian over every pixel (slow, obvious)."""
    h, w = shape
    off = (np.arange(sub) + 0.5) / sub - 0.5
    yy = (np.arange(h)[:, None] + off[None, :]).ravel()
    xx = (np.arange(w)[:, None] + off[None, :]).ravel()
    gy = np.exp(-((yy - y) ** 2) / (2 * sigma**2)).reshape(h, sub).mean(1)
    gx = np.exp(-((xx - x) ** 2) / (2 * sigma**2)).reshape(w, sub).mean(1)
    return intensity * np.outer(gy, gx) / (2 * np.pi * sigma**2)


def test_render_matches_direct_integration_and_sums():
    spots = np.zeros(1, SPOT_DTYPE)
    spots[0] = (20.3, 14.7, 1, 6.0)
    img = render_spots((32, 40), spots, sigma_psf=1.3, truncate=6.0)
    ref = _direct_render((32, 40), 14.7, 20.3, 6.0, 1.3)
    assert img.dtype == np.float32 and img.shape == (32, 40)
    assert np.allclose(img, ref, atol=2e-4 * 6)
    assert abs(img.sum() - 6.0) < 1e-4  # truncation at 6 sigma loses ~2e-9
    short = render_spots((32, 40), spots, sigma_psf=1.3, truncate=1.0)

    # window of +-ceil(1.3) = 2 pixels around the centre pixel: mass is a product of erf terms
    def mass(c):
        lo = np.floor(c + 0.5) - 2.5
        return 0.5 * (
            math.erf((lo + 5 - c) / (1.3 * math.sqrt(2)))
            - math.erf((lo - c) / (1.3 * math.sqrt(2)))
        )

    assert np.isclose(short.sum(), 6.0 * mass(14.7) * mass(20.3), rtol=1e-5)
    assert short.sum() < 0.95 * 6
    edge = spots.copy()
    edge[0]["x"] = 0.0  # the part left of x = -0.5 falls outside the image
    inside = 0.5 * (1 + math.erf(0.5 / (1.3 * math.sqrt(2))))
    assert np.isclose(render_spots((32, 40), edge, 1.3).sum(), 6.0 * inside, rtol=1e-4)


def test_render_is_linear_and_point_mode():
    rng = np.random.default_rng(0)
    spots = np.zeros(5, SPOT_DTYPE)
    spots["x"] = rng.uniform(0, 30, 5)
    spots["y"] = rng.uniform(0, 20, 5)
    spots["intensity"] = rng.uniform(1, 3, 5)
    total = render_spots((20, 30), spots, 1.0)
    parts = sum(render_spots((20, 30), spots[i : i + 1], 1.0) for i in range(5))
    assert np.allclose(total, parts, atol=1e-5)
    point = render_spots((20, 30), spots, 0.0)
    for s in spots:
        r, c = int(np.floor(s["y"] + 0.5)), int(np.floor(s["x"] + 0.5))
        if 0 <= r < 20 and 0 <= c < 30:
            assert point[r, c] >= s["intensity"] - 1e-5
    assert np.isclose(
        point.sum(),
        spots["intensity"][
            (np.floor(spots["y"] + 0.5) < 20) & (np.floor(spots["x"] + 0.5) < 30)
        ].sum(),
        atol=1e-4,
    )


def test_spots_mask_and_csv_roundtrip():
    spots = np.zeros(2, SPOT_DTYPE)
    spots[0] = (10.0, 10.0, 1, 2.0)
    spots[1] = (30.2, 5.6, 2, 1.0)
    m = spots_mask((20, 40), spots, radius=2.0)
    assert m[10, 10] == 1 and m[6, 30] == 2
    assert (m == 1).sum() == 13  # lattice points within distance 2 of a pixel centre
    back = spots_from_csv(spots_to_csv(spots))
    assert np.array_equal(back, spots)
    with pytest.raises(CellsynthError, match="header"):
        spots_from_csv("a,b\n1,2\n")
    with pytest.raises(CellsynthError, match="line 2"):
        spots_from_csv("x,y,cell_id,intensity\n1,2,three,4\n")


def test_combine_add_matches_formula_and_clips():
    img = np.full((8, 8), 100, np.uint8)
    spots = np.zeros((8, 8), np.float32)
    spots[2, 3] = 0.2
    spots[4, 4] = 2.0  # saturates
    out = combine(img, spots)
    assert out.dtype == np.uint8
    assert out[2, 3] == round(100 + 0.2 * 255) and out[4, 4] == 255 and out[0, 0] == 100
    img16 = np.full((8, 8), 1000, np.uint16)
    out16 = combine(img16, spots, scale=0.5)
    assert out16[2, 3] == round(1000 + 0.1 * 65535)
    rgb = np.zeros((8, 8, 3), np.uint8)
    out = combine(rgb, spots, channel=1)
    assert out[2, 3].tolist() == [0, 51, 0]
    assert combine(rgb, spots, channel=None)[2, 3].tolist() == [51, 51, 51]
    fl = combine(np.zeros((8, 8), np.float32), spots)
    assert fl.dtype == np.float32 and np.isclose(fl[4, 4], 2.0)


def test_combine_channel_and_noise():
    img = np.full((64, 64), 50, np.uint16)
    spots = np.full((64, 64), 0.25, np.float32)
    out = combine(img, spots, mode="channel")
    assert out.shape == (64, 64, 2) and np.all(out[..., 0] == 50)
    assert np.all(out[..., 1] == round(0.25 * 65535))
    noisy = combine(img, spots, photons=100.0, read_noise=0.01, seed=3)
    assert np.array_equal(noisy, combine(img, spots, photons=100.0, read_noise=0.01, seed=3))
    expect = 50 / 65535 + 0.25
    x = noisy.astype(float) / 65535
    assert abs(x.mean() - expect) < 0.01
    # Poisson-Gaussian variance: mean / photons + read_noise^2
    assert abs(x.var() - (expect / 100 + 1e-4)) < 0.3 * (expect / 100)


@pytest.mark.parametrize(
    "image, spots, kwargs, match",
    [
        (np.zeros((8, 8), np.uint8), np.zeros((8, 9)), {}, "differ in size"),
        (np.zeros((8, 8), np.uint8), np.zeros((8, 8)), {"mode": "blend"}, "mode"),
        (np.zeros((8, 8, 2), np.uint8), np.zeros((8, 8)), {"channel": 2}, "channel 2"),
        (np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8)), {"mode": "channel"}, "at most 4"),
        (np.zeros((8, 8), np.int32), np.zeros((8, 8)), {}, "dtype"),
        (np.zeros((8, 8), np.uint8), np.full((8, 8), np.nan), {}, "NaN"),
    ],
)
def test_combine_bad_input(image, spots, kwargs, match):
    with pytest.raises(CellsynthError, match=match):
        combine(image, spots, **kwargs)


# ---- `cellsynth tools` -----------------------------------------------------------------------
def test_tools_cli_points_combine_threshold(tmp_path):
    from click.testing import CliRunner

    from cellsynth.cli import cli, main
    from cellsynth.datasets import read_image, read_labels, write_image, write_labels

    lab = _cells()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images").mkdir()
    for name in ("a", "b"):
        write_labels(tmp_path / "masks" / f"{name}.tif", lab)
        write_image(
            tmp_path / "images" / f"{name}.tif", np.where(lab > 0, 120, 10).astype(np.uint8)
        )
    run = CliRunner()
    res = run.invoke(
        cli,
        [
            "tools",
            "points",
            str(tmp_path),
            "--out",
            str(tmp_path / "pts"),
            "--count",
            "4",
            "--fixed",
            "--spot-masks",
            "--psf-sigma",
            "1.2",
        ],
    )
    assert res.exit_code == 0, res.output
    spots = spots_from_csv((tmp_path / "pts" / "spots" / "a.csv").read_text())
    assert spots.size == 16 and np.all(_inside(lab, spots))
    rendered = read_image(tmp_path / "pts" / "images" / "a.tif")
    assert rendered.dtype == np.float32
    assert np.allclose(rendered, render_spots(lab.shape, spots, 1.2))
    assert read_labels(tmp_path / "pts" / "masks" / "a.tif").max() == 16
    # per-file seeds do not depend on which other files are present
    b = spots_from_csv((tmp_path / "pts" / "spots" / "b.csv").read_text())
    assert not np.array_equal(spots, b)

    res = run.invoke(
        cli,
        ["tools", "combine", str(tmp_path), str(tmp_path / "pts"), "--out", str(tmp_path / "comb")],
    )
    assert res.exit_code == 0, res.output
    out = read_image(tmp_path / "comb" / "a.tif")
    img = read_image(tmp_path / "images" / "a.tif")
    assert np.array_equal(out, combine(img, rendered))

    res = run.invoke(
        cli,
        [
            "tools",
            "threshold",
            str(tmp_path / "images" / "a.tif"),
            "--out",
            str(tmp_path / "th.tif"),
            "--instances",
        ],
    )
    assert res.exit_code == 0, res.output
    th = read_labels(tmp_path / "th.tif")
    assert np.array_equal(th > 0, lab > 0) and th.max() == 3  # cells 4 and 5 touch

    # refusals: existing output, unpaired folders; nothing half-written
    for argv in (
        ["tools", "points", str(tmp_path), "--out", str(tmp_path / "pts")],
        [
            "tools",
            "combine",
            str(tmp_path),
            str(tmp_path / "pts" / "images" / "a.tif"),
            "--out",
            str(tmp_path / "x"),
        ],
        ["tools", "points", str(tmp_path / "none"), "--out", str(tmp_path / "y")],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    (tmp_path / "pts" / "images" / "b.tif").unlink()
    with pytest.raises(SystemExit):
        main(
            ["tools", "combine", str(tmp_path), str(tmp_path / "pts"), "--out", str(tmp_path / "z")]
        )
    assert not (tmp_path / "z").exists()


def test_points_and_synth_share_the_puncta_flags(tmp_path):
    """`tools points` and `synth` take the same --spots-* flags (one declaration); the old
    names still work and are hidden from --help."""
    from click.testing import CliRunner

    from cellsynth.cli import cli
    from cellsynth.datasets import write_labels

    write_labels(tmp_path / "m" / "a.tif", _cells())
    run = CliRunner()
    outs = {}
    for tag, flags in (
        ("new", ["--spots-count", "2", "--spots-fixed", "--spots-psf-sigma", "1.5"]),
        ("old", ["--count", "2", "--fixed", "--psf-sigma", "1.5"]),
    ):
        res = run.invoke(
            cli, ["tools", "points", str(tmp_path / "m"), "--out", str(tmp_path / tag), *flags]
        )
        assert res.exit_code == 0, res.output
        outs[tag] = (tmp_path / tag / "spots" / "a.csv").read_text()
    assert outs["new"] == outs["old"]
    points_help = run.invoke(cli, ["tools", "points", "--help"]).output
    synth_help = run.invoke(cli, ["synth", "--help"]).output
    for name in ("count", "fixed", "spread", "sigma", "scale", "matrix", "intensity", "psf-sigma"):
        assert f"--spots-{name}" in points_help and f"--spots-{name}" in synth_help
    listed = points_help.split("Options:")[1]
    assert "--count" not in listed and "--psf-sigma " not in listed
    assert "--spots-psf " not in synth_help  # the old synth spelling: accepted, not shown
    res = run.invoke(
        cli,
        [
            "tools",
            "points",
            str(tmp_path / "m"),
            "--out",
            str(tmp_path / "x"),
            "--spots-count",
            "-1",
        ],
    )
    assert res.exit_code != 0 and not (tmp_path / "x").exists()
