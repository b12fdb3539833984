"""Training within a budget with a validation slice (``segmenters/_fitting.py``) and what the
trainable segmenters do with it: learning curves, best checkpoints, chosen post-processing,
mixed precision. Tiny networks on 64 x 64 disks; budgets of seconds."""

from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import SMALL_MASKRCNN, disks_dataset  # noqa: E402

from cellsynth import precision as precision_mod  # noqa: E402
from cellsynth.benchmark.segmenters import _fitting, make_segmenter  # noqa: E402
from cellsynth.benchmark.segmenters._fitting import (  # noqa: E402
    budgeted_fit,
    pooled_ap50,
    resolve_precision,
    split_validation,
    tune_params,
)
from cellsynth.errors import CellsynthError  # noqa: E402

TINY = {
    "unet": dict(
        unet_channels=[8, 16, 32], strides=[2, 2], num_res_units=1, crop=64, tile=64, batch_size=4
    ),
    "u2net": dict(variant="small", crop=64, tile=64, batch_size=4, lr=5e-3),
    "maskrcnn": dict(SMALL_MASKRCNN, max_detections=20, box_batch_size_per_image=32, lr=1e-3),
    "cellpose": dict(bsize=64, batch_size=4, min_train_masks=1),
}


@pytest.fixture(scope="module")
def disks(tmp_path_factory):
    return disks_dataset(tmp_path_factory.mktemp("fit") / "ds", 10)


# --- the pieces --------------------------------------------------------------------------------
def test_split_validation_seeded_disjoint():
    tr, va = split_validation(20, 0.2, seed=3)
    assert len(va) == 4 and len(tr) == 16
    assert sorted(tr + va) == list(range(20))
    assert split_validation(20, 0.2, seed=3) == (tr, va)
    assert split_validation(20, 0.2, seed=4) != (tr, va)
    assert split_validation(20, 0.0, seed=0) == (list(range(20)), [])
    assert split_validation(1, 0.5, seed=0) == ([0], [])  # one image: nothing to hold out
    assert len(split_validation(2, 0.01, seed=0)[1]) == 1  # at least one when asked
    assert len(split_validation(1000, 0.5, seed=0, max_val=64)[1]) == 64
    with pytest.raises(CellsynthError, match="val_fraction"):
        split_validation(10, 1.0, seed=0)


def test_resolve_precision(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32"
    monkeypatch.setattr(precision_mod, "cpu_has_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision(None, cpu) == "fp32"
    with pytest.raises(CellsynthError, match="no native bf16"):
        resolve_precision("bf16", cpu)
    monkeypatch.setattr(precision_mod, "cpu_has_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"
    assert resolve_precision("BF16", cpu) == "bf16"
    with pytest.raises(CellsynthError, match="unknown precision"):
        resolve_precision("fp16", cpu)


def test_pooled_ap50_counts_objects_not_images():
    a = np.zeros((20, 20), np.uint16)
    a[2:6, 2:6] = 1
    b = np.zeros((20, 20), np.uint16)
    for k in range(4):
        b[2 + 4 * k : 5 + 4 * k, 2:5] = k + 1
    # image 1 perfect (1 object); image 2 all missed (4 objects): pooled 1 / 5, mean 0.5
    assert pooled_ap50([a, b], [a, np.zeros_like(b)]) == pytest.approx(0.2)
    assert pooled_ap50([a], [a]) == 1.0
    assert pooled_ap50([np.zeros_like(a)], [np.zeros_like(a)]) == 0.0


def test_tune_params_finds_grid_optimum():
    calls = []

    def score(p):
        calls.append(p)
        return -((p["a"] - 3) ** 2) - (p["b"] - 0.6) ** 2

    grid = {"a": [1, 2, 3, 4, 5], "b": [0.2, 0.4, 0.6, 0.8]}
    found = tune_params(score, grid, {"a": 1, "b": 0.2})
    assert found["params"] == {"a": 3, "b": 0.6}
    assert found["score"] == pytest.approx(0.0)
    assert found["default_score"] == pytest.approx(score({"a": 1, "b": 0.2}))
    assert found["tried"] == len({tuple(sorted(c.items())) for c in calls})
    # a passed deadline: only the start is scored
    assert tune_params(score, grid, {"a": 1, "b": 0.2}, deadline=0.0)["tried"] == 1


def test_budgeted_fit_spends_the_budget_and_keeps_the_best():
    scores = iter([0.1, 0.5, 0.9, 0.4, 0.3, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2])
    state = {"w": 0}
    restored = []

    def step(i):
        time.sleep(0.02)
        state["w"] += 1
        return 1.0 / (i + 1)

    def evaluate():
        return next(scores), {"w": state["w"]}

    t0 = time.perf_counter()
    out = budgeted_fit(
        step,
        steps_per_epoch=5,
        evaluate=evaluate,
        snapshot=lambda: dict(state),
        restore=restored.append,
        budget_minutes=0.04,  # 2.4 s
        n_evals=4,
        progress=False,
    )
    took = time.perf_counter() - t0
    assert 2.0 <= took <= 3.0
    assert out["stopped_by"] == "budget"
    assert out["curve"][0]["steps"] == 0  # the untrained state comes first
    assert len(out["curve"]) >= 4
    assert out["best"]["val_ap50"] == 0.9
    assert restored == [{"w": out["best"]["steps"]}]
    assert out["best_payload"] == {"w": out["best"]["steps"]}


def test_budgeted_fit_epochs_exact_and_errors():
    out = budgeted_fit(lambda i: 1.0, steps_per_epoch=3, epochs=2, progress=False)
    assert out["steps"] == 6 and out["curve"] == [] and out["best"] is None
    with pytest.raises(CellsynthError, match="diverged"):
        budgeted_fit(lambda i: float("nan"), steps_per_epoch=1, epochs=1, progress=False)
    with pytest.raises(CellsynthError, match="budget_minutes"):
        budgeted_fit(lambda i: 1.0, steps_per_epoch=1, budget_minutes=0, progress=False)


# --- the segmenters ----------------------------------------------------------------------------
# Learning is checked over a fixed number of epochs (the same steps on every machine); the
# minutes budget separately, with budgets too short to learn in on a slow CPU.
EPOCHS = {"unet": 60, "u2net": 50, "maskrcnn": 12, "cellpose": 20}
BUDGET = {"unet": 0.1, "u2net": 0.15, "maskrcnn": 0.25, "cellpose": 0.15}


def _fitted(name, disks, folder, **fit):
    seg = make_segmenter(name, **TINY[name], val_fraction=0.2, n_evals=4, precision="fp32")
    untrained = None
    if name == "maskrcnn":  # it skips scoring its untrained state (hundreds of boxes): do it here
        _, val_idx = split_validation(len(disks), 0.2, 0, 64)
        seg._ensure_model()
        val = [disks[i] for i in val_idx]
        untrained = pooled_ap50([s.labels for s in val], [seg.predict(s.image) for s in val])
    seg.fit(disks, folder, progress=False, **fit)
    info = seg.info
    assert info["precision"] == "fp32" and info["validation"]["n_images"] == 2
    curve = info["curve"]
    if untrained is None:
        assert curve[0]["steps"] == 0
        untrained = curve[0]["val_ap50"]
    post = info["postprocess"]
    # how many candidates fit in what a budget left depends on the machine's load
    assert post["tried"] >= 1 and post["val_ap50"] >= post["default_val_ap50"]
    for key, value in post["params"].items():
        assert seg.options[key] == value
    return seg, untrained


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unet", "u2net", "maskrcnn", "cellpose"])
def test_segmenter_learns(name, disks, tmp_path):
    """Better than untrained on the validation slice after a fixed number of epochs; the chosen
    post-processing is stored, and reused after save/load."""
    seg, untrained = _fitted(name, disks, tmp_path / "work", epochs=EPOCHS[name])
    info = seg.info
    assert len(info["curve"]) >= 3
    assert info["best"]["val_ap50"] > untrained + 0.2, (untrained, info["curve"])
    image = disks[0].image
    lab = seg.predict(image)
    again = type(seg).load(tmp_path / "work" / "model")
    assert again.options == seg.options
    assert again.info["postprocess"] == info["postprocess"]
    np.testing.assert_array_equal(again.predict(image), lab)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unet", "u2net", "maskrcnn", "cellpose"])
def test_segmenter_spends_its_budget(name, disks, tmp_path):
    """A minutes budget is spent, not overrun (imports, validation and the post-processing
    choice included), and the curve has its points."""
    t0 = time.perf_counter()
    seg, _ = _fitted(name, disks, tmp_path / "work", budget_minutes=BUDGET[name])
    took = time.perf_counter() - t0
    budget_s = BUDGET[name] * 60
    assert 0.75 * budget_s <= took <= budget_s + 4.0, took
    assert seg.info["budget_minutes"] == BUDGET[name] and len(seg.info["curve"]) >= 2


def test_dense_bf16_close_to_fp32(disks, monkeypatch):
    """The same network predicts nearly the same maps in bf16 autocast as in fp32."""
    if not _fitting.cpu_has_bf16():
        pytest.skip("this CPU has no native bf16 (avx512_bf16 / amx_bf16)")
    seg = make_segmenter("unet", **TINY["unet"], precision="fp32", val_fraction=0.0)
    seg.fit(disks, None, epochs=3, progress=False)
    fp32 = seg.predict_maps(disks[1].image)
    seg.precision = "bf16"
    bf16 = seg.predict_maps(disks[1].image)
    assert np.abs(fp32 - bf16).max() < 0.05
    assert not np.array_equal(fp32, bf16)  # it did run in bf16


def test_runner_records_training_and_reloads_cached_model(disks, tmp_path):
    """results.json carries the learning curve, chosen post-processing and precision; a second
    run loads the cached model (same chosen options) and predicts exactly the same."""
    import json

    from cellsynth.benchmark.runner import run_benchmark

    opts = {"unet": {**TINY["unet"], "val_fraction": 0.2, "n_evals": 2, "precision": "fp32"}}
    kwargs = dict(
        options=opts,
        budgets={"unet": {"epochs": 4}},
        cache_dir=tmp_path / "cache",
        progress=False,
        n_samples=10,
    )
    r1 = run_benchmark(disks.root, [disks.root], ["unet"], tmp_path / "o1", **kwargs)
    seg1 = r1["segmenters"]["unet"]
    tr = seg1["training"]
    assert tr["precision"] == "fp32" and tr["curve"][0]["steps"] == 0
    assert tr["validation"]["n_images"] == 2 and tr["postprocess"]["tried"] > 1
    saved = json.loads((tmp_path / "o1" / "results.json").read_text())
    assert saved["segmenters"]["unet"]["training"]["best"] == tr["best"]
    assert "Training and validation" in (tmp_path / "o1" / "report.html").read_text()
    r2 = run_benchmark(disks.root, [disks.root], ["unet"], tmp_path / "o2", **kwargs)
    seg2 = r2["segmenters"]["unet"]
    assert seg2["cached"] and seg2["training"]["postprocess"] == tr["postprocess"]
    key = next(iter(seg1["datasets"]))
    assert seg1["datasets"][key]["summary"] == seg2["datasets"][key]["summary"]
    for f in sorted((tmp_path / "o1" / "samples" / "unet").rglob("*.tif")):
        g = tmp_path / "o2" / f.relative_to(tmp_path / "o1")
        assert f.read_bytes() == g.read_bytes()


def test_dense_crop_shrinks_to_the_training_images(disks, monkeypatch):
    """A crop larger than the training images shrinks to the largest multiple of the network's
    down-sampling that fits the smallest image (64-px disks: 64, not 128), every training crop
    has that size, and the training record says so."""
    from cellsynth.benchmark.segmenters import _torchutil

    sizes = []
    real_crop = _torchutil.random_crop

    def spy(arrays, size, rng):
        out = real_crop(arrays, size, rng)
        sizes.append(tuple(a.shape[-2:] for a in out))
        return out

    monkeypatch.setattr(_torchutil, "random_crop", spy)
    opts = {**TINY["unet"], "crop": 128, "tile": 128}
    seg = make_segmenter("unet", **opts, precision="fp32", val_fraction=0.0)
    seg.fit(disks, None, epochs=1, progress=False)
    assert seg.info["crop"] == 64
    assert sizes and set(sizes) == {((64, 64), (64, 64))}
    assert seg.options["crop"] == 128  # the option is kept; only this fit used less
