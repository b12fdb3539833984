"""Benchmark validity: rank statistics, bootstrap intervals, pooled metrics recomputed from
per-image rows, the runner's validity block, the report section, train-on-real, paired fidelity,
the `benchmark validate` / `benchmark fidelity` commands and their errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy import stats

from cellsynth.benchmark import metrics
from cellsynth.benchmark.runner import _clean, run_benchmark
from cellsynth.benchmark.segmenters import Segmenter, register
from cellsynth.benchmark.segmenters.classical import Classical
from cellsynth.benchmark.validity import (
    HEADLINE,
    average_ranks,
    bootstrap_weights,
    classify_test_sets,
    compute_validity,
    error_profile,
    image_table,
    kendall_tau_b,
    paired_fidelity,
    spearman,
    table_scores,
)
from cellsynth.datasets.canonical import CanonicalDataset, Sample, write_dataset
from cellsynth.datasets.simulate import simulate_dataset
from cellsynth.errors import CellsynthError


@register
class _NoDeclump(Classical):
    """The classical recipe without declumping (touching cells merge)."""

    name = "test-val-nodeclump"
    DEFAULTS = {**Classical.DEFAULTS, "declump": "none", "tune": False}


@register
class _Level(Segmenter):
    """Trainable fake: threshold at a level 'learnt' as the mean training intensity."""

    name = "test-val-level"
    trainable = True

    def fit(self, train, workdir, budget_minutes=None, epochs=None, progress=True):
        self.options["level"] = float(np.mean([s.image.mean() for s in train]))

    def predict(self, image):
        plane = image if image.ndim == 2 else image.mean(-1)
        level = self.options.get("level", float(plane.mean()))
        return ndi.label(plane > level)[0].astype(np.uint16)


# ----------------------------------------------------------------------------- rank statistics


def test_rank_statistics_match_scipy_with_ties():
    rng = np.random.default_rng(0)
    cases = [
        ([0.9, 0.8, 0.7, 0.6, 0.5], [0.85, 0.82, 0.6, 0.61, 0.4]),  # one swap
        ([0.5, 0.5, 0.7, 0.2, 0.9], [0.4, 0.6, 0.6, 0.1, 0.8]),  # ties on both sides
        ([1, 2, 2, 2, 3, 4], [2, 2, 1, 3, 3, 5]),
        ([0.3, 0.2, 0.1], [0.1, 0.2, 0.3]),  # reversed
    ]
    cases += [tuple(rng.integers(0, 4, (2, 7)).astype(float)) for _ in range(20)]
    for x, y in cases:
        x, y = np.asarray(x, float), np.asarray(y, float)
        assert np.allclose(average_ranks(x), stats.rankdata(x))
        ref_s = stats.spearmanr(x, y).statistic
        ref_k = stats.kendalltau(x, y).statistic  # tau-b
        if np.isnan(ref_s):
            assert np.isnan(spearman(x, y)) and np.isnan(kendall_tau_b(x, y))
            continue
        assert spearman(x, y) == pytest.approx(ref_s, abs=1e-12)
        assert kendall_tau_b(x, y) == pytest.approx(ref_k, abs=1e-12)
    # vectorised over rows (the bootstrap's use) = row by row
    xs, ys = rng.integers(0, 5, (50, 6)).astype(float), rng.integers(0, 5, (50, 6)).astype(float)
    got_s, got_k = spearman(xs, ys), kendall_tau_b(xs, ys)
    for i in range(50):
        ref_s = stats.spearmanr(xs[i], ys[i]).statistic
        ref_k = stats.kendalltau(xs[i], ys[i]).statistic
        assert (np.isnan(got_s[i]) and np.isnan(ref_s)) or got_s[i] == pytest.approx(ref_s)
        assert (np.isnan(got_k[i]) and np.isnan(ref_k)) or got_k[i] == pytest.approx(ref_k)
    assert np.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))  # constant: undefined
    assert np.isnan(kendall_tau_b([1.0, np.nan, 2.0], [1.0, 2.0, 3.0]))


def test_bootstrap_weights():
    w = bootstrap_weights(np.random.default_rng(3), 7, 600)
    assert w.shape == (600, 7) and (w.sum(1) == 7).all() and (w >= 0).all()
    assert np.allclose(w.mean(0), 1.0, atol=0.15)  # every image drawn once per resample on average
    assert np.array_equal(w, bootstrap_weights(np.random.default_rng(3), 7, 600))


# ----------------------------------------------------------------------------- made-up results


def _labels(rng, size=40, n=6):
    yy, xx = np.mgrid[:size, :size]
    lab = np.zeros((size, size), np.uint16)
    for k in range(1, n + 1):
        cy, cx = rng.integers(5, size - 5, 2)
        r = rng.integers(3, 6)
        lab[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (lab == 0)] = k
    return lab


def _degrade(rng, true, quality):
    """A prediction that keeps each object with probability ``quality``, eroded at random, plus
    spurious blobs."""
    pred = np.zeros_like(true)
    for k in np.unique(true)[1:]:
        if rng.random() < quality:
            obj = true == k
            if rng.random() > quality:
                obj = ndi.binary_erosion(obj)
            pred[obj] = k
    for j in range(rng.poisson(2 * (1 - quality))):
        cy, cx = rng.integers(2, true.shape[0] - 2, 2)
        pred[cy - 1 : cy + 2, cx - 1 : cx + 2] = 100 + j
    return pred


def _made_up(seed=0, quality=None, n_images=8, empty=()):
    """A results dict (after _clean, as in results.json) with a synthetic (manifest.json) and a
    real test set, segmenters of different quality, per-image rows from real metrics."""
    rng = np.random.default_rng(seed)
    quality = quality or {"a": 0.95, "b": 0.8, "c": 0.65, "d": 0.5}
    results = {
        "thresholds": list(metrics.AP_THRESHOLDS),
        "datasets": {
            "syn": {"path": "/x/syn", "n_images": n_images, "provenance": {"manifest.json": {}}},
            "real": {"path": "/x/real", "n_images": n_images, "provenance": {}},
        },
        "segmenters": {s: {"status": "ok", "datasets": {}} for s in quality},
    }
    for key in ("syn", "real"):
        truths = [
            np.zeros((40, 40), np.uint16) if key in empty else _labels(rng) for _ in range(n_images)
        ]
        for s, q in quality.items():
            rows = [metrics.image_metrics(t, _degrade(rng, t, q)) for t in truths]
            results["segmenters"][s]["datasets"][key] = {
                "status": "ok",
                "images": rows,
                "summary": metrics.summarize(rows),
            }
    return json.loads(json.dumps(_clean(results)))


def test_pooled_metrics_recomputed_from_rows_equal_the_summary():
    results = _made_up(1)
    for sres in results["segmenters"].values():
        for d in sres["datasets"].values():
            table = image_table(d["images"])
            got = table_scores(table)
            for m in HEADLINE:
                assert got[m] == d["summary"][m], m  # exactly, not approximately
            # unit bootstrap weights = the set as it is (up to summation order)
            ones = np.ones((1, len(d["images"])), np.int64)
            again = table_scores(table, ones)
            for m in HEADLINE:
                assert again[m][0] == pytest.approx(d["summary"][m], rel=1e-12)


def test_compute_validity_intervals_seeded():
    results = _made_up(2)
    assert classify_test_sets(results) == {"syn": "manifest.json", "real": None}
    v1 = compute_validity(results, n_boot=300, seed=5)
    v2 = compute_validity(results, n_boot=300, seed=5)
    v3 = compute_validity(results, n_boot=300, seed=6)
    assert v1 == v2 and v1 != v3
    assert v1["synthetic"] == ["syn"] and v1["real"] == ["real"]
    (comp,) = v1["comparisons"]
    assert comp["segmenters"] == ["a", "b", "c", "d"] and comp["n_images"] == {"syn": 8, "real": 8}
    for m in HEADLINE:
        block = comp["metrics"][m]
        for stat in ("spearman", "kendall"):
            value, ci = block[stat]["value"], block[stat]["ci"]
            assert -1 <= value <= 1 and ci["low"] <= value <= ci["high"]
        for s, sc in block["scores"].items():
            d = results["segmenters"][s]["datasets"]
            assert sc["synthetic"] == d["syn"]["summary"][m]
            assert sc["real"] == d["real"]["summary"][m]
            assert sc["ratio"] == pytest.approx(sc["synthetic"] / sc["real"])
            for side in ("synthetic", "real", "ratio"):
                ci = sc[f"{side}_ci"]
                assert ci["low"] <= sc[side] <= ci["high"] and ci["n"] == 300
        xs = [block["scores"][s]["synthetic"] for s in comp["segmenters"]]
        xr = [block["scores"][s]["real"] for s in comp["segmenters"]]
        assert block["spearman"]["value"] == pytest.approx(stats.spearmanr(xs, xr).statistic)
        assert block["kendall"]["value"] == pytest.approx(stats.kendalltau(xs, xr).statistic)
        ranks = [block["scores"][s]["rank_real"] for s in block["ranking_real"]]
        assert ranks == sorted(ranks) and ranks[0] == 1
        # a flip is a pair ordered one way on synthetic and the other way on real
        for f in block["flips"]:
            a, b = f["better_on_synthetic"], f["better_on_real"]
            sa, sb = block["scores"][a], block["scores"][b]
            assert sa["synthetic"] > sb["synthetic"] and sa["real"] < sb["real"]
            assert 0 <= f["bootstrap_share"] <= 1
        n = len(comp["segmenters"])
        n_flips = sum(
            (xs[i] - xs[j]) * (xr[i] - xr[j]) < 0 for i in range(n) for j in range(i + 1, n)
        )
        assert len(block["flips"]) == n_flips


def test_error_profile_against_counts_by_hand():
    results = _made_up(7)
    (comp,) = compute_validity(results, n_boot=20)["comparisons"]
    assert set(comp["errors"]) == set(comp["segmenters"])
    for s, e in comp["errors"].items():
        for side, key in (("synthetic", "syn"), ("real", "real")):
            rows = results["segmenters"][s]["datasets"][key]["images"]
            tp = sum(r["tp"][0] for r in rows)  # IoU 0.5 is the first threshold
            n_true, n_pred = sum(r["n_true"] for r in rows), sum(r["n_pred"] for r in rows)
            assert e[side]["extra"] == pytest.approx((n_pred - tp) / n_pred)
            assert e[side]["missed"] == pytest.approx((n_true - tp) / n_true)
            assert e[side]["pred_per_true"] == pytest.approx(n_pred / n_true)
    # a segmenter that finds nothing: no predictions, every object missed
    rows = [
        dict(r, n_pred=0, tp50=0) for r in results["segmenters"]["d"]["datasets"]["syn"]["images"]
    ]
    table = image_table(rows)
    assert error_profile(table) == {"extra": None, "missed": 1.0, "pred_per_true": 0.0}
    # worse segmenters make more errors of both kinds here
    assert comp["errors"]["d"]["real"]["missed"] > comp["errors"]["a"]["real"]["missed"]


def test_flips_and_flags():
    # c is best on synthetic but worst on real: a clear flip; flagged by key
    results = _made_up(3)
    seg = results["segmenters"]
    seg["c"]["datasets"], seg["a"]["datasets"] = (
        {"syn": seg["a"]["datasets"]["syn"], "real": seg["c"]["datasets"]["real"]},
        {"syn": seg["c"]["datasets"]["syn"], "real": seg["a"]["datasets"]["real"]},
    )
    results["datasets"]["syn"]["provenance"] = {}
    with pytest.raises(CellsynthError, match="no synthetic test set"):
        compute_validity(results, n_boot=10)
    v = compute_validity(results, synthetic=["syn"], n_boot=50)
    assert v["reasons"] == {"syn": "flagged"}
    flips = v["comparisons"][0]["metrics"]["ap50"]["flips"]
    assert {"better_on_synthetic": "c", "better_on_real": "a"} in [
        {k: f[k] for k in ("better_on_synthetic", "better_on_real")} for f in flips
    ]
    assert v["comparisons"][0]["metrics"]["ap50"]["spearman"]["value"] < 1
    # by path, and through the dataset entry's flag
    assert classify_test_sets(results, ["/x/syn"])["syn"] == "flagged"
    results["datasets"]["syn"]["synthetic"] = True
    assert classify_test_sets(results)["syn"] == "flagged"


def test_validity_errors():
    results = _made_up(4)
    with pytest.raises(CellsynthError, match="no real test set"):
        compute_validity(results, synthetic=["real"], n_boot=10)
    with pytest.raises(CellsynthError, match="no such test set"):
        compute_validity(results, synthetic=["nope"], n_boot=10)
    two = _made_up(4, quality={"a": 0.9, "b": 0.6})
    with pytest.raises(CellsynthError, match="at least 3 segmenters"):
        compute_validity(two, n_boot=10)
    failed = _made_up(4)
    failed["segmenters"]["d"]["datasets"]["real"]["status"] = "failed"
    failed["segmenters"]["c"]["status"] = "failed"
    failed["segmenters"]["c"]["datasets"]["syn"]["summary"] = None
    with pytest.raises(CellsynthError, match="at least 3 segmenters.*got 2"):
        compute_validity(failed, n_boot=10)
    empty = _made_up(4, empty=("real",))
    with pytest.raises(CellsynthError, match="real has no objects"):
        compute_validity(empty, n_boot=10)
    with pytest.raises(CellsynthError, match="bootstrap"):
        compute_validity(results, n_boot=0)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    base = tmp_path_factory.mktemp("sims")
    real, syn, syn2 = base / "real", base / "syn", base / "syn2"
    simulate_dataset(real, n_train=2, n_test=4, seed=1, size=(64, 64), density=0.5)
    simulate_dataset(syn, n_train=2, n_test=4, seed=2, size=(64, 64), density=0.7)
    simulate_dataset(syn2, n_train=0, n_test=3, seed=3, size=(64, 64), density=0.3)
    (syn / "manifest.json").write_text(json.dumps({"cellsynth_version": "test", "seeds": [0, 1]}))
    return real, syn, syn2


THREE = ["classical", "test-val-nodeclump", "test-val-level"]


def test_run_writes_validity_and_report(sims, tmp_path, capsys):
    real, syn, _ = sims
    out = tmp_path / "bench"
    results = run_benchmark(
        None, [real / "test", syn], THREE, out, progress=False, n_boot=100, n_samples=1
    )
    saved = json.loads((out / "results.json").read_text())
    assert saved["validity"] == results["validity"]
    v = saved["validity"]
    assert v["synthetic"] == ["syn-test"] and v["real"] == ["real-test"]
    assert v["reasons"] == {"syn-test": "manifest.json"}
    comp = v["comparisons"][0]
    assert comp["segmenters"] == THREE
    for m in HEADLINE:
        for s in THREE:
            stored = saved["segmenters"][s]["datasets"]["real-test"]["summary"][m]
            assert comp["metrics"][m]["scores"][s]["real"] == stored
    page = (out / "report.html").read_text()
    assert "Does the synthetic benchmark agree with real data?" in page
    assert page.count("synthetic against real score' src='data:image/png;base64,") == 4
    assert "Spearman" in page and "Kendall" in page
    assert "Error profile (IoU 0.5)" in page

    # benchmark validate: recomputes with other settings, rewrites results.json + report.html
    from cellsynth.cli import main

    main(["benchmark", "validate", str(out), "--bootstrap", "50", "--bootstrap-seed", "3"])
    text = capsys.readouterr().out
    assert "Spearman" in text and "syn-test" in text and "classical" in text
    assert "extra syn/real" in text
    again = json.loads((out / "results.json").read_text())
    assert again["validity"]["method"]["n_boot"] == 50 and again["validity"]["method"]["seed"] == 3
    assert again["segmenters"] == saved["segmenters"]  # nothing else changes
    assert "Does the synthetic benchmark agree" in (out / "report.html").read_text()


def test_cli_run_flagged_train_real_and_errors(sims, tmp_path, capsys):
    from cellsynth.cli import main

    real, syn, syn2 = sims
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("segmenters:\n  classical: {options: {tune: false}}\n")
    out = tmp_path / "cli"
    main(
        [
            "benchmark", "run", "--train", str(syn), "--train-real", str(real),
            "--test", str(real / "test"), "--synthetic-test", str(syn2),
            "--segmenters", ",".join(THREE), "--config", str(cfg), "--cache", str(tmp_path / "c"),
            "--bootstrap", "40", "--samples", "0", "--out", str(out), "--quiet",
        ]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert "rank agreement" in text
    saved = json.loads((out / "results.json").read_text())
    assert saved["datasets"]["syn2-test"]["synthetic"] is True
    assert "synthetic" not in saved["datasets"]["real-test"]
    assert saved["validity"]["reasons"] == {"syn2-test": "flagged"}
    # train on synthetic, test on real: a second training with its own cache entry
    lv = saved["segmenters"]["test-val-level"]
    assert lv["train_real"]["status"] == "ok" and lv["train_real"]["trained"]
    assert lv["cache_key"] != lv["train_real"]["cache_key"]
    assert saved["train_real"]["path"] == str((real / "train").resolve())
    t = saved["train_transfer"]["test-val-level"]["real-test"]["ap50"]
    assert t["synthetic"] == lv["datasets"]["real-test"]["summary"]["ap50"]
    assert t["real"] == lv["train_real"]["datasets"]["real-test"]["summary"]["ap50"]
    assert t["ratio"] == pytest.approx(t["synthetic"] / t["real"])
    page = (out / "report.html").read_text()
    assert "Trained on synthetic, tested on real" in page and "ratio AP@0.5" in page
    assert len(list((tmp_path / "c").iterdir())) == 2 * 3  # two trainings of each segmenter

    # errors: one line, exit 2, nothing written
    def fails(args, match):
        with pytest.raises(SystemExit) as exc:
            main(args)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("\n") == 1 and match in err, err

    before = (out / "results.json").read_bytes()
    fails(["benchmark", "validate", str(out), "--synthetic", "nosuch"], "no such test set")
    fails(["benchmark", "validate", str(out), "--synthetic", "real-test"], "no real test set")
    assert (out / "results.json").read_bytes() == before
    fails(["benchmark", "validate", str(tmp_path / "missing")], "no benchmark results")
    only_real = tmp_path / "only-real"
    run_benchmark(None, [real], THREE, only_real, progress=False, n_boot=10, n_samples=0)
    assert "validity" not in json.loads((only_real / "results.json").read_text())
    fails(["benchmark", "validate", str(only_real)], "no synthetic test set")
    # fewer than 3 segmenters: the run succeeds and records why there is no rank agreement
    two = tmp_path / "two"
    r = run_benchmark(None, [real, syn], THREE[:2], two, progress=False, n_boot=10, n_samples=0)
    assert "at least 3 segmenters" in r["validity"]["error"]
    assert "rank agreement not computed" in (two / "report.html").read_text()
    fails(["benchmark", "validate", str(two)], "at least 3 segmenters")
    fails(
        ["benchmark", "run", "--test", str(real), "--train-real", str(real), "--out",
         str(tmp_path / "z"), "--quiet"],
        "--train-real needs --train",
    )  # fmt: skip


# ----------------------------------------------------------------------------- paired fidelity


def test_paired_fidelity(sims, tmp_path, capsys):
    from cellsynth.cli import main

    real, _, _ = sims
    test = CanonicalDataset(real, "test")
    samples = list(test)
    seg = Classical(tune=False)
    masks = [s.labels for s in samples]
    same = paired_fidelity([s.image for s in samples], [s.image for s in samples], masks, seg)
    assert same["ratio"]["ap50"] == 1.0 and same["n_images"] == 4
    assert same["ratio_ci"]["ap50"]["low"] == same["ratio_ci"]["ap50"]["high"] == 1.0
    rng = np.random.default_rng(0)
    noisy = [
        np.clip(s.image.astype(float) + rng.normal(0, 60, s.image.shape), 0, 255).astype(np.uint8)
        for s in samples
    ]
    worse = paired_fidelity(noisy, [s.image for s in samples], masks, seg, n_boot=200)
    assert worse["real"] == same["real"] and worse["ratio"]["ap50"] < 1.0
    ci = worse["ratio_ci"]["ap50"]
    assert ci["low"] <= worse["ratio"]["ap50"] <= ci["high"]
    assert worse["ratio"]["ap50"] == pytest.approx(
        worse["translated"]["ap50"] / same["real"]["ap50"]
    )
    with pytest.raises(CellsynthError, match="pair up"):
        paired_fidelity(noisy[:2], noisy, masks, seg)
    with pytest.raises(CellsynthError, match="no objects"):
        paired_fidelity(noisy, noisy, [np.zeros_like(m) for m in masks], seg)

    # the command: two canonical splits with the same names
    translated = tmp_path / "translated"
    write_dataset(
        translated,
        {"test": [Sample(s.name, im, s.labels) for s, im in zip(samples, noisy)]},
    )
    out = tmp_path / "fid.json"
    main(
        ["benchmark", "fidelity", "--real", str(real / "test"), "--translated", str(translated),
         "--segmenter", "classical", "--bootstrap", "200", "--out", str(out)]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert "paired fidelity of classical on 4 image pairs" in text and "ap50" in text
    doc = json.loads(out.read_text())
    assert doc["ratio"]["ap50"] == pytest.approx(worse["ratio"]["ap50"])
    assert doc["pairs"] == [[n, n] for n in test.names] and doc["paired_by"] == "name"
    assert doc["mask_mismatch"] == []
    # mismatched names: one line, exit 2
    renamed = tmp_path / "renamed"
    moved = [np.roll(s.labels, 3, axis=1) if k == 0 else s.labels for k, s in enumerate(samples)]
    write_dataset(
        renamed,
        {"test": [Sample(f"x{s.name}", im, m) for s, im, m in zip(samples, noisy, moved)]},
    )
    fid = ["benchmark", "fidelity", "--real", str(real), "--translated", str(renamed)]
    with pytest.raises(SystemExit) as exc:
        main([*fid, "--segmenter", "classical"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "same mask names" in err
    # ... unless a synth manifest.json says which real mask each sample was made from
    records = [{"name": f"x{s.name}", "mask_source": f"/m/{s.name}.tif"} for s in samples]
    (renamed / "manifest.json").write_text(json.dumps({"samples": records}))
    out2 = tmp_path / "fid2.json"
    main([*fid, "--segmenter", "classical", "--bootstrap", "200", "--out", str(out2)])
    text = capsys.readouterr().out
    assert "through manifest.json" in text and "warning: 1 translated sample" in text
    doc2 = json.loads(out2.read_text())
    assert doc2["paired_by"] == "manifest.json" and doc2["mask_mismatch"] == [f"x{test.names[0]}"]
    assert doc2["ratio"] == doc["ratio"]  # scored against the real masks all the same
    records[0]["mask_source"] = "/m/elsewhere.tif"
    (renamed / "manifest.json").write_text(json.dumps({"samples": records}))
    with pytest.raises(SystemExit) as exc:
        main([*fid, "--segmenter", "classical"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "masks not in --real: elsewhere" in err
    with pytest.raises(SystemExit) as exc:
        main(
            ["benchmark", "fidelity", "--real", str(real), "--translated", str(translated),
             "--segmenter", "classical", "--out", str(out)]
        )  # fmt: skip
    assert exc.value.code == 2 and "already exists" in capsys.readouterr().err
    assert not math.isnan(doc["real"]["ap50"])
