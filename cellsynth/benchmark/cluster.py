"""``cellsynth benchmark run --dask``: the test images predicted and scored by Dask workers.

Training stays where it is (in the runner's process, within its budget, cached as before). The
trained segmenter is then sent once to every worker (:func:`ship`: ``scatter`` with broadcast;
workers joining later get it from the others) and dropped again (:func:`release`) before the
next segmenter is sent, so a worker holds one segmenter at most. The client reads the test
images (no shared filesystem is needed) and sends them in chunks, a few chunks per worker in
flight at a time, so a large test set never sits in memory whole; each worker runs
:func:`cellsynth.benchmark.scoring.score_image` on its chunk, the very step of a run without
Dask. The rows are put back in image order and the first failing image ends the test set, as
in a run without Dask, so the results are the same (only the times differ). A task whose
worker dies is run again by the scheduler on another worker; a chunk that the cluster cannot
run at all (its workers died each time, the segmenter cannot be unpickled there) fails the
segmenter on that test set with one line, like an error of the segmenter itself.
"""

from __future__ import annotations

import math
import traceback

from cellsynth.benchmark.scoring import (
    error_line,
    finish_dataset_result,
    new_dataset_result,
    sample_indices,
    score_image,
)
from cellsynth.cluster import n_slots, require_distributed
from cellsynth.datasets.io import write_labels

MAX_CHUNK = 16  # images per task at most
CHUNKS_PER_SLOT = 4  # aim at this many chunks per worker thread (balance against overhead)
IN_FLIGHT_PER_SLOT = 2  # chunks sent ahead per worker thread


def ship(client, seg):
    """Send the segmenter ``seg`` to every worker once; returns the handle the tasks take."""
    return client.scatter(seg, broadcast=True, hash=False)


def release(client, shipped) -> None:
    """Drop a shipped segmenter from the workers."""
    try:
        client.cancel([shipped])
    except Exception:  # the cluster is gone: nothing is held any more
        pass


def score_chunk(seg, items, show, name: str, dkey: str) -> dict:
    """On a worker: predict and score the ``(index, sample)`` pairs of ``items`` in order, until
    the first failure.

    Returns ``rows`` (the metrics rows of the images that went through), ``shown`` (index ->
    (name, predicted labels) for the indices in ``show``) and ``failure`` (None, or the failing
    image's name, error line and traceback).
    """
    rows, shown = [], {}
    for i, sample in items:
        try:
            row, pred = score_image(seg, sample, f"{name} on {dkey}/{sample.name}")
        except Exception as exc:
            trace = "".join(traceback.format_exception(exc))
            return {"rows": rows, "shown": shown, "failure": (sample.name, error_line(exc), trace)}
        rows.append(row)
        if i in show:
            shown[i] = (sample.name, pred)
    return {"rows": rows, "shown": shown, "failure": None}


def chunk_size(n_images: int, slots: int) -> int:
    """Images per task: about :data:`CHUNKS_PER_SLOT` tasks per worker thread, at most
    :data:`MAX_CHUNK` images each."""
    return max(1, min(MAX_CHUNK, math.ceil(n_images / (CHUNKS_PER_SLOT * max(1, slots)))))


def score_test_set(client, shipped, name, tag, dkey, ds, tmp, n_samples, progress, failed):
    """Predict and score test set ``dkey`` (``ds``) with the shipped segmenter on the cluster.

    ``failed(stage, error_line, traceback) -> line`` records a failure (as the runner does for
    one in its own process). Returns the test set's result dict, as the runner's own loop
    makes it; the predictions of the ``n_samples`` shown images go to ``tmp/samples``.
    """
    from tqdm import tqdm

    distributed = require_distributed()
    dres = new_dataset_result()
    show = set(sample_indices(len(ds), n_samples))
    slots = n_slots(client)
    size = chunk_size(len(ds), slots)
    starts = list(range(0, len(ds), size))
    bar = tqdm(total=len(ds), desc=f"{name}{tag} on {dkey}", disable=not progress, leave=False)
    pending = distributed.as_completed()
    which = {}  # future -> chunk number
    done: dict[int, dict] = {}
    sent = merged = 0

    def send() -> None:
        nonlocal sent
        k = sent
        idx = range(starts[k], min(starts[k] + size, len(ds)))
        items = [(i, ds[i]) for i in idx]
        fut = client.submit(
            score_chunk, shipped, items, show.intersection(idx), name, dkey, pure=False, retries=1
        )
        which[fut] = k
        pending.add(fut)
        sent += 1

    try:
        while sent < min(len(starts), IN_FLIGHT_PER_SLOT * slots):
            send()
        for fut in pending:
            k = which.pop(fut)
            try:
                done[k] = fut.result()
            except Exception as exc:  # the cluster's failure (a worker died each time, ...)
                first = ds.names[starts[k]]
                trace = "".join(traceback.format_exception(exc))
                where = f"{first} on the Dask cluster"
                done[k] = {"rows": [], "shown": {}, "failure": (where, error_line(exc), trace)}
            bar.update(len(done[k]["rows"]))
            stop = False
            while merged in done:  # in image order, as a run without Dask goes
                part = done.pop(merged)
                for row in part["rows"]:
                    dres["images"].append(row)
                    dres["predict_s"] += row["predict_s"]
                for _, (image, pred) in sorted(part["shown"].items()):
                    write_labels(tmp / "samples" / f"{name}{tag}" / dkey / f"{image}.tif", pred)
                merged += 1
                if part["failure"] is not None:
                    image, line, trace = part["failure"]
                    line = failed(f"predict {dkey}/{image}", line, trace)
                    dres.update(status="failed", error=line)
                    stop = True
                    break
            if stop:
                break
            if sent < len(starts):
                send()
    finally:
        rest = list(which)
        if rest:
            try:
                client.cancel(rest)
            except Exception:  # the cluster is gone already
                pass
        bar.close()
    return finish_dataset_result(dres)
