"""The shared core: atomic writes, image/label I/O and conversions, canonical datasets, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from cellsynth.atomic import atomic_dir, atomic_path, write_text
from cellsynth.datasets import (
    CanonicalDataset,
    Sample,
    image_to_network,
    network_to_image,
    read_image,
    read_labels,
    write_dataset,
    write_image,
    write_labels,
)
from cellsynth.datasets.io import check_labels, relabel_sequential
from cellsynth.errors import CellsynthError


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_refuses_overwrite(tmp_path):
    target = tmp_path / "x"
    write_text(target, "a")
    with pytest.raises(CellsynthError, match="--overwrite"):
        with atomic_dir(target):
            pass
    assert target.read_text() == "a"


@pytest.mark.parametrize("suffix", [".tif", ".png"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_image_roundtrip(tmp_path, suffix, dtype):
    rng = np.random.default_rng(0)
    img = rng.integers(0, np.iinfo(dtype).max, size=(17, 23), dtype=dtype)
    write_image(tmp_path / f"a{suffix}", img)
    back = read_image(tmp_path / f"a{suffix}")
    assert back.dtype == dtype and np.array_equal(back, img)


def test_rgb_and_channel_first_tiff(tmp_path):
    import tifffile

    img = np.arange(3 * 10 * 12, dtype=np.uint8).reshape(3, 10, 12)
    tifffile.imwrite(tmp_path / "c.tif", img)
    back = read_image(tmp_path / "c.tif")
    assert back.shape == (10, 12, 3) and np.array_equal(back[..., 1], img[1])


def test_corrupt_and_missing_images(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(CellsynthError, match="bad.png"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(CellsynthError, match="no such file"):
        read_image(tmp_path / "missing.tif")


def test_labels_validation(tmp_path):
    with pytest.raises(CellsynthError, match="integers"):
        check_labels(np.full((4, 4), 0.5))
    with pytest.raises(CellsynthError, match=">= 0"):
        check_labels(np.full((4, 4), -1, dtype=np.int32))
    big = np.zeros((2, 2), np.int64)
    big[0, 0] = 70000
    assert check_labels(big).dtype == np.uint32
    lab = np.array([[0, 5], [5, 9]], dtype=np.int32)
    write_labels(tmp_path / "m.tif", lab)
    back = read_labels(tmp_path / "m.tif")
    assert back.dtype == np.uint16 and np.array_equal(back, lab)
    assert np.array_equal(relabel_sequential(lab), [[0, 1], [1, 2]])


def test_network_conversion_roundtrip():
    rng = np.random.default_rng(1)
    for dtype in (np.uint8, np.uint16):
        img = rng.integers(0, np.iinfo(dtype).max, size=(8, 9, 3), dtype=dtype)
        x = image_to_network(img)
        assert x.shape == (3, 8, 9) and x.dtype == np.float32
        assert x.min() >= -1 and x.max() <= 1
        assert np.array_equal(network_to_image(x, dtype), img)
    gray = rng.integers(0, 255, size=(5, 5), dtype=np.uint8)
    assert image_to_network(gray, channels=3).shape == (3, 5, 5)


def test_canonical_dataset_roundtrip(tmp_path):
    rng = np.random.default_rng(2)
    samples = []
    for i in range(3):
        lab = np.zeros((20, 30), np.uint16)
        lab[2:8, 3:9] = 1
        lab[10:15, 10:25] = 2
        img = rng.integers(0, 255, size=(20, 30), dtype=np.uint8)
        samples.append(Sample(f"s{i}", img, lab, {"cell_type": "A"}))
    counts = write_dataset(tmp_path / "ds", {"train": samples[:2], "test": samples[2:]})
    assert counts == {"train": 2, "test": 1}
    ds = CanonicalDataset(tmp_path / "ds", "train")
    assert len(ds) == 2
    s = ds[1]
    assert s.name == "s1" and np.array_equal(s.labels, samples[1].labels)
    assert np.array_equal(s.image, samples[1].image) and s.meta == {"cell_type": "A"}
    with pytest.raises(CellsynthError, match="choose one"):
        CanonicalDataset(tmp_path / "ds")
    with pytest.raises(CellsynthError, match="already exists"):
        write_dataset(tmp_path / "ds", {"train": samples})


def test_canonical_unpaired_and_size_mismatch(tmp_path):
    split = tmp_path / "split"
    write_image(split / "images" / "a.tif", np.zeros((4, 4), np.uint8))
    write_labels(split / "masks" / "b.tif", np.zeros((4, 4), np.uint16))
    with pytest.raises(CellsynthError, match="unpaired"):
        CanonicalDataset(split)
    write_labels(split / "masks" / "a.tif", np.zeros((5, 4), np.uint16))
    (split / "masks" / "b.tif").unlink()
    with pytest.raises(CellsynthError, match="same size"):
        CanonicalDataset(split)[0]


def test_checkpoint_roundtrip_and_errors(tmp_path):
    torch = pytest.importorskip("torch")
    from cellsynth.training.checkpoint import load_checkpoint, save_checkpoint

    net = torch.nn.Linear(3, 2)
    path = save_checkpoint(tmp_path / "c.pt", {"net": net.state_dict()}, "demo", {"a": 1})
    data = load_checkpoint(path, kind="demo")
    assert data["config"] == {"a": 1}
    assert torch.equal(data["net"]["weight"], net.weight.detach())
    with pytest.raises(CellsynthError, match="'other' one is needed"):
        load_checkpoint(path, kind="other")
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CellsynthError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_cli_reports_errors_in_one_line(tmp_path):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "cellsynth", "no-such-command"], capture_output=True, text=True
    )
    assert r.returncode != 0 and "no-such-command" in r.stderr


def test_atomic_outputs_have_usual_permissions(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        write_text(tmp_path / "f.txt", "x")
        with atomic_dir(tmp_path / "d") as d:
            (d / "a").write_text("y")
    finally:
        os.umask(mask)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_touching_objects_8_adjacency():
    from cellsynth.tools.labels import touching_objects

    lab = np.zeros((8, 8), np.uint16)
    lab[1:3, 1:3] = 1
    lab[1:3, 3:5] = 2  # shares an edge with 1
    lab[3, 5] = 3  # diagonal neighbour of 2 only
    lab[6:8, 6:8] = 4  # alone
    lab[6, 0:2] = 5  # alone (one background pixel from 6)
    lab[6, 3] = 6
    assert touching_objects(lab).tolist() == [1, 2, 3]
    assert touching_objects(np.zeros((4, 4), np.uint16)).size == 0


def test_run_logger_writes_tensorboard_without_importing_tensorflow(tmp_path):
    """With TensorFlow installed (the stardist extra), TensorBoard would import it, and a
    process that then loads Triton crashes; the run logger keeps it out. Checked in a fresh
    process: event file written, tensorflow not imported, torchvision loads afterwards."""
    import subprocess
    import sys

    code = (
        "import sys; from cellsynth.training.logging import RunLogger; "
        f"log = RunLogger({str(tmp_path)!r}); log.scalars(1, {{'a': 1.0}}); log.close(); "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; "
        "import torchvision.models.detection; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-800:]
    assert list(tmp_path.glob("events.out.tfevents.*"))
