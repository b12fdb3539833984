"""Report: the training section (learning curves, post-processing chosen on validation)."""

from __future__ import annotations

import base64
import io

from PIL import Image

from cellsynth.benchmark.report import curve_plot, render_report, training_section


def _training(precision, curve, best, params, default=0.61, chosen=0.66):
    return {
        "precision": precision,
        "device": "cuda",
        "budget_minutes": 10.0,
        "seconds": 540.0,
        "steps": 1200,
        "epochs": 14.5,
        "validation": {"n_images": 12, "names": ["a", "b"], "fraction": 0.1, "seed": 0},
        "curve": curve,
        "best": best,
        "postprocess": {
            "params": params,
            "val_ap50": chosen,
            "default_val_ap50": default,
            "tried": 24,
        },
        "some_future_key": {"ignored": True},
    }


def _results(**trainings) -> dict:
    """Smallest results dict render_report accepts: one test dataset, no samples on disk."""
    segmenters = {}
    for name, training in trainings.items():
        segmenters[name] = {
            "status": "ok",
            "datasets": {"test": {"status": "ok"}},
            "training": training,
        }
    segmenters["classical"] = {"status": "ok", "datasets": {"test": {"status": "ok"}}}
    return {
        "thresholds": [0.5, 0.75],
        "train": None,
        "datasets": {"test": {"path": "/nowhere/test", "n_images": 3}},
        "segmenters": segmenters,
    }


def _curve(*points):
    return [
        {"minutes": m, "steps": 100 * i, "epochs": i / 2, "loss": 1.0 / (i + 1), "val_ap50": ap}
        for i, (m, ap) in enumerate(points)
    ]


def _decode(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    img.load()
    return img


def test_training_section_in_report(tmp_path):
    results = _results(
        unet=_training(
            "bf16",
            _curve((1.0, 0.3), (5.0, 0.7), (9.0, 0.65)),
            {"minutes": 5.0, "steps": 100, "val_ap50": 0.7},
            {"prob_threshold": 0.45, "min_size": 15},
        ),
        stardist=_training(
            "fp32",
            _curve((2.0, 0.4), (8.0, 0.6)),
            {"minutes": 8.0, "steps": 100, "val_ap50": 0.6},
            {"nms_thresh": 0.3},
        ),
    )
    page = render_report(tmp_path, results)
    assert page.count("<h2>Training and validation</h2>") == 1
    # after the dataset sections, before the segmenters
    i = page.index("Training and validation")
    assert page.index("<h2>Dataset test") < i < page.index("<h2>Segmenters</h2>")
    section = training_section(results)
    assert section.count("<img") == 1 and "src='data:image/png;base64," in section
    for text in ("prob_threshold=0.45", "min_size=15", "nms_thresh=0.3", "bf16", "fp32"):
        assert text in section
    assert "0.610 → 0.660" in section  # default -> chosen
    assert "<td>9.000</td>" in section  # 540 s trained = 9 minutes
    assert "<td class='l'>classical</td>" not in section  # no training dict: no row


def test_training_section_tolerates_missing_and_none(tmp_path):
    results = _results(
        empty_curve=_training("bf16", [], None, {}),
        only_keys={},
        junk={
            "precision": None,
            "seconds": None,
            "validation": None,
            "curve": [{"minutes": None, "val_ap50": 0.5}, {"minutes": 1.0, "val_ap50": None}],
            "best": None,
            "postprocess": None,
        },
    )
    results["segmenters"]["failed"] = {"status": "failed", "datasets": {}, "training": None}
    page = render_report(tmp_path, results)
    section = training_section(results)
    assert "Training and validation" in page
    assert "<img" not in section  # no usable curve point anywhere
    for name in ("empty_curve", "only_keys", "junk"):
        assert f"<td class='l'>{name}</td>" in section
    assert "<td class='l'>failed</td>" not in section
    assert curve_plot(results) is None

    # post-processing None on a segmenter that has a curve
    results = _results(unet=dict(_training("fp32", _curve((1.0, 0.2)), None, {}), postprocess=None))
    assert training_section(results).count("<img") == 1


def test_no_training_no_section(tmp_path):
    results = _results()
    results["segmenters"]["other"] = {"status": "failed", "datasets": {}, "training": None}
    page = render_report(tmp_path, results)
    assert "Training and validation" not in page
    assert training_section(results) == ""
    assert curve_plot(results) is None


def test_curve_plot(tmp_path):
    assert curve_plot(_results(unet=_training("bf16", [], None, {}))) is None
    uri = curve_plot(
        _results(
            unet=_training(
                "bf16",
                _curve((0.5, 0.1), (1.5, 0.4)),
                {"minutes": 1.5, "steps": 100, "val_ap50": 0.4},
                {"t": 0.5},
            )
        )
    )
    img = _decode(uri)
    assert img.format == "PNG"
    assert img.size[0] > 0 and img.size[1] > 0
