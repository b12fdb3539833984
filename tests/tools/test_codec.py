"""The mask codec: encode/decode round trips, robustness, resizing and the packing geometry."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from cellsynth.errors import CellsynthError
from cellsynth.tools.codec import (
    ENCODINGS,
    crop_windows,
    decode_mask,
    downscale_encode,
    encode_mask,
    instance_distance,
    keep_largest_pieces,
    resize_labels,
    transform_labels,
)


def touching_cells(seed=0, size=64, n=14, radius=9.0):
    """Voronoi cells of random points cut by a disk around each point: many touching cells."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform(6, size - 6, (n, 2))
    yy, xx = np.mgrid[:size, :size]
    d = np.hypot(yy[..., None] - pts[:, 0], xx[..., None] - pts[:, 1])
    nearest = d.argmin(-1)
    labels = np.where(d.min(-1) < radius, nearest + 1, 0).astype(np.uint16)
    return keep_largest_pieces(labels)


def ap50(true, pred):
    """AP at IoU 0.5 (TP / (TP + FP + FN)), by brute force over all pairs."""
    t_ids = [i for i in np.unique(true) if i]
    p_ids = [j for j in np.unique(pred) if j]
    tp = 0
    for i in t_ids:
        a = true == i
        for j in np.unique(pred[a]):
            if j:
                b = pred == j
                if (a & b).sum() / (a | b).sum() > 0.5:
                    tp += 1
    return tp / (len(t_ids) + len(p_ids) - tp)


def same_partition(a, b):
    pairs = set(zip(a.ravel().tolist(), b.ravel().tolist()))
    return len(pairs) == len(np.unique(a)) == len(np.unique(b)) and all(
        (x == 0) == (y == 0) for x, y in pairs
    )


def n_contacts(labels):
    """Number of pairs of different cells that touch (4-neighbours)."""
    pairs = set()
    for a, b in ((labels[1:], labels[:-1]), (labels[:, 1:], labels[:, :-1])):
        m = (a != b) & (a > 0) & (b > 0)
        pairs |= set(zip(np.minimum(a, b)[m].tolist(), np.maximum(a, b)[m].tolist()))
    return len(pairs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fbd_round_trip_exact_on_touching_cells(seed):
    labels = touching_cells(seed)
    assert n_contacts(labels) >= 5
    enc = encode_mask(labels, "fbd")
    assert enc.dtype == np.uint8 and enc.shape == labels.shape + (3,)
    np.testing.assert_array_equal(enc[..., 0] > 0, labels > 0)
    dec = decode_mask(enc, "fbd")
    assert dec.dtype == np.uint16
    np.testing.assert_array_equal(dec > 0, labels > 0)
    # near-exact: one object per cell, each with IoU >= 0.6, < 3 % of the pixels misassigned
    assert dec.max() == len(np.unique(labels)) - 1
    wrong = 0
    for j in range(1, int(dec.max()) + 1):
        ids, counts = np.unique(labels[dec == j], return_counts=True)
        i = ids[np.argmax(counts)]
        iou = counts.max() / ((labels == i) | (dec == j)).sum()
        assert iou >= 0.6
        wrong += counts.sum() - counts.max()
    assert wrong < 0.03 * (labels > 0).sum()


def test_fbd_round_trip_exact_on_separated_shapes():
    # cells that touch only through contacts along straight lines decode exactly
    labels = np.zeros((40, 48), np.uint16)
    labels[2:18, 2:22] = 1
    labels[2:18, 22:46] = 2
    labels[18:38, 2:30] = 3
    labels[22:34, 34:44] = 4
    labels[30:33, 40:47] = 0
    dec = decode_mask(encode_mask(labels, "fbd"), "fbd")
    assert same_partition(dec, labels)


def test_binary_round_trip_merges_touching_cells():
    labels = touching_cells(0)
    enc = encode_mask(labels, "binary")
    assert enc.dtype == np.uint8 and enc.shape == labels.shape
    assert set(np.unique(enc).tolist()) == {0, 255}
    dec = decode_mask(enc, "binary")
    np.testing.assert_array_equal(dec > 0, labels > 0)
    n_true = len(np.unique(labels)) - 1
    assert dec.max() == ndi.label(labels > 0)[1] < n_true
    assert ap50(labels, dec) < 0.6


def test_fbd_channels_meaning():
    labels = np.zeros((20, 30), np.uint16)
    labels[4:16, 2:14] = 1
    labels[4:16, 14:28] = 2  # touches cell 1 along x = 13 | 14
    enc = encode_mask(labels, "fbd", boundary_width=2)
    edge = enc[..., 1] > 0
    # the contact pixels on both sides are boundary; pixels far from the contact are not
    assert edge[6:14, 13].all() and edge[6:14, 14].all()
    assert not edge[:, :10].any() and not edge[:, 18:].any()
    assert not edge[labels == 0].any()
    # distance channel: max 255 inside each cell, 0 outside
    for i in (1, 2):
        assert enc[..., 2][labels == i].max() == 255
    assert not enc[..., 2][labels == 0].any()


def test_instance_distance_against_slow_reference():
    labels = touching_cells(4, size=40, n=6)
    fast = instance_distance(labels)
    yy, xx = np.mgrid[: labels.shape[0], : labels.shape[1]]
    for i in np.unique(labels)[1:]:
        cell = labels == i
        # brute force: distance to the nearest pixel of another cell / background (inside image)
        oy, ox = np.nonzero(~cell)
        cy, cx = np.nonzero(cell)
        d = np.sqrt(((cy[:, None] - oy) ** 2 + (cx[:, None] - ox) ** 2).min(1))
        np.testing.assert_allclose(fast[cy, cx], d / d.max(), atol=1e-6)
    assert not fast[labels == 0].any()


@pytest.mark.parametrize("seed", [0, 1])
def test_fbd_robust_to_blur_and_noise(seed):
    labels = touching_cells(seed)
    enc = encode_mask(labels, "fbd").astype(np.float32) / 255
    rng = np.random.default_rng(seed)
    blurred = ndi.gaussian_filter(enc, sigma=(1.0, 1.0, 0))
    noisy = (blurred + rng.normal(0, 0.05, blurred.shape)).clip(0, 1).astype(np.float32)
    dec = decode_mask(noisy, "fbd", smooth=0.7)
    assert ap50(labels, dec) >= 0.85
    bin_dec = decode_mask(noisy[..., :1].max(-1), "binary", smooth=0.7)
    assert ap50(labels, dec) > ap50(labels, bin_dec) + 0.3


def test_decode_accepts_float_and_channels_first():
    labels = touching_cells(5)
    enc = encode_mask(labels, "fbd")
    ref = decode_mask(enc, "fbd")
    np.testing.assert_array_equal(decode_mask(enc.astype(np.float32) / 255, "fbd"), ref)
    np.testing.assert_array_equal(decode_mask(np.moveaxis(enc, -1, 0), "fbd"), ref)
    with pytest.raises(CellsynthError, match=r"\[0, 1\]"):
        decode_mask(enc.astype(np.float32) / 127.5 - 1, "fbd")
    with pytest.raises(CellsynthError, match="3 channels"):
        decode_mask(enc[..., 0], "fbd")


def test_bad_inputs():
    labels = touching_cells(0)
    with pytest.raises(CellsynthError, match="unknown mask encoding"):
        encode_mask(labels, "rgb")
    with pytest.raises(CellsynthError, match="unknown mask encoding"):
        decode_mask(encode_mask(labels), "sdf")
    with pytest.raises(CellsynthError, match="integer"):
        encode_mask(labels.astype(np.float32) + 0.5)
    with pytest.raises(CellsynthError, match="boolean"):
        encode_mask(labels > 0)
    with pytest.raises(CellsynthError, match=">= 0"):
        encode_mask(labels.astype(np.int32) - 1)
    assert ENCODINGS == {"binary": 1, "fbd": 3}


def test_resize_labels_nearest_keeps_ids():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 50, (37, 53)).astype(np.uint16)
    out = resize_labels(labels, (16, 24))
    assert out.dtype == labels.dtype and out.shape == (16, 24)
    for i in range(16):
        for j in range(24):  # slow reference: sample the source pixel under each centre
            y = min(int((i + 0.5) * 37 / 16), 36)
            x = min(int((j + 0.5) * 53 / 24), 52)
            assert out[i, j] == labels[y, x]
    np.testing.assert_array_equal(resize_labels(labels, labels.shape), labels)
    up = resize_labels(labels, (74, 106))
    np.testing.assert_array_equal(up[::2, ::2], labels)


def test_crop_windows():
    # a 704 x 520 LIVECell image: 5 x 4 non-overlapping 128 tiles, 2 x 2 of 256
    assert len(crop_windows((520, 704), 128, "tiles")) == 20
    assert len(crop_windows((520, 704), 256, "tiles")) == 4
    wins = crop_windows((520, 704), 256, "tiles", stride=128)
    assert len(wins) == 3 * 4
    for y, x, h, w in crop_windows((520, 704), 128, "tiles"):
        assert 0 <= y and y + h <= 520 and 0 <= x and x + w <= 704 and h == w == 128
    assert crop_windows((520, 704), 128, "center-crop") == [(0, 92, 520, 520)]
    assert crop_windows((520, 704), (64, 128), "center-crop") == [(84, 0, 352, 704)]
    assert crop_windows((520, 704), 64, "resize") == [(0, 0, 520, 704)]
    assert crop_windows((100, 100), 128, "tiles") == []
    with pytest.raises(CellsynthError, match="unknown transform"):
        crop_windows((10, 10), 4, "pad")


def test_transform_labels_and_downscale_encode():
    labels = np.zeros((520, 704), np.uint16)
    labels[300:340, 10:60] = 7  # one cell in the bottom-left region only
    parts = transform_labels(labels, 128, "tiles")
    assert len(parts) == 1  # empty tiles are skipped
    assert len(transform_labels(labels, 128, "tiles", keep_empty=True)) == 20
    (y, x, h, w), small = parts[0]
    assert small.max() == 1 and small.shape == (128, 128)
    np.testing.assert_array_equal(small > 0, labels[y : y + h, x : x + w] > 0)
    out = downscale_encode(labels, 64, "fbd", "center-crop")
    assert len(out) == 1
    win, small, enc = out[0]
    np.testing.assert_array_equal(enc, encode_mask(small, "fbd"))
    np.testing.assert_array_equal(small, resize_labels(labels[:, 92:612], 64))


def test_keep_largest_pieces():
    labels = np.zeros((10, 10), np.uint16)
    labels[1:4, 1:4] = 3
    labels[8, 8] = 3  # a crumb of cell 3
    labels[6:9, 1:3] = 5
    out = keep_largest_pieces(labels)
    assert out[8, 8] == 0 and (out == 3).sum() == 9 and (out == 5).sum() == 6


def test_tiny_touching_cells_keep_seeds():
    # 2-pixel-wide cells side by side: every pixel is in contact, each still gets a seed
    labels = np.zeros((8, 16), np.uint16)
    for k in range(5):
        labels[2:6, 2 + 2 * k : 4 + 2 * k] = k + 1
    dec = decode_mask(encode_mask(labels, "fbd"), "fbd")
    assert dec.max() == 5  # binary gives 1
    majority = [np.bincount(labels[dec == j]).argmax() for j in range(1, 6)]
    assert sorted(majority) == [1, 2, 3, 4, 5]


def test_real_dsb_round_trip(dsb2018_dir):
    from cellsynth.benchmark.metrics import average_precision
    from cellsynth.datasets.io import read_labels

    files = sorted((dsb2018_dir / "train" / "masks").glob("*.tif"))[:6]
    true, pred, true128, pred128 = [], [], [], []
    for f in files:
        labels = read_labels(f)
        true.append(labels)
        pred.append(decode_mask(encode_mask(labels, "fbd"), "fbd"))
        for _, small, enc in downscale_encode(labels, 128, "fbd", "center-crop"):
            true128.append(small)
            pred128.append(decode_mask(enc, "fbd"))
    for t, p in ((true, pred), (true128, pred128)):
        _, tp, fp, fn = average_precision(t, p, thresholds=(0.5,))
        assert tp.sum() / (tp + fp + fn).sum() >= 0.98


def test_label_tiles_are_the_packing_tiles_in_order():
    from cellsynth.tools.codec import label_tiles, transform_labels

    rng = np.random.default_rng(3)
    images = []
    for _ in range(2):
        lab = np.zeros((96, 64), np.uint16)
        for k in range(1, 6):
            y, x = rng.integers(0, 88), rng.integers(0, 56)
            lab[y : y + 8, x : x + 8] = k
        images.append(lab)
    images[1][:32] = 0  # an empty top tile, which packing skips
    want = [s for lab in images for _, s in transform_labels(lab, 16, "tiles", 32, 32, False)]
    got = label_tiles(iter(images), 16, 32)
    assert len(got) == len(want) and 0 < len(got) < 2 * 6
    assert all(a.shape == (16, 16) and np.array_equal(a, b) for a, b in zip(got, want))


def test_make_grid_pads_with_the_fill_value():
    from cellsynth.training.grid import make_grid

    tiles = np.arange(3 * 2 * 2, dtype=np.uint8).reshape(3, 2, 2) + 1
    g = make_grid(tiles, cols=2, pad=1, fill=255)
    assert g.shape == (5, 5)
    assert np.array_equal(g[:2, :2], tiles[0]) and np.array_equal(g[:2, 3:], tiles[1])
    assert np.array_equal(g[3:, :2], tiles[2])
    assert (g[2] == 255).all() and (g[:, 2] == 255).all() and (g[3:, 3:] == 255).all()
    assert (make_grid(tiles, cols=2, pad=1)[2] == 0).all()  # default fill stays black
