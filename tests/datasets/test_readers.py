"""Readers of real-data layouts: COCO/LIVECell, DSB2018, EmbedSeg, Cellpose, plain folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from matplotlib.path import Path as MplPath
from PIL import Image

from cellsynth.datasets.coco import (
    load_coco_samples,
    polygon_pixels,
    resolve_overlaps,
    rle_pixels,
    rle_string_to_counts,
)
from cellsynth.datasets.dsb2018 import gray_or_colour, load_dsb2018_samples
from cellsynth.datasets.folders import (
    cellpose_items,
    embedseg_items,
    folder_pairs,
    normalise_image,
    read_mask,
)
from cellsynth.datasets.importer import assign_splits, collect_items
from cellsynth.datasets.io import read_image, read_labels
from cellsynth.errors import CellsynthError

# ---------------------------------------------------------------- references (slow, obvious)


def reference_resolve(masks, min_pixels, min_fraction):
    """Pixel-by-pixel version of the documented overlap rule (boolean H x W masks)."""
    h, w = masks[0].shape
    cents = [np.argwhere(m).mean(axis=0) if m.any() else None for m in masks]
    areas = [int(m.sum()) for m in masks]

    def assign(active):
        out = np.zeros((h, w), dtype=int)
        for r in range(h):
            for c in range(w):
                best, who = None, 0
                for k in active:
                    if masks[k][r, c]:
                        d = (r - cents[k][0]) ** 2 + (c - cents[k][1]) ** 2
                        if best is None or d < best:
                            best, who = d, k + 1
                out[r, c] = who
        return out

    owner = assign([k for k in range(len(masks)) if areas[k]])
    keep = []
    for k in range(len(masks)):
        got = int((owner == k + 1).sum())
        if areas[k] >= max(min_pixels, 1) and got >= min_pixels and got >= min_fraction * areas[k]:
            keep.append(k)
    owner = assign(keep)
    labels = np.zeros((h, w), dtype=int)
    for new, k in enumerate(keep, start=1):
        labels[owner == k + 1] = new
    return labels, keep


def reference_polygon(xy, shape):
    """Pixels whose centre (c + 0.5, r + 0.5) is inside the polygon (matplotlib)."""
    h, w = shape
    rr, cc = np.mgrid[0:h, 0:w]
    centres = np.stack([cc.ravel() + 0.5, rr.ravel() + 0.5], axis=1)
    path = MplPath(np.asarray(xy, dtype=float).reshape(-1, 2))
    return path.contains_points(centres).reshape(h, w)


def reference_rle(mask):
    """Uncompressed COCO RLE of a boolean mask (column-major runs, background first)."""
    flat = mask.T.ravel()
    counts, current, run = [], False, 0
    for v in flat:
        if bool(v) != current:
            counts.append(run)
            current, run = bool(v), 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def disc(shape, cy, cx, r):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def same_up_to_relabel(a, b):
    """True when label images a and b define the same partition (a bijection of ids)."""
    if a.shape != b.shape or not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


# ---------------------------------------------------------------- overlap rule


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resolve_overlaps_matches_reference(seed):
    rng = np.random.default_rng(seed)
    shape = (24, 28)
    masks = [
        disc(shape, rng.uniform(3, 21), rng.uniform(3, 25), rng.uniform(1, 7)) for _ in range(7)
    ]
    masks.append(np.zeros(shape, bool))  # empty instance
    masks.append(masks[0].copy())  # a duplicate of the first: loses every tie -> dropped
    got, kept, counts = resolve_overlaps([np.flatnonzero(m) for m in masks], shape, 10, 0.5)
    want, want_keep = reference_resolve(masks, 10, 0.5)
    assert kept == want_keep
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, want)
    assert counts["empty"] == 1
    assert 8 not in kept
    assert counts["empty"] + counts["small"] + counts["overlap"] + len(kept) == len(masks)
    claims = np.sum(masks, axis=0)
    assert counts["overlap_pixels"] == int((claims > 1).sum())


def test_resolve_overlaps_ties_go_to_first_and_pixels_are_reassigned():
    shape = (10, 20)
    a = np.zeros(shape, bool)
    a[2:8, 2:10] = True  # centroid col 5.5
    b = np.zeros(shape, bool)
    b[2:8, 6:14] = True  # centroid col 9.5: overlap cols 6..9; cols 6,7 -> a, cols 8,9 -> b
    labels, kept, _ = resolve_overlaps([np.flatnonzero(a), np.flatnonzero(b)], shape, 1, 0.0)
    assert kept == [0, 1]
    assert (labels[2:8, 2:8] == 1).all() and (labels[2:8, 8:14] == 2).all()
    # an exact tie: column 2 is 0.5 away from both centroids (cols 1.5 and 2.5)
    c = np.zeros(shape, bool)
    c[0:4, 0:4] = True
    d = np.zeros(shape, bool)
    d[0:4, 1:5] = True
    labels, kept, _ = resolve_overlaps([np.flatnonzero(c), np.flatnonzero(d)], shape, 1, 0.0)
    # col 1: |1-1.5|=0.5 vs 1.5 -> c; col 2: 0.5 vs 0.5 -> tie -> c (first); col 3: 1.5 vs 0.5 -> d
    assert (labels[0:4, 0:3] == 1).all() and (labels[0:4, 3:5] == 2).all()
    # with the order swapped the tie goes the other way
    labels, kept, _ = resolve_overlaps([np.flatnonzero(d), np.flatnonzero(c)], shape, 1, 0.0)
    assert (labels[0:4, 2:5] == 1).all() and (labels[0:4, 0:2] == 2).all()
    # a dropped instance's pixels go back to the remaining claimant
    big = np.zeros(shape, bool)
    big[0:10, 0:10] = True
    small = np.zeros(shape, bool)
    small[4:7, 4:7] = True  # inside big, 9 pixels < min_pixels: dropped
    labels, kept, counts = resolve_overlaps(
        [np.flatnonzero(big), np.flatnonzero(small)], shape, 10, 0.5
    )
    assert kept == [0] and counts["small"] == 1
    assert (labels[0:10, 0:10] == 1).all()


def test_resolve_overlaps_rejects_bad_limits():
    with pytest.raises(CellsynthError, match="min_fraction"):
        resolve_overlaps([np.array([0])], (2, 2), 1, 1.5)
    with pytest.raises(CellsynthError, match="out of range"):
        resolve_overlaps([np.array([4])], (2, 2), 1, 0.5)


# ---------------------------------------------------------------- rasterisation, RLE


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_polygon_pixels_match_point_in_polygon(seed):
    rng = np.random.default_rng(seed)
    shape = (30, 40)
    n = 7
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = rng.uniform(4, 14, n)
    cx, cy = rng.uniform(10, 30), rng.uniform(8, 22)
    xy = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).ravel()
    got = np.zeros(shape, bool)
    got.ravel()[polygon_pixels([xy.tolist()], shape)] = True
    np.testing.assert_array_equal(got, reference_polygon(xy, shape))


def test_polygon_pixels_rectangle_area_and_parts():
    shape = (10, 10)
    rect = [1, 2, 5, 2, 5, 6, 1, 6]  # x 1..5, y 2..6: 4 x 4 pixels
    got = np.zeros(shape, bool)
    got.ravel()[polygon_pixels([rect], shape)] = True
    want = np.zeros(shape, bool)
    want[2:6, 1:5] = True
    np.testing.assert_array_equal(got, want)
    # union of two parts; a part with fewer than 3 points is ignored; clipped at the border
    two = polygon_pixels([rect, [7, 7, 12, 7, 12, 12, 7, 12], [0, 0, 1, 1]], shape)
    assert two.size == 16 + 9
    with pytest.raises(CellsynthError, match="x, y pairs"):
        polygon_pixels([[1, 2, 3]], shape)


def test_rle_uncompressed_and_compressed():
    rng = np.random.default_rng(0)
    mask = rng.random((13, 17)) > 0.6
    mask[0, 0] = True  # a run of length 0 at the start
    seg = reference_rle(mask)
    np.testing.assert_array_equal(rle_pixels(seg, mask.shape), np.flatnonzero(mask))
    with pytest.raises(CellsynthError, match="size"):
        rle_pixels(seg, (13, 18))
    bad = {"size": [13, 17], "counts": seg["counts"][:-1]}
    with pytest.raises(CellsynthError, match="sum"):
        rle_pixels(bad, mask.shape)
    mask_utils = pytest.importorskip("pycocotools.mask")
    enc = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert rle_string_to_counts(enc["counts"]) == seg["counts"]
    np.testing.assert_array_equal(rle_pixels(enc, mask.shape), np.flatnonzero(mask))
    big = np.zeros((300, 200), np.uint8)
    big[20:250, 30:170] = 1  # long runs: multi-character numbers and negative differences
    big[100:110, :] = 0
    enc = mask_utils.encode(np.asfortranarray(big))
    np.testing.assert_array_equal(rle_pixels(enc, big.shape), np.flatnonzero(big))


# ---------------------------------------------------------------- COCO / LIVECell


def _write_coco(tmp_path, extra=None):
    """Two images (16-bit gray TIFF, RGB PNG) with overlapping polygons, RLE and crowd."""
    img_dir = tmp_path / "imgs"
    img_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    gray16 = rng.integers(0, 65535, (20, 24), dtype=np.uint16)
    rgb = rng.integers(0, 255, (16, 18, 3), dtype=np.uint8)
    tifffile.imwrite(img_dir / "A549_Phase_x_1.tif", gray16)
    Image.fromarray(rgb).save(img_dir / "SHSY5Y_y_2.png")
    sq1 = [2, 2, 10, 2, 10, 10, 2, 10]  # 8x8 at x,y 2..10
    sq2 = [6, 4, 14, 4, 14, 12, 6, 12]  # overlaps sq1
    tiny = [15, 15, 17, 15, 17, 17]  # 2-3 pixels: dropped (small)
    rle_mask = np.zeros((16, 18), bool)
    rle_mask[3:9, 4:12] = True
    rle_mask2 = np.zeros((16, 18), bool)
    rle_mask2[10:15, 1:6] = True
    pycoco = pytest.importorskip("pycocotools.mask")
    comp = pycoco.encode(np.asfortranarray(rle_mask2.astype(np.uint8)))
    comp["counts"] = comp["counts"].decode("ascii")
    doc = {
        "info": {"description": "LIVECell-like test"},
        "categories": [{"id": 1, "name": "cell"}, {"id": 2, "name": "dead"}],
        "images": [
            {"id": 10, "file_name": "A549_Phase_x_1.tif", "height": 20, "width": 24},
            {"id": 11, "file_name": "sub/SHSY5Y_y_2.png", "height": 16, "width": 18},
        ],
        "annotations": [
            {"id": 3, "image_id": 10, "category_id": 2, "segmentation": [sq2], "iscrowd": 0},
            {"id": 1, "image_id": 10, "category_id": 1, "segmentation": [sq1], "iscrowd": 0},
            {"id": 5, "image_id": 10, "category_id": 1, "segmentation": [tiny], "iscrowd": 0},
            {"id": 7, "image_id": 11, "category_id": 1, "segmentation": reference_rle(rle_mask)},
            {"id": 8, "image_id": 11, "category_id": 1, "segmentation": comp},
            {"id": 9, "image_id": 11, "category_id": 1, "segmentation": [sq1], "iscrowd": 1},
        ],
    }
    if extra:
        extra(doc)
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc))
    masks = {
        "A549_Phase_x_1": [reference_polygon(sq1, (20, 24)), reference_polygon(sq2, (20, 24))],
        "SHSY5Y_y_2": [rle_mask, rle_mask2],
    }
    return path, img_dir, {"A549_Phase_x_1": gray16, "SHSY5Y_y_2": rgb}, masks


def test_load_coco_samples(tmp_path):
    path, img_dir, images, masks = _write_coco(tmp_path)
    samples, stats = load_coco_samples(path, img_dir)
    assert [s.name for s in samples] == ["A549_Phase_x_1", "SHSY5Y_y_2"]
    for s in samples:
        np.testing.assert_array_equal(s.image, images[s.name])
        assert s.image.dtype == images[s.name].dtype
        want, keep = reference_resolve(masks[s.name], 10, 0.5)
        np.testing.assert_array_equal(s.labels, want)
        assert s.labels.dtype == np.uint16
    a, b = samples
    assert a.meta["cell_type"] == "A549" and b.meta["cell_type"] == "SHSY5Y"
    # annotation id order: id 1 (sq1) is label 1, id 3 (sq2) label 2
    assert a.meta["annotation_ids"] == [1, 3]
    assert a.meta["instance_categories"] == ["cell", "dead"]
    assert a.meta["categories"] == ["cell", "dead"]
    assert stats["annotations"] == 6
    assert stats["instances"] == 4
    assert stats["dropped_small"] == 1 and stats["dropped_crowd"] == 1
    assert stats["instances"] + stats["dropped"] == stats["annotations"]
    samples2, _ = load_coco_samples(path, img_dir, cell_type=False, min_pixels=1)
    assert "cell_type" not in samples2[0].meta
    assert samples2[0].labels.max() == 3  # the tiny polygon is kept now


def test_coco_errors(tmp_path):
    path, img_dir, _, _ = _write_coco(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(CellsynthError, match=r"bad\.json.*'annotations'"):
        load_coco_samples(bad, img_dir)
    bad.write_text("{not json")
    with pytest.raises(CellsynthError, match="not valid JSON"):
        load_coco_samples(bad, img_dir)
    (img_dir / "SHSY5Y_y_2.png").unlink()
    with pytest.raises(CellsynthError, match=r"SHSY5Y_y_2\.png.*--skip-missing"):
        load_coco_samples(path, img_dir)
    samples, stats = load_coco_samples(path, img_dir, skip_missing=True)
    assert [s.name for s in samples] == ["A549_Phase_x_1"] and stats["missing_images"] == 1

    def wrong_size(doc):
        doc["images"][0]["height"] = 21

    path2, img_dir2, _, _ = _write_coco(tmp_path / "two", wrong_size)
    with pytest.raises(CellsynthError, match="A549_Phase_x_1.tif: image is 20x24"):
        load_coco_samples(path2, img_dir2)


def test_coco_annotations_as_dict(tmp_path):
    def as_dict(doc):
        doc["annotations"] = {str(a["id"]): a for a in doc["annotations"]}

    path, img_dir, _, masks = _write_coco(tmp_path, as_dict)
    samples, stats = load_coco_samples(path, img_dir)
    assert stats["instances"] == 4


def test_livecell_val(livecell_dir):
    samples, stats = load_coco_samples(
        livecell_dir / "livecell_coco_val.json", livecell_dir / "images"
    )
    assert len(samples) == 5
    assert stats["annotations"] == 1243
    assert stats["instances"] + stats["dropped"] == 1243
    assert sum(int(s.labels.max()) for s in samples) == stats["instances"]
    for s in samples:
        assert s.meta["cell_type"] == s.name.split("_")[0]
        assert s.meta["categories"] == ["cell"]
        np.testing.assert_array_equal(
            s.image, read_image(livecell_dir / "images" / f"{s.name}.tif")
        )
        ids = np.unique(s.labels)
        assert ids[0] == 0 and ids[-1] == len(ids) - 1  # sequential
        assert len(s.meta["annotation_ids"]) == ids[-1]
    print(f"LIVECell val: imported {stats['instances']}, dropped {stats['dropped']}, {stats}")


# ---------------------------------------------------------------- DSB2018 / BBBC038


def _write_dsb(root, name, image, nuclei):
    (root / name / "images").mkdir(parents=True)
    (root / name / "masks").mkdir()
    Image.fromarray(image).save(root / name / "images" / f"{name}.png")
    for i, m in enumerate(nuclei):
        Image.fromarray((m * 255).astype(np.uint8)).save(root / name / "masks" / f"m{i:03d}.png")


def test_dsb2018_reader(tmp_path):
    rng = np.random.default_rng(0)
    shape = (20, 22)
    gray = rng.integers(0, 255, shape, dtype=np.uint8)
    rgba_gray = np.dstack([gray, gray, gray, np.full(shape, 255, np.uint8)])
    colour = rng.integers(0, 255, shape + (3,), dtype=np.uint8)
    rgba_colour = np.dstack([colour, np.full(shape, 255, np.uint8)])
    nuclei = [disc(shape, 6, 6, 4), disc(shape, 8, 11, 4), disc(shape, 15, 16, 3)]
    _write_dsb(tmp_path, "aaa", rgba_gray, nuclei)
    _write_dsb(tmp_path, "bbb", rgba_colour, nuclei[:1])
    samples, stats = load_dsb2018_samples(tmp_path)
    a, b = samples
    assert a.name == "aaa" and a.image.shape == shape
    np.testing.assert_array_equal(a.image, gray)
    np.testing.assert_array_equal(b.image, colour)
    want, _ = reference_resolve(nuclei, 10, 0.5)
    np.testing.assert_array_equal(a.labels, want)
    assert stats["annotations"] == 4 and stats["instances"] + stats["dropped"] == 4
    # a test folder without masks
    (tmp_path / "ccc" / "images").mkdir(parents=True)
    Image.fromarray(gray).save(tmp_path / "ccc" / "images" / "ccc.png")
    with pytest.raises(CellsynthError, match="ccc: no masks"):
        load_dsb2018_samples(tmp_path)
    samples, stats = load_dsb2018_samples(tmp_path, skip_missing=True)
    assert len(samples) == 2 and stats["missing_images"] == 1
    # a nucleus mask of the wrong size
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "aaa" / "masks" / "z.png")
    with pytest.raises(CellsynthError, match=r"z\.png: mask is 5x5"):
        load_dsb2018_samples(tmp_path, skip_missing=True)


def test_gray_or_colour():
    x = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert gray_or_colour(x).shape == (2, 3, 3)
    g = np.dstack([x[..., 0]] * 3 + [x[..., 1]])
    np.testing.assert_array_equal(gray_or_colour(g), x[..., 0])


def test_dsb2018_round_trip_from_real_data(dsb2018_dir, tmp_path):
    """Canonical DSB2018 samples -> BBBC038 per-nucleus PNGs -> dsb2018 reader: same labels."""
    names = sorted(p.stem for p in (dsb2018_dir / "train" / "images").glob("*.tif"))[:3]
    originals = {}
    for name in names:
        image = read_image(dsb2018_dir / "train" / "images" / f"{name}.tif")
        labels = read_labels(dsb2018_dir / "train" / "masks" / f"{name}.tif")
        originals[name] = (image, labels)
        rgba = np.dstack([image, image, image, np.full(image.shape, 255, np.uint8)])
        ids = [i for i in np.unique(labels) if i]
        _write_dsb(tmp_path, name, rgba, [labels == i for i in ids[::-1]])
    samples, stats = load_dsb2018_samples(tmp_path, min_pixels=0, min_fraction=0.0)
    assert [s.name for s in samples] == names
    for s in samples:
        image, labels = originals[s.name]
        np.testing.assert_array_equal(s.image, image)
        assert same_up_to_relabel(s.labels, labels)
        assert s.labels.max() == len(np.unique(labels)) - 1
    assert stats["dropped"] == 0 and stats["overlap_pixels"] == 0


# ---------------------------------------------------------------- pair layouts


def _pair(folder, stem, image, labels, img_ext=".tif", mask_stem=None, mask_ext=".tif"):
    """Write ``folder/stem.img_ext`` and ``folder/mask_stem.mask_ext``."""
    folder.mkdir(parents=True, exist_ok=True)
    for path, arr in (
        (folder / f"{stem}{img_ext}", image),
        (folder / f"{mask_stem}{mask_ext}", labels),
    ):
        if path.suffix == ".tif":
            tifffile.imwrite(path, arr)
        else:
            Image.fromarray(arr).save(path)


def _labels(shape):
    """Three separate blocks with non-sequential ids (shape at least 10 x 12)."""
    h, w = shape
    out = np.zeros(shape, np.uint16)
    out[1:4, 1:4] = 10
    out[1:4, w - 4 : w - 1] = 30
    out[h - 4 : h - 1, 3:7] = 20
    return out


def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, arr)


def test_embedseg_layout(tmp_path):
    img16 = np.random.default_rng(0).integers(0, 65535, (16, 16), dtype=np.uint16)
    lab = _labels((16, 16))
    for split in ("train", "test"):
        _write(tmp_path / split / "images" / f"{split}_a.tif", img16)
        _write(tmp_path / split / "masks" / f"{split}_a.tif", lab)
    items = embedseg_items(tmp_path)
    assert [(it.name, it.split) for it in items] == [("train_a", "train"), ("test_a", "test")]
    s = items[0].load()
    np.testing.assert_array_equal(s.image, img16)
    assert same_up_to_relabel(s.labels, lab) and s.labels.max() == 3
    np.testing.assert_array_equal(np.unique(s.labels), [0, 1, 2, 3])
    single = embedseg_items(tmp_path / "train")
    assert single[0].split is None
    with pytest.raises(CellsynthError, match="not an EmbedSeg"):
        embedseg_items(tmp_path / "train" / "images")


def test_cellpose_naming(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, (12, 14, 3), dtype=np.uint8)
    lab = _labels((12, 14))
    _pair(tmp_path, "x1", rgb, lab.astype(np.uint8), ".png", "x1_masks", ".png")
    _pair(tmp_path, "x2", rgb[..., 0], lab, ".tif", "x2_masks", ".tif")
    Image.fromarray(lab.astype(np.uint8)).save(tmp_path / "x1_cp_masks.png")  # prediction
    tifffile.imwrite(tmp_path / "x1_flows.tif", rgb)  # Cellpose output
    items = cellpose_items(tmp_path)
    assert [it.name for it in items] == ["x1", "x2"]
    a, b = (it.load() for it in items)
    np.testing.assert_array_equal(a.image, rgb)
    np.testing.assert_array_equal(b.image, rgb[..., 0])
    assert same_up_to_relabel(a.labels, lab) and same_up_to_relabel(b.labels, lab)
    # Cellpose training data naming: X_img.png + X_masks.png
    cp = tmp_path / "cp"
    _pair(cp, "000_img", rgb, lab.astype(np.uint8), ".png", "000_masks", ".png")
    assert [it.name for it in cellpose_items(cp, img_filter="_img")] == ["000"]
    # an image without a mask
    tifffile.imwrite(tmp_path / "x3.tif", rgb)
    with pytest.raises(CellsynthError, match=r"images without a mask: x3\.tif"):
        cellpose_items(tmp_path)
    assert len(cellpose_items(tmp_path, skip_missing=True)) == 2


def test_folder_pairs_and_bad_masks(tmp_path):
    img = np.random.default_rng(2).integers(0, 255, (10, 12), dtype=np.uint8)
    lab = _labels((10, 12))
    _write(tmp_path / "i" / "p.tif", img)
    _write(tmp_path / "i" / "q.tif", img)
    _write(tmp_path / "m" / "p_mask.tif", lab)
    _write(tmp_path / "m" / "q.tif", lab)
    items = folder_pairs(tmp_path / "i", tmp_path / "m")
    assert [it.name for it in items] == ["p", "q"]
    assert same_up_to_relabel(items[0].load().labels, lab)
    cases = {
        "float": (lab.astype(np.float32) + 0.5, "integers"),
        "negative": (lab.astype(np.int16) - 5, ">= 0"),
        "size": (lab[:-1], "mask is 9x12"),
        "binary": ((lab > 0).astype(np.uint8) * 255, "--label-components"),
    }
    for bad, message in cases.values():
        tifffile.imwrite(tmp_path / "m" / "q.tif", bad)
        with pytest.raises(CellsynthError, match=message):
            folder_pairs(tmp_path / "i", tmp_path / "m")[1].load()
    items = folder_pairs(tmp_path / "i", tmp_path / "m", label_components=True)
    assert same_up_to_relabel(items[1].load().labels, lab)
    data = (tmp_path / "m" / "p_mask.tif").read_bytes()
    (tmp_path / "m" / "q.tif").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CellsynthError, match=r"q\.tif: "):
        folder_pairs(tmp_path / "i", tmp_path / "m")[1].load()
    (tmp_path / "m" / "q.tif").rename(tmp_path / "m" / "zz.tif")
    with pytest.raises(CellsynthError, match="unpaired"):
        folder_pairs(tmp_path / "i", tmp_path / "m")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CellsynthError, match="no images found"):
        folder_pairs(empty, tmp_path / "m")


def test_two_files_or_samples_with_one_name_are_refused(tmp_path):
    img = np.zeros((10, 12), np.uint8)
    _write(tmp_path / "i" / "p.tif", img)
    _write(tmp_path / "i" / "p.png", img)
    _write(tmp_path / "m" / "p.tif", _labels((10, 12)))
    with pytest.raises(CellsynthError, match=r"two images share the name 'p' \(p\.png, p\.tif\)"):
        folder_pairs(tmp_path / "i", tmp_path / "m")
    for split in ("train", "test"):
        _write(tmp_path / "e" / split / "images" / "s.tif", img)
        _write(tmp_path / "e" / split / "masks" / "s.tif", _labels((10, 12)))
    with pytest.raises(CellsynthError, match="two samples are named 's'"):
        collect_items("embedseg", [tmp_path / "e"])


def test_read_mask_channels_and_normalise_image(tmp_path):
    lab = _labels((10, 12)).astype(np.uint8)
    Image.fromarray(np.dstack([lab] * 3)).save(tmp_path / "rgb_same.png")
    assert same_up_to_relabel(read_mask(tmp_path / "rgb_same.png"), lab)
    Image.fromarray(np.dstack([lab, lab, lab // 2])).save(tmp_path / "rgb_diff.png")
    with pytest.raises(CellsynthError, match="different channels"):
        read_mask(tmp_path / "rgb_diff.png")
    assert normalise_image(np.array([[1, 70000 - 5000]], np.int32), "x").dtype == np.uint16
    with pytest.raises(CellsynthError, match="does not fit uint16"):
        normalise_image(np.array([[-1, 2]], np.int32), "x")
    assert normalise_image(np.zeros((2, 2)), "x").dtype == np.float32
    with pytest.raises(CellsynthError, match="NaN"):
        normalise_image(np.full((2, 2), np.nan), "x")


# ---------------------------------------------------------------- split assignment


def test_assign_splits_deterministic_and_counts():
    names = [f"n{i:02d}" for i in range(23)]
    a = assign_splits(names, (0.8, 0.1, 0.1), seed=3)
    assert a == assign_splits(list(reversed(names)), (0.8, 0.1, 0.1), seed=3)
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 19, "val": 2, "test": 2}  # 18.4, 2.3, 2.3: largest rest is train
    order = np.random.default_rng(3).permutation(23)
    assert {names[i] for i in order[:19]} == {n for n, s in a.items() if s == "train"}
    five = assign_splits(names[:5], (0.8, 0.1, 0.1), 0)
    assert sorted(five.values()) == ["train"] * 4 + ["val"]  # 4, 0.5, 0.5 -> tie goes to val
    assert sorted(assign_splits(names[:5], (1, 0, 0), 0).values()) == ["train"] * 5
    with pytest.raises(CellsynthError, match="sum to 1"):
        assign_splits(names, (0.5, 0.1, 0.1))
