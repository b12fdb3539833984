"""threshold() and label_components() against direct scikit-image / numpy computations."""

import numpy as np
import pytest
from skimage import filters, measure

from cellsynth.errors import CellsynthError
from cellsynth.tools.threshold import label_components, threshold, threshold_value


def _image(dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(40, 10, (48, 48))
    img[10:25, 8:30] += 120
    img[30:44, 30:46] += 80
    img = img.clip(0, 255)
    return img.astype(dtype) if dtype != np.float32 else (img / 255).astype(np.float32)


@pytest.mark.parametrize(
    "method,ref",
    [
        ("otsu", filters.threshold_otsu),
        ("li", filters.threshold_li),
        ("triangle", filters.threshold_triangle),
        ("mean", np.mean),
    ],
)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_global_methods_match_reference(method, ref, dtype):
    img = _image(dtype)
    t = float(ref(img.astype(np.float64)))
    assert threshold_value(img, method) == pytest.approx(t, rel=1e-6)
    out = threshold(img, method)
    assert out.dtype == bool and out.shape == img.shape
    np.testing.assert_array_equal(out, img.astype(np.float64) > t)
    # offset lowers the threshold
    assert threshold(img, method, offset=5).sum() >= out.sum()


def test_fixed_and_defaults():
    img = _image(np.uint8)
    np.testing.assert_array_equal(threshold(img, "fixed", value=100), img > 100)
    np.testing.assert_array_equal(threshold(img, "fixed"), img > 127.5)
    f = _image(np.float32)
    np.testing.assert_array_equal(threshold(f, "fixed"), f > 0.5)
    b = img > 90
    np.testing.assert_array_equal(threshold(b, "fixed"), b)


def test_local_matches_skimage():
    img = _image(np.float32)
    ref = img > filters.threshold_local(img.astype(np.float64), 15, method="gaussian", offset=0.01)
    np.testing.assert_array_equal(threshold(img, "local", block_size=15, offset=0.01), ref)
    with pytest.raises(CellsynthError, match="odd"):
        threshold(img, "local", block_size=16)


def test_channels_and_errors():
    img = _image(np.uint8)
    rgb = np.stack([img, 255 - img, np.zeros_like(img)], axis=-1)
    np.testing.assert_array_equal(threshold(rgb, "otsu"), threshold(img, "otsu"))
    np.testing.assert_array_equal(threshold(rgb, "otsu", channel=1), threshold(255 - img, "otsu"))
    assert not threshold(np.full((8, 8), 7, np.uint8), "otsu").any()  # constant: nothing above
    with pytest.raises(CellsynthError, match="unknown threshold method"):
        threshold(img, "median")
    with pytest.raises(CellsynthError, match="channel"):
        threshold(rgb, channel=3)
    with pytest.raises(CellsynthError, match="NaN"):
        threshold(np.array([[0.0, np.nan]]))
    with pytest.raises(CellsynthError, match="H x W"):
        threshold(np.zeros((2, 3, 4, 5)))


@pytest.mark.parametrize("connectivity", [1, 2])
def test_label_components_partition_matches_skimage(connectivity):
    rng = np.random.default_rng(3)
    binary = rng.random((40, 40)) > 0.6
    ours = label_components(binary, connectivity)
    ref = measure.label(binary, connectivity=connectivity)
    assert ours.dtype == np.uint16 and ours.max() == ref.max()
    # same partition: a one-to-one map between ids
    pairs = set(zip(ours[binary].tolist(), ref[binary].tolist()))
    assert len(pairs) == ref.max() == len({a for a, _ in pairs}) == len({b for _, b in pairs})
    assert not ours[~binary].any()


def test_label_components_min_size():
    binary = np.zeros((20, 20), bool)
    binary[1:3, 1:3] = True  # 4 px
    binary[10:15, 10:15] = True  # 25 px
    binary[0, 19] = True  # 1 px
    out = label_components(binary, min_size=4)
    assert out.max() == 2
    assert sorted(np.bincount(out.ravel())[1:].tolist()) == [4, 25]
    with pytest.raises(CellsynthError, match="connectivity"):
        label_components(binary, connectivity=3)
