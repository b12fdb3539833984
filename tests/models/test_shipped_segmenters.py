"""Trained segmenters as shipped models: the registry entry, `benchmark run --load`, the
`cellsynth models` listing and the errors (a tiny U-Net trained for one epoch on disks)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from conftest import disks_sample  # noqa: E402

from cellsynth import models  # noqa: E402
from cellsynth.atomic import file_sha256  # noqa: E402
from cellsynth.benchmark.runner import run_benchmark  # noqa: E402
from cellsynth.benchmark.segmenters import get_segmenter_class, make_segmenter  # noqa: E402
from cellsynth.cli import main  # noqa: E402
from cellsynth.datasets.canonical import CanonicalDataset  # noqa: E402
from cellsynth.errors import CellsynthError  # noqa: E402

NAME = "tiny-nuclei"
UNET = dict(
    unet_channels=[8, 16], strides=[2], num_res_units=1, crop=32, tile=64, batch_size=4, seed=0
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A canonical root with train (6 images) and test (3 images) splits of disks."""
    from cellsynth.datasets.canonical import write_dataset

    root = tmp_path_factory.mktemp("segs") / "ds"
    samples = [disks_sample(i) for i in range(9)]
    write_dataset(root, {"train": samples[:6], "test": samples[6:]})
    return root


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    seg = make_segmenter("unet", **UNET)
    seg.fit(CanonicalDataset(data, "train"), tmp_path_factory.mktemp("work"), epochs=1)
    folder = tmp_path_factory.mktemp("saved") / "unet"
    seg.save(folder)
    return folder


@pytest.fixture
def shipped_root(tmp_path, monkeypatch, trained):
    """A models folder shipping the trained U-Net under NAME."""
    root = tmp_path / "models"
    folder = root / NAME
    (folder / "unet").mkdir(parents=True)
    for f in trained.iterdir():
        (folder / "unet" / f.name).write_bytes(f.read_bytes())
    w = folder / "unet" / "weights.pt"
    entry = {"kind": "segmenter", "segmenter": "unet", "name": NAME, "file": "unet/weights.pt"}
    entry.update(sha256=file_sha256(w), bytes=w.stat().st_size, summary="tiny U-Net for tests")
    (folder / models.CARD_JSON).write_text(json.dumps({"files": [entry]}))
    (folder / models.CARD_MD).write_text("# tiny\n")
    monkeypatch.setattr(models, "MODELS_DIR", root)
    return folder / "unet"


def test_registry_finds_shipped_segmenters_and_folders(shipped_root, trained):
    (m,) = models.shipped()
    assert (m.kind, m.segmenter, m.label) == ("segmenter", "unet", f"{NAME}/unet")
    models.verify(m)
    assert models.segmenter_folder(NAME, "unet") == shipped_root
    assert models.segmenter_folder(str(trained), "unet") == trained  # a folder as before
    with pytest.raises(CellsynthError, match=f"shipped: {NAME}"):
        models.segmenter_folder("nope", "unet")
    with pytest.raises(CellsynthError, match="shipped: none"):
        models.segmenter_folder(NAME, "cellpose")  # the name exists, not for this segmenter
    (shipped_root / "weights.pt").unlink()
    with pytest.raises(CellsynthError, match="missing"):
        models.segmenter_folder(NAME, "unet")


def test_benchmark_loads_instead_of_training(shipped_root, data, tmp_path):
    res = run_benchmark(
        data,  # a training split is given: the loaded model must not be trained on it
        [data],
        ["unet", "classical"],
        tmp_path / "b",
        budgets={"unet": {"load": str(models.segmenter_folder(NAME, "unet")), "epochs": 1}},
        progress=False,
    )
    unet = res["segmenters"]["unet"]
    assert unet["status"] == "ok" and unet["loaded"] == str(shipped_root)
    assert unet["trained"] is False and unet["train_s"] == 0.0
    assert not (tmp_path / "b" / "work" / "unet").exists()
    bad = run_benchmark(
        None,
        [data],
        ["unet"],
        tmp_path / "c",
        budgets={"unet": {"load": str(tmp_path)}},
        progress=False,
    )["segmenters"]["unet"]
    assert bad["status"] == "failed" and bad["error"].startswith("load: ")
    # its scores are those of the saved model itself
    seg = get_segmenter_class("unet").load(shipped_root)
    ds = CanonicalDataset(data, "test")
    assert len(ds) == 3
    from cellsynth.benchmark import metrics

    pooled = metrics.summarize([metrics.image_metrics(s.labels, seg.predict(s.image)) for s in ds])
    got = unet["datasets"][next(iter(unet["datasets"]))]["summary"]["ap50"]
    assert got == pytest.approx(pooled["ap50"])


def test_load_errors_and_listing(shipped_root, data, tmp_path, capsys):
    base = ["benchmark", "run", "--test", str(data), "--segmenters", "unet", "--quiet"]
    for extra, msg in [
        (["--load", "unet=nope"], "no shipped unet model of that name"),
        (["--load", "unet"], "use SEGMENTER=MODEL"),
        (["--load", "cellpose=x"], "not among the segmenters run"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(base + ["--out", str(tmp_path / "o"), *extra])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and len(err.splitlines()) == 1 and msg in err, err
        assert not (tmp_path / "o").exists()
    main(base + ["--out", str(tmp_path / "ok"), "--load", f"unet={NAME}"])
    out = json.loads((tmp_path / "ok" / "results.json").read_text())
    assert out["segmenters"]["unet"]["loaded"] == str(shipped_root)
    capsys.readouterr()
    main(["models"])
    listed = capsys.readouterr().out
    assert f"{NAME}/unet" in listed and f"--load unet={NAME}" in listed
    main(["models", "--json"])
    (row,) = json.loads(capsys.readouterr().out)
    assert row["segmenter"] == "unet"


def test_loaded_predictions_are_deterministic(shipped_root):
    seg = get_segmenter_class("unet").load(models.segmenter_folder(NAME, "unet"))
    image = (np.random.default_rng(0).random((48, 48)) * 255).astype(np.uint8)
    assert np.array_equal(seg.predict(image), seg.predict(image))


def test_fidelity_loads_a_shipped_segmenter(shipped_root, data, tmp_path, capsys):
    test = str(data / "test")
    out = tmp_path / "fid.json"
    main(
        ["benchmark", "fidelity", "--real", test, "--translated", test, "--segmenter", "unet"]
        + ["--load", NAME, "--bootstrap", "20", "--out", str(out), "--quiet"]
    )
    res = json.loads(out.read_text())
    assert res["loaded"] == str(shipped_root) and res["n_images"] == 3
    assert res["ratio"]["ap50"] in (1.0, None)  # the same images on both sides
    with pytest.raises(SystemExit) as exc:
        main(
            ["benchmark", "fidelity", "--real", test, "--translated", test, "--segmenter", "unet"]
            + ["--load", NAME, "--train", str(data)]
        )
    assert exc.value.code == 2 and "drop --train" in capsys.readouterr().err
