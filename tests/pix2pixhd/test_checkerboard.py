"""The transposed convolutions' checkerboard filter (``pix2pixhd/checkerboard.py``), against
images made here: a smooth field times a known periodic gain pattern."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from cellsynth.pix2pixhd.checkerboard import remove_checkerboard, upsamples_by_transposed_convs


def smooth_field(shape, seed=0, sigma=6.0):
    """Blobs on a dim background, 0..255 units: what a fluorescence image looks like smoothed."""
    rng = np.random.default_rng(seed)
    f = gaussian_filter(rng.random(shape), sigma)
    f = (f - f.min()) / (f.max() - f.min())
    return 5.0 + 150.0 * f**2


def pattern(period, seed=1, spread=0.1):
    rng = np.random.default_rng(seed)
    return 1.0 + rng.uniform(-spread, spread, (period, period))


def tiled(gain, shape):
    p = gain.shape[0]
    reps = (-(-shape[0] // p), -(-shape[1] // p))
    return np.tile(gain, reps)[: shape[0], : shape[1]]


@pytest.mark.parametrize("shape", [(128, 128), (100, 77)])  # whole periods, and not
def test_a_known_pattern_is_divided_out(shape):
    clean = smooth_field(shape)
    dirty = clean * tiled(pattern(8), shape)
    fixed = remove_checkerboard(dirty, 8)
    assert fixed.shape == shape
    before = np.abs(dirty - clean).mean()
    after = np.abs(fixed - clean).mean()
    assert after < 0.25 * before, (before, after)
    inner = np.s_[8:-8, 8:-8]  # away from the edges, where mirrored pixels blur the estimate
    assert np.abs(fixed - clean)[inner].mean() < 0.16 * np.abs(dirty - clean)[inner].mean()
    # the local brightness is kept: means over whole periods hardly move
    crop = (shape[0] // 8 * 8, shape[1] // 8 * 8)
    blocks = [
        a[: crop[0], : crop[1]].reshape(crop[0] // 8, 8, -1, 8).mean((1, 3)) for a in (clean, fixed)
    ]
    assert np.abs(blocks[0] - blocks[1]).max() < 0.03 * clean.max()


def test_a_pattern_that_varies_over_the_image_is_followed_locally():
    """The gains are estimated per neighbourhood: a pattern three times weaker on the right half
    is removed on both halves, where one gain for the whole image would make the right half
    worse than it was."""
    shape = (96, 192)
    clean = smooth_field(shape, seed=3)
    g = pattern(8, seed=4, spread=0.15)
    strength = np.where(np.arange(shape[1]) < 96, 1.0, 0.3)[None, :]
    dirty = clean * (1.0 + (tiled(g, shape) - 1.0) * strength)
    local, whole = remove_checkerboard(dirty, 8), remove_checkerboard(dirty, 8, window=99)

    def right(x):
        return np.abs(x - clean)[:, 104:184].mean() / np.abs(dirty - clean)[:, 104:184].mean()

    assert np.abs(local - clean)[:, 8:88].mean() < 0.4 * np.abs(dirty - clean)[:, 8:88].mean()
    assert right(local) < 0.5 and right(whole) > 0.9


def test_an_image_without_the_pattern_is_left_nearly_as_it_was():
    """Without a pattern every gain is about 1: the image moves by about 2 % of its mean, the
    share of its pixel noise (std 2) that each 9-pixel gain estimate takes for a pattern; less
    than half of what a +-10 % pattern changes."""
    rng = np.random.default_rng(5)
    clean = smooth_field((128, 128), seed=6) + rng.normal(0, 2.0, (128, 128)).clip(-4, 4)
    change = np.abs(remove_checkerboard(clean, 8) - clean).mean()
    dirty = clean * tiled(pattern(8), clean.shape)
    assert change < 0.025 * clean.mean()
    assert change < 0.5 * np.abs(dirty - clean).mean()


def test_channels_small_images_and_bad_arguments():
    clean = smooth_field((64, 64))
    two = np.stack([clean * tiled(pattern(4, seed=s), clean.shape) for s in (1, 2)])
    fixed = remove_checkerboard(two, 4)
    assert fixed.shape == two.shape
    for c in range(2):
        np.testing.assert_allclose(fixed[c], remove_checkerboard(two[c], 4))
    tiny = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(remove_checkerboard(tiny, 8), tiny)  # under one period
    for bad in (dict(period=1), dict(period=8, window=2), dict(period=8, window=0)):
        with pytest.raises(ValueError):
            remove_checkerboard(clean, **bad)
    with pytest.raises(ValueError, match="shape"):
        remove_checkerboard(np.zeros(10), 8)


def test_counts_the_stride_2_transposed_convolutions():
    nn = pytest.importorskip("torch.nn")
    net = nn.Sequential(
        nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1),
        nn.ConvTranspose2d(4, 4, 3, stride=1, padding=1),  # stride 1: no pattern
        nn.Sequential(nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1)),
    )
    assert upsamples_by_transposed_convs(net) == 2
    assert upsamples_by_transposed_convs(nn.Conv2d(2, 2, 3)) == 0
