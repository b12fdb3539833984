"""cellsynth dataset pack: masks zip and pairs folder round trips, readers, bad input."""

import json
import zipfile

import numpy as np
import pytest
import tifffile

from cellsynth.datasets.canonical import Sample, write_dataset
from cellsynth.datasets.io import read_image, write_image
from cellsynth.datasets.pack import (
    MaskZipDataset,
    PairsDataset,
    check_resolution,
    pack_masks,
    pack_pairs,
    parse_repeat_crowded,
    parse_size,
    repeats,
    resize_image,
)
from cellsynth.errors import CellsynthError
from cellsynth.tools.codec import decode_mask, encode_mask, transform_labels


def cells(seed, shape=(64, 80), n=10, radius=8.0):
    """Touching disk-cut Voronoi cells."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform(4, np.array(shape) - 4, (n, 2))
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d = np.hypot(yy[..., None] - pts[:, 0], xx[..., None] - pts[:, 1])
    return np.where(d.min(-1) < radius, d.argmin(-1) + 1, 0).astype(np.uint16)


def sample(name, seed, cell_type, shape=(64, 80), channels=1):
    rng = np.random.default_rng(seed)
    labels = cells(seed, shape)
    image = (rng.random(shape + ((channels,) if channels > 1 else ())) * 200).astype(np.uint8)
    return Sample(name, image, labels, {"cell_type": cell_type})


@pytest.fixture
def canon(tmp_path):
    root = tmp_path / "canon"
    write_dataset(
        root,
        {
            "train": [sample("a", 0, "MCF7"), sample("b", 1, "BT474"), sample("c", 2, "MCF7")],
            "test": [sample("d", 3, "BT474")],
        },
    )
    return root


@pytest.mark.parametrize("encoding", ["fbd", "binary"])
def test_pack_masks_round_trip(canon, tmp_path, encoding):
    dest = tmp_path / "masks.zip"
    summary = pack_masks(canon, dest, 32, encoding=encoding, cond="cell_type")
    assert summary["items"] == 3 and summary["classes"] == ["BT474", "MCF7"]
    ds = MaskZipDataset(dest)
    channels = 3 if encoding == "fbd" else 1
    assert len(ds) == 3 and ds.resolution == 32 and ds.channels == channels
    assert ds.encoding == encoding and ds.has_labels and ds.num_classes == ds.label_dim == 2
    assert ds.names == [f"00000/img{i:08d}.png" for i in range(3)]
    with zipfile.ZipFile(dest) as zf:
        labels_doc = json.loads(zf.read("dataset.json"))
        meta = json.loads(zf.read("cellsynth.json"))
    assert labels_doc["labels"] == [[ds.names[0], 1], [ds.names[1], 0], [ds.names[2], 1]]
    assert meta["encoding"] == encoding and meta["channels"] == channels
    assert meta["resolution"] == 32 and meta["classes"] == ["BT474", "MCF7"]
    for i, (name, seed) in enumerate([("a", 0), ("b", 1), ("c", 2)]):
        arr, label = ds[i]
        assert arr.dtype == np.uint8 and arr.shape == (channels, 32, 32)
        assert label == (0 if name == "b" else 1)
        ((_, small),) = transform_labels(cells(seed), 32, "center-crop")
        expect = encode_mask(small, encoding)
        expect = expect[None] if encoding == "binary" else np.moveaxis(expect, -1, 0)
        np.testing.assert_array_equal(arr, expect)
        if encoding == "fbd":  # the packed mask decodes back to the packed labels
            dec = decode_mask(arr, "fbd")
            assert dec.max() == small.max()
            np.testing.assert_array_equal(dec > 0, small > 0)


def _disks(shape, radius, step):
    """Separate disks of one radius on a grid (an independent size per image)."""
    lab = np.zeros(shape, np.uint16)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    k = 0
    for cy in range(radius + 1, shape[0] - radius, step):
        for cx in range(radius + 1, shape[1] - radius, step):
            k += 1
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius * radius] = k
    return lab


def test_pack_masks_nucleus_size_classes(tmp_path):
    from cellsynth.datasets.pack import size_class

    # disk areas: r=5 -> 81 px, r=12 -> 441 px, r=18 -> 1,009 px (bins at 250 and 700 px)
    shape = (128, 128)
    labs = {"s": _disks(shape, 5, 14), "m": _disks(shape, 12, 30), "l": _disks(shape, 18, 40)}
    assert [size_class(labs[k]) for k in "sml"] == ["small", "medium", "large"]
    assert size_class(np.zeros(shape, np.uint16)) == "small"
    root = tmp_path / "canon"
    img = np.zeros(shape, np.uint8)
    # "m2" has a metadata value of its own: the metadata wins over the derived class
    samples = [Sample(k, img, labs[k], {}) for k in "sml"]
    samples.append(Sample("m2", img, labs["s"], {"nucleus_size": "medium"}))
    write_dataset(root, {"train": samples})
    dest = tmp_path / "m.zip"
    summary = pack_masks(root, dest, 32, cond="nucleus_size")
    assert summary["classes"] == ["large", "medium", "small"]
    ds = MaskZipDataset(dest)
    assert ds.labels.tolist() == [0, 1, 1, 2]  # samples in name order: l, m, m2, s
    # a set with only some of the size classes keeps the indices of all three
    write_dataset(tmp_path / "few", {"train": [Sample("s", img, labs["s"], {})]})
    few = pack_masks(tmp_path / "few", tmp_path / "few.zip", 32, cond="nucleus_size")
    assert few["classes"] == ["large", "medium", "small"]
    assert MaskZipDataset(tmp_path / "few.zip").labels.tolist() == [2]
    with pytest.raises(CellsynthError, match="nucleus_size derives"):
        pack_masks(root, tmp_path / "x.zip", 32, cond="cell_type")


def test_pack_masks_unconditional_split_and_max(canon, tmp_path):
    dest = tmp_path / "m.zip"
    pack_masks(canon, dest, 16, encoding="binary", split="test")
    ds = MaskZipDataset(dest)
    assert len(ds) == 1 and not ds.has_labels and ds.num_classes == 0 and ds[0][1] == 0
    pack_masks(canon / "train", dest, 16, max_images=2, overwrite=True)
    assert len(MaskZipDataset(dest)) == 2
    with pytest.raises(CellsynthError, match="already exists"):
        pack_masks(canon, dest, 16)


def test_pack_pairs_round_trip(canon, tmp_path):
    dest = tmp_path / "pairs"
    summary = pack_pairs(canon, dest, "32x40", cond="cell_type")
    assert summary["splits"] == {"train": 3, "test": 1} and summary["label_nc"] == 3
    meta = json.loads((dest / "pairs.json").read_text())
    assert meta["size"] == [32, 40] and meta["channels"] == 1 and meta["label_nc"] == 3
    train = PairsDataset(dest, "train")
    assert train.names == ["a", "b", "c"] and len(PairsDataset(dest, "test")) == 1
    for i, (seed, cls) in enumerate([(0, 2), (1, 1), (2, 2)]):
        item = train[i]
        (y, x, h, w), small = transform_labels(cells(seed), (32, 40), "center-crop")[0]
        np.testing.assert_array_equal(item["inst"], small)
        assert item["inst"].dtype == np.uint16 and item["label"].dtype == np.uint8
        np.testing.assert_array_equal(item["label"], np.where(small > 0, cls, 0))
        img = sample("x", seed, "").image
        np.testing.assert_array_equal(
            item["image"], resize_image(img[y : y + h, x : x + w], (32, 40))
        )
        assert item["image"].dtype == np.uint8


def test_resize_image_area_average():
    img = np.arange(16, dtype=np.uint16).reshape(4, 4) * 100
    out = resize_image(img, 2)
    assert out.dtype == np.uint16 and out.shape == (2, 2)
    # anti-aliased bilinear shrink stays close to the 2x2 block means
    blocks = img.reshape(2, 2, 2, 2).mean(axis=(1, 3))
    assert np.abs(out.astype(float) - blocks).max() < 200
    rgb = np.zeros((10, 12, 3), np.uint8)
    assert resize_image(rgb, (5, 6)).shape == (5, 6, 3)
    assert parse_size("256x384") == (256, 384) and parse_size(64) == (64, 64)


def test_tiles_of_a_livecell_sized_image(tmp_path):
    labels = np.zeros((520, 704), np.uint16)
    k = 0
    for y in range(10, 510, 30):
        for x in range(10, 690, 30):
            k += 1
            labels[y : y + 20, x : x + 20] = k
    root = tmp_path / "lc"
    image = np.zeros((520, 704), np.uint8)
    write_dataset(root, {"val": [Sample("big", image, labels, {"cell_type": "A172"})]})
    s = pack_masks(root, tmp_path / "t.zip", 128, transform="tiles", encoding="binary")
    assert s["items"] == 20 and len(MaskZipDataset(tmp_path / "t.zip")) == 20
    s = pack_masks(
        root, tmp_path / "t2.zip", 64, transform="tiles", tile=256, stride=128, encoding="binary"
    )
    assert s["items"] == 3 * 4
    p = pack_pairs(root, tmp_path / "tp", 128, transform="tiles")
    assert p["splits"] == {"val": 20}
    assert len(PairsDataset(tmp_path / "tp", "val")) == 20
    # empty tiles are skipped unless asked
    labels[:] = 0
    labels[300:340, 10:60] = 1
    write_dataset(root, {"val": [Sample("big", image, labels)]}, overwrite=True)
    assert pack_masks(root, tmp_path / "t3.zip", 128, transform="tiles")["items"] == 1
    s = pack_masks(root, tmp_path / "t4.zip", 128, transform="tiles", keep_empty=True)
    assert s["items"] == 20


def test_repeat_crowded_packs_crowded_tiles_again(tmp_path):
    # one 64x128 image, two 64x64 tiles: the left holds 6 squares, the right 2
    labels = np.zeros((64, 128), np.uint16)
    for k, (y, x) in enumerate([(4, 4), (4, 24), (4, 44), (30, 4), (30, 24), (30, 44)]):
        labels[y : y + 12, x : x + 12] = k + 1
    labels[10:30, 80:100] = 7
    labels[40:60, 100:120] = 8
    root = tmp_path / "crowd"
    write_dataset(root, {"train": [Sample("im", np.zeros((64, 128), np.uint8), labels)]})
    plain = pack_masks(root, tmp_path / "plain.zip", 32, transform="tiles", tile=64)
    assert plain["items"] == 2 and plain["repeated"] == 0
    s = pack_masks(
        root, tmp_path / "rep.zip", 32, transform="tiles", tile=64, repeat_crowded="6:3,2:1"
    )
    assert s["items"] == 4 and s["repeated"] == 2
    ds = MaskZipDataset(tmp_path / "rep.zip")
    counts = [int(decode_mask(ds[i][0].transpose(1, 2, 0), "fbd").max()) for i in range(4)]
    assert counts == [6, 6, 6, 2]  # the crowded tile three times in a row, then the other
    assert all(np.array_equal(ds[0][0], ds[i][0]) for i in (1, 2))
    with zipfile.ZipFile(tmp_path / "rep.zip") as zf:
        meta = json.loads(zf.read("cellsynth.json"))
    assert meta["repeat_crowded"] == [[6, 3], [2, 1]]
    assert meta["items"] == ["train/im_y0000x0000", "train/im_y0000x0000#2"] + [
        "train/im_y0000x0000#3",
        "train/im_y0000x0064",
    ]
    # max_images counts the copies
    capped = pack_masks(
        root, tmp_path / "m.zip", 32, "fbd", "tiles", 2, tile=64, repeat_crowded="6:3"
    )
    assert capped["items"] == 2


def test_parse_repeat_crowded_and_repeats():
    assert parse_repeat_crowded("10:2,14:4") == [(14, 4), (10, 2)]
    assert parse_repeat_crowded(None) == [] and parse_repeat_crowded([[3, 2]]) == [(3, 2)]
    lab = np.zeros((8, 8), np.uint16)
    lab[:2, :2], lab[4:, 4:], lab[0, 7] = 5, 9, 2  # 3 objects, ids not sequential
    assert repeats(lab, [(4, 5), (3, 2)]) == 2 and repeats(lab, [(4, 5)]) == 1
    assert repeats(lab, []) == 1
    for bad in ("14", "14:0", "0:2", "a:b", "14:4,14:2", "1:2:3", [[1.5, 2]], [[True, 2]], [3]):
        with pytest.raises(CellsynthError, match="repeat-crowded"):
            parse_repeat_crowded(bad)


def _float_mask_dataset(tmp_path):
    root = tmp_path / "floaty" / "train"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    tifffile.imwrite(root / "images" / "x.tif", np.zeros((16, 16), np.uint8))
    tifffile.imwrite(root / "masks" / "x.tif", np.random.default_rng(0).random((16, 16)))
    return root.parent


@pytest.mark.parametrize(
    "case,match",
    [
        ("resolution", "power of two"),
        ("missing", "no such source"),
        ("empty", "not a canonical dataset"),
        ("encoding", "unknown mask encoding"),
        ("float", "integers"),
        ("cond", "cell_line"),
    ],
)
def test_bad_input_leaves_nothing(canon, tmp_path, case, match):
    dest = tmp_path / "out" / "masks.zip"
    (tmp_path / "empty").mkdir()
    source = {"missing": tmp_path / "nope", "empty": tmp_path / "empty"}.get(case, canon)
    if case == "float":
        source = _float_mask_dataset(tmp_path)
    kwargs = {
        "resolution": 48 if case == "resolution" else 16,
        "encoding": "rgb" if case == "encoding" else "fbd",
        "cond": "cell_line" if case == "cond" else None,
    }
    with pytest.raises(CellsynthError, match=match):
        pack_masks(source, dest, **kwargs)
    assert not dest.exists()
    assert not list(tmp_path.glob("out/*"))  # no temporary files either
    if case in ("missing", "empty", "float", "cond"):
        pdest = tmp_path / "pairs"
        with pytest.raises(CellsynthError, match=match):
            pack_pairs(source, pdest, 16, cond=kwargs["cond"])
        assert not pdest.exists() and not list(tmp_path.glob(".pairs*"))


def _pack_cli(kind, source, dest, *extra):
    """``cellsynth dataset pack --kind KIND --source SOURCE --dest DEST EXTRA...``, in-process."""
    from cellsynth.cli import main

    main(["dataset", "pack", "--kind", kind, "--source", str(source), "--dest", str(dest), *extra])


def test_cli_pack_and_errors(canon, tmp_path, capsys):
    dest = tmp_path / "cli.zip"
    _pack_cli("masks", canon, dest, "--resolution", "16", "--no-progress")
    out = json.loads(capsys.readouterr().out)
    assert out["items"] == 3 and len(MaskZipDataset(dest)) == 3
    bad = tmp_path / "bad.zip"
    with pytest.raises(SystemExit) as exc:
        _pack_cli("masks", canon, bad, "--resolution", "100")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "power of two" in err and "\n" not in err
    assert not bad.exists()
    with pytest.raises(SystemExit) as exc:
        _pack_cli("pairs", canon, tmp_path / "p")
    assert exc.value.code == 2 and "--size" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        _pack_cli("pairs", canon, tmp_path / "p", "--size", "16", "--repeat-crowded", "3:2")
    assert exc.value.code == 2 and "for --kind masks" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
    _pack_cli("pairs", canon, tmp_path / "p", "--size", "16x24", "--no-progress")
    assert PairsDataset(tmp_path / "p", "train")[0]["image"].shape == (16, 24)


def test_mask_zip_reader_validates(tmp_path, canon):
    with pytest.raises(CellsynthError, match="no such masks dataset"):
        MaskZipDataset(tmp_path / "none.zip")
    (tmp_path / "text.zip").write_text("hello")
    with pytest.raises(CellsynthError, match="not a zip"):
        MaskZipDataset(tmp_path / "text.zip")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("readme.txt", "x")
    with pytest.raises(CellsynthError, match="no PNG"):
        MaskZipDataset(tmp_path / "other.zip")
    good = tmp_path / "good.zip"
    pack_masks(canon, good, 16)
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(broken, "w") as dst:
        for n in src.namelist():
            data = src.read(n)
            dst.writestr(n, data[:40] if n.endswith("00000001.png") else data)
    ds = MaskZipDataset(broken)
    ds[0]
    with pytest.raises(CellsynthError, match="corrupt image"):
        ds[1]
    # a plain StyleGAN zip (no cellsynth.json) of gray PNGs of the wrong size mix
    import io

    from PIL import Image

    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as zf:
        for i, side in enumerate((16, 16, 8)):
            buf = io.BytesIO()
            Image.fromarray(np.zeros((side, side), np.uint8)).save(buf, format="PNG")
            zf.writestr(f"00000/img{i:08d}.png", buf.getvalue())
    ds = MaskZipDataset(plain)
    assert ds.encoding == "binary" and ds.resolution == 16 and len(ds) == 3
    with pytest.raises(CellsynthError, match="repack"):
        ds[2]


def test_pairs_reader_validates(tmp_path, canon):
    with pytest.raises(CellsynthError, match="no pairs.json"):
        PairsDataset(canon, "train")
    dest = tmp_path / "pairs"
    pack_pairs(canon, dest, 16)
    with pytest.raises(CellsynthError, match="splits present: test, train"):
        PairsDataset(dest, "val")
    (dest / "train_inst" / "b.png").unlink()
    with pytest.raises(CellsynthError, match="unpaired names.*b"):
        PairsDataset(dest, "train")
    write_image(dest / "test_img" / "d.tif", np.zeros((20, 16), np.uint8))
    ds = PairsDataset(dest, "test")
    with pytest.raises(CellsynthError, match="sizes differ"):
        ds[0]
    assert read_image(dest / "test_label" / "d.png").shape == (16, 16)


def test_real_dsb_pack_round_trip(dsb2018_dir, tmp_path):
    from cellsynth.benchmark.metrics import average_precision
    from cellsynth.datasets.canonical import CanonicalDataset

    dest = tmp_path / "dsb.zip"
    pack_masks(dsb2018_dir, dest, 128, max_images=5)
    ds, src = MaskZipDataset(dest), CanonicalDataset(dsb2018_dir, "train")
    assert len(ds) == 5
    true = [transform_labels(src[i].labels, 128)[0][1] for i in range(5)]
    pred = [decode_mask(ds[i][0], "fbd") for i in range(5)]
    _, tp, fp, fn = average_precision(true, pred, thresholds=(0.5,))
    assert tp.sum() / (tp + fp + fn).sum() >= 0.98


def test_check_resolution():
    assert check_resolution(256) == 256
    for bad in (0, 2, 100, "x"):
        with pytest.raises(CellsynthError):
            check_resolution(bad)
