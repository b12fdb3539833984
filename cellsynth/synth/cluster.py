"""``cellsynth synth --dask``: the seeds of a run made by the workers of a Dask cluster.

The chunks are the batches of :func:`~cellsynth.synth.scheduler.seed_groups` (``--batch`` seeds;
with a GAN the fixed groups of the whole seed list, so a chunk's numbers are those of a
single-process run). Each chunk is one task, :func:`run_chunk`: the worker loads the generator
and the translator(s) once (kept for the next chunks, and for a next run with the same
checkpoints; checked against the client's sha256s and precision), and runs the chunk through the same
:class:`~cellsynth.synth.scheduler.Scheduler` the local run uses, in its own process.

Who writes (``--dask-write``):

- ``auto`` (default): a worker that sees ``--out`` writes the chunk's files there itself, each
  atomically, exactly as a local run does; a worker that does not see it (no shared filesystem)
  makes the files in a temporary folder of its own and returns their bytes, and the client
  writes them. Whether a worker sees ``--out`` is checked per chunk with a token file the client
  puts in ``--out/.partial`` (a folder of the same name on a worker's own disk does not have
  it). Workers writing is the default because the images then never travel through the
  scheduler and the client, whose network and disk would otherwise bound the run.
- ``workers``: a worker that does not see ``--out`` is an error (one line).
- ``client``: the workers always return the bytes.

Retries and resume: a task whose worker dies is run again by the scheduler on another worker
(up to Dask's ``distributed.scheduler.allowed-failures``, then the run stops with one line), and
one that raised is run once more (:data:`RETRIES`) before its error ends the run. A
rerun chunk first removes what the dead worker left in ``.partial`` and skips (reads back) its
samples that are already complete, as ``--resume`` does after the client itself was killed.
The client shows one progress bar, advanced as chunks finish, and writes ``annotations.json``
and ``manifest.json`` at the end, as a local run does.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

from cellsynth.atomic import write_bytes, write_text
from cellsynth.cluster import n_slots, require_distributed
from cellsynth.errors import CellsynthError
from cellsynth.synth.manifest import dumps, shard_tag
from cellsynth.synth.sample import (
    PARTIAL,
    SUBFOLDERS,
    Plan,
    done_sample,
    is_done,
    sample_name,
)
from cellsynth.synth.scheduler import (
    COUNTS,
    STAGES,
    InlinePool,
    Scheduler,
    clear_partial,
    seed_groups,
)

# ---- the worker side ---------------------------------------------------------------------------
RETRIES = 1  # a chunk that raised (a network filesystem's hiccup, ...) is run once more
_INPUTS: dict = {}  # key -> loaded inputs: one set at a time, kept between chunks (and runs)
_INPUTS_LOCK = threading.Lock()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


def _here() -> str:
    return f"{socket.gethostname()} (PID {os.getpid()})"


def token_name(shard) -> str:
    """The token file of a run (or shard) in ``OUT/.partial``."""
    return f"dask-{'run' if shard is None else shard_tag(shard)}.token"


def _sees(out: Path, name: str, token: str) -> bool:
    """Whether this process sees the client's ``--out`` (its token file)."""
    try:
        return (out / PARTIAL / name).read_text() == token
    except (OSError, UnicodeDecodeError):
        return False


def worker_inputs(plan: Plan, checkpoints: dict):
    """The run's generator and translators, loaded once per worker process (and kept for the
    next run with the same checkpoints, device and precision)."""
    from cellsynth.synth.sources import open_inputs

    opts = plan.options
    key = dumps(
        {
            "masks": opts.sources.masks,
            "images": opts.sources.images,
            "spots_model": opts.spots.model,
            "fp32": opts.gan.fp32,
            "device": opts.run.device,
            "channels": opts.render.channels,
            "checkpoints": checkpoints,
        }
    )
    with _INPUTS_LOCK:
        if key not in _INPUTS:
            _INPUTS.clear()  # another run's networks: let them go first
            inputs = open_inputs(plan.options)
            if dumps(inputs.checkpoints) != dumps(checkpoints):
                raise CellsynthError(
                    f"Dask worker {_here()}: its checkpoints differ from the client's "
                    f"({dumps(inputs.checkpoints).strip()} here); the workers need the same "
                    "files at the same paths, and the same precision (same kind of CPU/GPU, or "
                    "--fp32)"
                )
            _INPUTS[key] = inputs
        return _INPUTS[key]


def run_chunk(plan: Plan, checkpoints: dict, groups, done, token: str, mode: str) -> dict:
    """Make the samples of ``groups`` (a chunk) on a worker; the samples in ``done`` are on disk.

    Returns a dict: ``records`` and ``anns`` by seed, ``times`` (seconds per stage), ``made``
    (seeds made), ``files`` (seed -> bytes of image, spots, mask when the client writes them),
    ``unread`` (seeds on disk that the client reads back), ``wrote`` (True when this worker
    wrote into ``--out``), ``seconds`` (the whole chunk), ``load_seconds`` (of that, loading
    the networks: the first chunk of a run on a worker) and ``worker``.
    """
    t0 = time.perf_counter()
    out = Path(plan.out)
    seeds = [s for g in groups for s in g]
    sees = mode != "client" and _sees(out, token_name(plan.options.run.shard), token)
    if mode == "workers" and not sees:
        raise CellsynthError(
            f"Dask worker {_here()} does not see --out {out} (no shared filesystem there); put "
            "--out on a filesystem every worker mounts at the same path, or use --dask-write "
            "client (or auto)"
        )
    t_load = time.perf_counter()
    inputs = worker_inputs(plan, checkpoints)
    load_s = time.perf_counter() - t_load
    done = set(done)
    tmp = None
    if sees:
        todo = [s for s in seeds if s not in done and not is_done(out, s)]
        clear_partial(out, todo)  # what a worker that died on this chunk left
        read, skip, work = [s for s in seeds if s not in todo], [], plan
    else:
        tmp = Path(tempfile.mkdtemp(prefix="cellsynth-chunk-"))
        for sub in ("images", "masks", "spots", PARTIAL):
            (tmp / sub).mkdir()
        read, skip = [], [s for s in seeds if s in done]
        work = dataclasses.replace(plan, out=str(tmp))
    try:
        sched = Scheduler(work, inputs, InlinePool(work), _NoBar())
        sched.run(groups, read, skip=skip)
        made = [s for s in seeds if s not in read and s not in skip]
        files = {}
        if tmp is not None:
            for s in made:
                name = sample_name(s)
                files[s] = tuple((tmp / d / f"{name}{e}").read_bytes() for d, e in SUBFOLDERS)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "records": sched.records,
        "anns": sched.anns,
        "times": sched.times,
        "counts": sched.counts,
        "made": made,
        "files": files,
        "unread": skip,
        "wrote": sees,
        "seconds": time.perf_counter() - t0,
        "load_seconds": load_s,
        "worker": _here(),
    }


# ---- the client side ---------------------------------------------------------------------------
def _same(x):
    return x


def write_sample_files(out: Path, seed: int, blobs) -> None:
    """Write a sample's files that a worker returned, each atomically, the mask last (a sample
    exists once its mask does)."""
    name = sample_name(seed)
    for (sub, ext), data in zip(SUBFOLDERS, blobs):
        write_bytes(out / sub / f"{name}{ext}", data)


def _lost(distributed, exc, chunk) -> CellsynthError | None:
    """One line for a chunk that the cluster lost (None: not the cluster's doing)."""
    seeds = f"seeds {chunk[0]}..{chunk[-1]}" if len(chunk) > 1 else f"seed {chunk[0]}"
    if isinstance(exc, distributed.KilledWorker):
        return CellsynthError(
            f"Dask workers died each time they ran the chunk of {seeds} ({exc}); see the "
            "workers' logs (out of memory?); the samples written so far are kept: rerun with "
            "--resume"
        )
    if isinstance(exc, distributed.CancelledError):
        return CellsynthError(
            f"the Dask cluster dropped the chunk of {seeds} (scheduler gone?); the samples "
            "written so far are kept: rerun with --resume"
        )
    return None


def run_samples_dask(client, plan: Plan, inputs, seed_list: list[int], checkpoints: dict):
    """Make (or, resuming, read back) the samples of this run on the cluster of ``client``.

    Returns (records in seed-list order, annotations by seed, seconds per stage, number
    written, counts as :func:`cellsynth.synth.scheduler.run_samples` gives them, facts about
    the distributed run: chunks, workers, who wrote, seconds).
    """
    from tqdm import tqdm

    distributed = require_distributed()
    run = plan.options.run
    out = Path(plan.out)
    groups = seed_groups(seed_list, run.shard, run.batch, inputs.generator is not None)
    mine = [s for g in groups for s in g]
    clear_partial(out, mine)  # leftovers of a killed run
    done = {s for s in mine if is_done(out, s)} if (run.resume or run.shard) else set()
    token = secrets.token_hex(16)
    token_path = out / PARTIAL / token_name(run.shard)
    write_text(token_path, token)
    records: dict[int, dict] = {}
    anns: dict[int, list] = {}
    times = dict.fromkeys(STAGES, 0.0)
    counts = dict.fromkeys(COUNTS, 0)
    facts = {
        "chunks": 0,
        "slots": n_slots(client),
        "written_by_workers": 0,
        "written_by_client": 0,
        "chunk_seconds": 0.0,
        "load_seconds": 0.0,
        "workers_used": [],
    }
    used = set()
    bar = tqdm(
        total=len(mine), initial=len(done), desc="synth", unit="img", disable=not run.progress
    )
    t0 = time.perf_counter()
    futures = {}
    # the plan (options, a --masks DIR's file list) goes to the cluster once, as a task's result
    # that every chunk takes, copied to every worker (so any may run a chunk; a new worker gets
    # it from the others, and it is made again if all copies are lost)
    shared = client.submit(_same, plan, key=f"cellsynth-synth-plan-{token[:12]}", pure=False)
    try:
        distributed.wait(shared)
        client.replicate([shared])
        for k, group in enumerate(groups):
            fut = client.submit(
                run_chunk,
                shared,
                checkpoints,
                [group],
                sorted(done.intersection(group)),
                token,
                run.dask_write,
                key=f"cellsynth-synth-{token[:12]}-{k}",
                pure=False,
                retries=RETRIES,
            )
            futures[fut] = group
        for fut in distributed.as_completed(list(futures)):
            group = futures.pop(fut)
            try:
                res = fut.result()
            except Exception as exc:
                lost = _lost(distributed, exc, group)
                if lost is None:
                    raise
                raise lost from None
            for s, blobs in res["files"].items():
                write_sample_files(out, s, blobs)
            records.update(res["records"])
            anns.update(res["anns"])
            for s in res["unread"]:
                rec, a, _ = done_sample(plan, s)
                records[s], anns[s] = rec, a
            for name, v in res["times"].items():
                times[name] = times.get(name, 0.0) + v
            for name, v in res["counts"].items():
                counts[name] += v
            key = "written_by_workers" if res["wrote"] else "written_by_client"
            facts[key] += len(res["made"])
            facts["chunks"] += 1
            facts["chunk_seconds"] += res["seconds"]
            facts["load_seconds"] += res["load_seconds"]
            used.add(res["worker"])
            bar.update(len(group) - len(done.intersection(group)))
    finally:
        try:
            client.cancel([*futures, shared])  # the plan, and after a failure the other chunks
        except Exception:  # the cluster is gone already
            pass
        bar.close()
        token_path.unlink(missing_ok=True)
        clear_partial(out, mine)
        try:
            (out / PARTIAL).rmdir()
        except OSError:
            pass
    facts["seconds"] = time.perf_counter() - t0
    facts["workers_used"] = sorted(used)
    return [records[s] for s in mine], anns, times, len(mine) - len(done), counts, facts
