"""The procedural cell simulator: labels, nuclei, rendering, samples, datasets and its CLI."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cellsynth.datasets import CanonicalDataset
from cellsynth.datasets.simulate import (
    render_image,
    sample_seed,
    simulate_dataset,
    simulate_labels,
    simulate_nuclei,
    simulate_sample,
    split_counts,
)
from cellsynth.errors import CellsynthError


def _touching_pairs(labels):
    a = np.concatenate([labels[1:, :].ravel(), labels[:, 1:].ravel()])
    b = np.concatenate([labels[:-1, :].ravel(), labels[:, :-1].ravel()])
    keep = (a != b) & (a > 0) & (b > 0)
    return {tuple(sorted(p)) for p in zip(a[keep].tolist(), b[keep].tolist())}


def test_labels_seeded_and_valid():
    a = simulate_labels(3, (64, 80), density=0.6, mean_radius=7)
    b = simulate_labels(3, (64, 80), density=0.6, mean_radius=7)
    c = simulate_labels(4, (64, 80), density=0.6, mean_radius=7)
    assert a.dtype == np.uint16 and a.shape == (64, 80)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    ids = np.unique(a)
    assert ids[0] == 0 and np.array_equal(ids[1:], np.arange(1, ids.size))
    for i in ids[1:]:
        own = a == i
        assert own.sum() >= 12  # min_area
        assert ndimage.label(own)[1] == 1  # every cell is one connected piece


def test_density_knob_sparse_to_confluent():
    cover, touching = [], []
    for d in (0.1, 0.5, 1.0):
        lab = simulate_labels(0, 128, density=d, mean_radius=8)
        cover.append((lab > 0).mean())
        touching.append(len(_touching_pairs(lab)) / max(int(lab.max()), 1))
    assert cover[0] < cover[1] < cover[2]
    assert cover[0] < 0.2 and cover[2] > 0.7
    assert touching[2] > 1.0  # confluent cells touch several neighbours
    assert touching[0] < touching[2]


def test_nuclei_inside_their_cells():
    lab = simulate_labels(1, 96, density=0.7, mean_radius=9)
    nuc = simulate_nuclei(lab, 1, scale=0.5)
    assert nuc.shape == lab.shape and nuc.dtype == np.uint16
    inside = nuc > 0
    assert np.array_equal(nuc[inside], lab[inside])
    assert set(np.unique(nuc[inside]).tolist()) == set(range(1, int(lab.max()) + 1))
    for i in range(1, int(lab.max()) + 1):
        assert (nuc == i).sum() < (lab == i).sum() or (lab == i).sum() < 10
    assert np.array_equal(nuc, simulate_nuclei(lab, 1, scale=0.5))


def test_render_clean_matches_direct_computation():
    lab = np.zeros((40, 40), np.uint16)
    lab[10:30, 10:30] = 1
    img = render_image(
        lab,
        0,
        psf_sigma=0,
        texture=0,
        brightness_cv=0,
        illumination=0,
        photons=0,
        read_noise=0,
        nucleus_gain=1.0,
        background=0.1,
        brightness=0.5,
    )
    assert img.dtype == np.uint8 and img.shape == (40, 40)
    assert np.all(img[lab == 0] == round(0.1 * 255))
    # deep inside: profile 1 - 0.45 exp(-d / 3), d = distance to the edge of the square
    d = ndimage.distance_transform_edt(np.pad(np.ones((18, 18)), 1))[1:-1, 1:-1]
    expect = np.rint((0.1 + 0.5 * (1 - 0.45 * np.exp(-d / 3.0))) * 255)
    assert np.array_equal(img[11:29, 11:29], expect.astype(np.uint8))


def test_render_channels_depth_and_nuclei_brighter():
    lab = simulate_labels(2, 96, density=0.5, mean_radius=10)
    nuc = simulate_nuclei(lab, 2)
    img = render_image(lab, 2, nuclei=nuc, channels=3, bit_depth=16, psf_sigma=0.5)
    assert img.shape == (96, 96, 3) and img.dtype == np.uint16
    c0 = img[..., 0].astype(float)
    assert c0[nuc > 0].mean() > 1.3 * c0[(lab > 0) & (nuc == 0)].mean()
    assert c0[(lab > 0) & (nuc == 0)].mean() > 1.5 * c0[lab == 0].mean()
    c1 = img[..., 1].astype(float)  # nuclear stain: bright in nuclei, dark in cytoplasm
    assert c1[nuc > 0].mean() > 3 * c1[(lab > 0) & (nuc == 0)].mean()
    assert np.array_equal(
        img, render_image(lab, 2, nuclei=nuc, channels=3, bit_depth=16, psf_sigma=0.5)
    )
    with pytest.raises(CellsynthError, match="bit depth"):
        render_image(lab, 0, bit_depth=12)
    with pytest.raises(CellsynthError, match="channels"):
        render_image(lab, 0, channels=5)


def test_sample_meta_and_objects():
    s = simulate_sample(11, (48, 64), density=0.6, nuclei=True, mean_radius=6, photons=50)
    assert s.name == "sim0000000011" and s.image.shape == (48, 64)
    assert s.meta["simulator"]["seed"] == 11 and s.meta["simulator"]["mean_radius"] == 6
    assert s.meta["simulator"]["photons"] == 50
    n = simulate_sample(11, (48, 64), density=0.6, objects="nuclei", mean_radius=6)
    assert (n.labels > 0).sum() < (s.labels > 0).sum()
    assert np.all(s.labels[n.labels > 0] > 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seed": -1}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"seed": 0, "density": 0}, "density"),
        ({"seed": 0, "size": (4, 4)}, "size"),
        ({"seed": 0, "objects": "dots"}, "objects"),
        ({"seed": 0, "colour": 3}, "unknown simulator option"),
    ],
)
def test_bad_input(kwargs, match):
    kwargs.setdefault("size", 32)
    with pytest.raises(CellsynthError, match=match):
        simulate_sample(**kwargs)


def test_split_counts():
    assert split_counts(100) == {"train": 80, "val": 10, "test": 10}
    assert split_counts(3, (1, 0, 0)) == {"train": 3}
    assert sum(split_counts(7, (0.5, 0.25, 0.25)).values()) == 7
    with pytest.raises(CellsynthError):
        split_counts(5, (-1, 1))


def test_dataset_roundtrip_and_refusal(tmp_path):
    out = tmp_path / "sim"
    counts = simulate_dataset(out, 3, 1, 0, seed=5, size=32, mean_radius=5, channels=2)
    assert counts == {"train": 3, "val": 1}
    ds = CanonicalDataset(out, "train")
    assert ds.names == ["sim00000", "sim00001", "sim00002"]
    s = ds[1]
    ref = simulate_sample(sample_seed(5, 1), 32, mean_radius=5, channels=2)
    assert np.array_equal(s.image, ref.image) and np.array_equal(s.labels, ref.labels)
    assert s.meta["simulator"]["seed"] == sample_seed(5, 1)
    assert CanonicalDataset(out, "val").names == ["sim00003"]
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(CellsynthError, match="--overwrite"):
        simulate_dataset(out, 1, size=32)
    with pytest.raises(CellsynthError, match="unknown simulator option"):
        simulate_dataset(tmp_path / "bad", 1, size=32, bogus=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_cli(tmp_path):
    from click.testing import CliRunner

    from cellsynth.cli import cli, main

    out = tmp_path / "d"
    res = CliRunner().invoke(
        cli,
        [
            "dataset",
            "simulate",
            "--out",
            str(out),
            "--num",
            "10",
            "--size",
            "32x40",
            "--mean-radius",
            "5",
            "--nuclei",
            "--channels",
            "2",
            "--bit-depth",
            "16",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    ds = CanonicalDataset(out, "train")
    assert len(ds) == 8 and len(CanonicalDataset(out, "test")) == 1
    assert ds[0].image.shape == (32, 40, 2) and ds[0].image.dtype == np.uint16
    with pytest.raises(SystemExit) as exc:
        main(["dataset", "simulate", "--out", str(tmp_path / "e"), "--size", "ab"])
    assert exc.value.code == 2 and not (tmp_path / "e").exists()
