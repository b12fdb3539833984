"""Predicting and scoring one test image: the step the runner repeats over a test set, in this
process or on the workers of a Dask cluster (:mod:`cellsynth.benchmark.cluster`), so both give
the same rows and the same failures."""

from __future__ import annotations

import time

import numpy as np

from cellsynth.benchmark import metrics
from cellsynth.errors import CellsynthError, first_line


def error_line(exc: BaseException) -> str:
    """``Type: first line of the message`` of an exception."""
    return f"{type(exc).__name__}: {first_line(exc)}".strip().rstrip(":")


def check_prediction(pred, image: np.ndarray, where: str) -> np.ndarray:
    """Validate a segmenter's output against its input image; return the labels."""
    if not isinstance(pred, np.ndarray):
        raise CellsynthError(f"{where}: prediction is a {type(pred).__name__}, not a numpy array")
    if pred.shape != image.shape[:2]:
        raise CellsynthError(
            f"{where}: prediction shape {pred.shape} does not match image shape {image.shape[:2]}"
        )
    if not np.issubdtype(pred.dtype, np.integer) or pred.dtype == bool:
        raise CellsynthError(f"{where}: prediction dtype {pred.dtype} is not integer labels")
    if pred.size and pred.min() < 0:
        raise CellsynthError(f"{where}: prediction has negative labels")
    return pred


def score_image(seg, sample, where: str) -> tuple[dict, np.ndarray]:
    """Predict ``sample.image`` with segmenter ``seg`` and score it against ``sample.labels``.

    Returns (the per-image metrics row with ``name`` and ``predict_s``, the predicted labels).
    Raises whatever the segmenter raises, or CellsynthError for a prediction of the wrong kind
    (``where`` names the image in that message).
    """
    t0 = time.perf_counter()
    pred = seg.predict(sample.image)
    elapsed = time.perf_counter() - t0
    pred = check_prediction(pred, sample.image, where)
    row = metrics.image_metrics(sample.labels, pred)
    row.update(name=sample.name, predict_s=elapsed)
    return row, pred


def new_dataset_result() -> dict:
    """The result of one segmenter on one test set, before any image."""
    return {"status": "ok", "error": None, "predict_s": 0.0, "images": [], "summary": None}


def sample_indices(n: int, k: int) -> list[int]:
    """``k`` image indices spread over ``n`` (the predictions shown in the report)."""
    if n == 0 or k <= 0:
        return []
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, min(k, n))})


def finish_dataset_result(dres: dict) -> dict:
    """Add the summary of a test set's rows (when it went through)."""
    if dres["status"] == "ok" and dres["images"]:
        dres["summary"] = metrics.summarize(dres["images"])
        dres["predict_s_per_image"] = dres["predict_s"] / len(dres["images"])
    return dres
