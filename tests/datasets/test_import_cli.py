"""``cellsynth dataset import`` end to end, its errors, and the downloaders' offline path."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tifffile

from cellsynth.cli import main
from cellsynth.datasets.canonical import CanonicalDataset
from cellsynth.datasets.coco import load_coco_samples
from cellsynth.datasets.download import download_dataset, extract_zip, fetch
from cellsynth.datasets.importer import assign_splits, import_dataset
from cellsynth.datasets.io import read_image, read_labels
from cellsynth.errors import CellsynthError


def run_cli(capsys, *args):
    """Run ``cellsynth dataset import ARGS`` in-process; return (exit code, stdout, stderr)."""
    try:
        main(["dataset", "import", *map(str, args)])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def make_pairs(root, n=10, size=(12, 14)):
    """``root/images/sNN.tif`` + ``root/masks/sNN.tif`` with 1..3 separate blocks."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img = rng.integers(0, 65535, size, dtype=np.uint16)
        lab = np.zeros(size, np.uint16)
        for k in range(1 + i % 3):
            lab[1 + 4 * k : 3 + 4 * k, 2:6] = k + 1
        tifffile.imwrite(root / "images" / f"s{i:02d}.tif", img)
        tifffile.imwrite(root / "masks" / f"s{i:02d}.tif", lab)
    return root


def test_import_livecell_val(livecell_dir, tmp_path, capsys):
    out = tmp_path / "lc"
    code, stdout, err = run_cli(capsys, "livecell", livecell_dir, "--out", out, "--no-progress")
    assert code == 0, err
    doc = json.loads((out / "dataset.json").read_text())
    imp = doc["import"]
    assert imp["annotations"] == 1243
    assert imp["instances_total"] + imp["dropped_total"] == 1243
    assert sum(doc["splits"].values()) == 5
    assert doc["source"]["format"] == "coco" and doc["source"]["requested_format"] == "livecell"
    assert f"annotations 1243: kept {imp['instances_total']}" in stdout
    want, _ = load_coco_samples(livecell_dir / "livecell_coco_val.json", livecell_dir / "images")
    want = {s.name: s for s in want}
    got = {}
    for split in doc["splits"]:
        for s in CanonicalDataset(out, split):
            got[s.name] = s
            assert s.meta["cell_type"] == s.name.split("_")[0]
    assert sorted(got) == sorted(want)
    for name, s in got.items():
        np.testing.assert_array_equal(s.labels, want[name].labels)
        np.testing.assert_array_equal(s.image, want[name].image)
    total = sum(int(s.labels.max()) for s in got.values())
    assert total == imp["instances_total"]
    print(f"LIVECell val via CLI: {imp}")


def test_import_dsb2018_canonical_round_trip(dsb2018_dir, tmp_path, capsys):
    out = tmp_path / "dsb"
    code, stdout, err = run_cli(
        capsys, "canonical", dsb2018_dir, "--out", out, "--max-images", 4, "--no-progress"
    )
    assert code == 0, err
    doc = json.loads((out / "dataset.json").read_text())
    assert doc["splits"] == {"train": 4, "test": 4}
    assert doc["source"]["kept_splits"] == ["test", "train"]
    for split in ("train", "test"):
        names = sorted(p.stem for p in (dsb2018_dir / split / "images").glob("*.tif"))[:4]
        ds = CanonicalDataset(out, split)
        assert ds.names == names
        for s in ds:
            image = read_image(dsb2018_dir / split / "images" / f"{s.name}.tif")
            labels = read_labels(dsb2018_dir / split / "masks" / f"{s.name}.tif")
            assert s.image.dtype == image.dtype and s.labels.dtype == labels.dtype
            np.testing.assert_array_equal(s.image, image)
            np.testing.assert_array_equal(s.labels, labels)
    assert "train 4 images" in stdout


def test_import_folders_seeded_splits(tmp_path, capsys):
    src = make_pairs(tmp_path / "src")
    out = tmp_path / "out"
    args = ["folders", "--images", src / "images", "--masks", src / "masks", "--out", out]
    code, _, err = run_cli(capsys, *args, "--seed", 5, "--split-fractions", "0.6,0.2,0.2")
    assert code == 0, err
    names = [f"s{i:02d}" for i in range(10)]
    want = assign_splits(names, (0.6, 0.2, 0.2), 5)
    got = {
        n: split for split in ("train", "val", "test") for n in CanonicalDataset(out, split).names
    }
    assert got == want
    doc = json.loads((out / "dataset.json").read_text())
    assert doc["import"]["instances_total"] == sum(1 + i % 3 for i in range(10))
    # same seed again (overwrite): same result; a second seed: a valid split of the same names
    code, _, err = run_cli(capsys, *args, "--seed", 5, "--split-fractions", "0.6,0.2,0.2",
                           "--overwrite")  # fmt: skip
    assert code == 0, err
    again = {n: s for s in ("train", "val", "test") for n in CanonicalDataset(out, s).names}
    assert again == want
    summary = import_dataset("folders", [], tmp_path / "o2", images=src / "images",
                             masks=src / "masks", seed=6, progress=False)  # fmt: skip
    assert summary["splits"] == {"train": 8, "val": 1, "test": 1}
    assert summary["instances_total"] == doc["import"]["instances_total"]


def test_import_cellpose_and_dsb_layouts(tmp_path, capsys):
    from PIL import Image

    cp = tmp_path / "cp"
    cp.mkdir()
    lab = np.zeros((10, 12), np.uint8)
    lab[1:5, 1:5], lab[6:9, 6:11] = 1, 2  # 16 and 15 pixels
    for i in range(3):
        Image.fromarray(np.full((10, 12, 3), 40 * i, np.uint8)).save(cp / f"c{i}.png")
        Image.fromarray(lab).save(cp / f"c{i}_masks.png")
    code, stdout, err = run_cli(capsys, "cellpose", cp, "--out", tmp_path / "o1", "--no-progress")
    assert code == 0, err
    doc = json.loads((tmp_path / "o1" / "dataset.json").read_text())
    assert doc["import"]["instances_total"] == 6 and sum(doc["splits"].values()) == 3
    dsb = tmp_path / "dsb"
    for i in range(2):
        (dsb / f"id{i}" / "images").mkdir(parents=True)
        (dsb / f"id{i}" / "masks").mkdir()
        Image.fromarray(np.full((10, 12, 4), 90, np.uint8)).save(dsb / f"id{i}/images/id{i}.png")
        for k in (1, 2):
            Image.fromarray(((lab == k) * 255).astype(np.uint8)).save(dsb / f"id{i}/masks/{k}.png")
        # a third nucleus overlapping nucleus 1 almost entirely: dropped (overlap)
        Image.fromarray(((lab == 1) * 255).astype(np.uint8)).save(dsb / f"id{i}/masks/3.png")
    code, stdout, err = run_cli(capsys, "dsb2018", dsb, "--out", tmp_path / "o2", "--no-progress")
    assert code == 0, err
    doc = json.loads((tmp_path / "o2" / "dataset.json").read_text())
    assert doc["import"]["dropped"]["overlap"] == 2 and doc["import"]["instances_total"] == 4
    assert "dropped 2 (overlap 2)" in stdout
    s = CanonicalDataset(tmp_path / "o2", "train")[0]
    assert s.image.ndim == 2 and (s.image == 90).all()  # RGBA gray -> one channel


def _bad_cases(tmp_path):
    """(name, args, expected text): each must fail with one line and write nothing."""
    src = make_pairs(tmp_path / "src", n=3)
    data = (src / "images" / "s00.tif").read_bytes()

    def variant(name, fn):
        root = make_pairs(tmp_path / name, n=3)
        fn(root)
        return ["folders", "--images", root / "images", "--masks", root / "masks"]

    def corrupt(root):
        (root / "images" / "s01.tif").write_bytes(data[: len(data) // 3])

    def size(root):
        tifffile.imwrite(root / "masks" / "s02.tif", np.ones((5, 5), np.uint16))

    def floats(root):
        tifffile.imwrite(root / "masks" / "s02.tif", np.full((12, 14), 0.5, np.float32))

    def negative(root):
        tifffile.imwrite(root / "masks" / "s02.tif", np.full((12, 14), -1, np.int16))

    def unpaired(root):
        (root / "masks" / "s02.tif").rename(root / "masks" / "other.tif")

    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    (tmp_path / "notcoco.json").write_text(json.dumps({"images": []}))
    return [
        ("missing", ["dsb2018", tmp_path / "nope"], "nope: no such folder"),
        ("corrupt", variant("c", corrupt), "s01.tif: cannot read image"),
        ("size", variant("s", size), "s02.tif: mask is 5x5"),
        ("float", variant("f", floats), "must be integers"),
        ("negative", variant("n", negative), "must be >= 0"),
        ("unpaired", variant("u", unpaired), "unpaired files"),
        (
            "empty",
            ["folders", "--images", tmp_path / "empty/images", "--masks", tmp_path / "empty/masks"],
            "no images found",
        ),
        (
            "notcoco",
            ["coco", "--annotations", tmp_path / "notcoco.json", "--images", src / "images"],
            "notcoco.json: not a COCO annotation file (missing 'annotations')",
        ),
        ("fractions", ["embedseg", src, "--split-fractions", "0.5,0.1"], "sum to 1"),
        ("format", ["nosuch", src], "unknown dataset format"),
        ("option", ["embedseg", src, "--masks", src], "--masks is only used"),
    ]


def test_import_bad_input_one_line_nothing_left(tmp_path, capsys):
    for name, args, text in _bad_cases(tmp_path):
        out = tmp_path / f"out-{name}"
        code, stdout, err = run_cli(capsys, *args, "--out", out, "--no-progress")
        assert code == 2, (name, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
        assert text in lines[0], (name, lines[0])
        assert not out.exists(), name
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(f".out-{name}")]
        assert leftovers == [], name


def test_import_refuses_existing_out_and_subprocess(tmp_path):
    src = make_pairs(tmp_path / "src", n=3)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    cmd = [sys.executable, "-m", "cellsynth", "dataset", "import", "embedseg", str(src)]
    res = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: {out} already exists; pass --overwrite to replace it"
    ]
    assert (out / "keep.txt").read_text() == "mine"
    res = subprocess.run([*cmd, "--out", str(out), "--overwrite"], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert not (out / "keep.txt").exists()
    assert json.loads((out / "dataset.json").read_text())["splits"] == {"train": 3}  # 2.4, .3, .3
    assert len(CanonicalDataset(out, "train")) == 3
    assert "wrote" in res.stdout


def test_download_offline_error(tmp_path):
    target = tmp_path / "x.zip"
    with pytest.raises(CellsynthError, match=r"cannot reach http://127\.0\.0\.1:9/x\.zip"):
        fetch("http://127.0.0.1:9/x.zip", target, timeout=5, progress=False, page="PAGE")
    assert list(tmp_path.iterdir()) == []
    dest = tmp_path / "dsb"
    with pytest.raises(CellsynthError, match=r"download it by hand from https://bbbc"):
        download_dataset("dsb2018", dest, base_url="http://127.0.0.1:9", timeout=5, progress=False)
    assert list(dest.iterdir()) == []
    with pytest.raises(CellsynthError, match="no downloader"):
        download_dataset("nosuch", dest)


def test_extract_zip(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ID/images/ID.png", b"png")
        zf.writestr("ID/masks/1.png", b"m")
    dest = extract_zip(archive, tmp_path / "a")
    assert (dest / "ID" / "masks" / "1.png").read_bytes() == b"m"
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("ok.txt", b"x")
        zf.writestr("../escape.txt", b"x")
    with pytest.raises(CellsynthError, match="escapes"):
        extract_zip(evil, tmp_path / "e")
    assert not (tmp_path / "e").exists() and not (tmp_path / "escape.txt").exists()
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(CellsynthError, match="not a valid zip"):
        extract_zip(tmp_path / "bad.zip", tmp_path / "b")
    assert not (tmp_path / "b").exists()
