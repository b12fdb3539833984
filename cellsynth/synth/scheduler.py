"""Scheduling the samples: the main process drives the GAN(s) batch by batch while worker
processes (or this process, ``workers=0``) decode, render, add puncta and write.

Without a translator a sample is one task ("full"). With one, a sample is two tasks: "labels"
(decode + puncta) before the translator's batch and "finish" (puncta into the image + files)
after it, so the workers keep busy while the translator runs. A StyleGAN batch's numbers depend
(in the last bits) on its other members, so GAN batches are fixed groups of the whole seed list
and shards and resumed runs regenerate whole groups.

Generated masks with fewer cells than ``--min-cells`` take the two-task route too: between the
tasks, this process generates the seed's next latents one at a time (batches of one, so the
result does not depend on the group) and decodes them until one has enough cells.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import numpy as np

from cellsynth.synth.options import MAX_DRAWS
from cellsynth.synth.sample import PARTIAL, TASKS, Plan, is_done, make_labels, sample_name

STAGES = ("masks", "gan_masks", "gan_images", "images", "spots", "write")
# seeds whose generated mask came from a later latent; of those, the ones still below min_cells
COUNTS = ("redrawn", "below_min_cells")

# ---- pools: run a named task of :data:`TASKS` on a sample --------------------------------------
_PLAN: Plan | None = None


def _init_worker(plan: Plan) -> None:
    global _PLAN
    _PLAN = plan


def _run_task(name: str, args: tuple):
    return TASKS[name](_PLAN, *args)


class _Ready:
    def __init__(self, value):
        self.value = value

    def get(self):
        return self.value

    def ready(self):
        return True


class InlinePool:
    """The pool interface, run in this process (``workers=0``)."""

    def __init__(self, plan: Plan):
        self.plan = plan

    def submit(self, name, args):
        return _Ready(TASKS[name](self.plan, *args))

    def close(self):
        pass


class ProcessPool:
    """``workers`` spawned processes, each holding the plan."""

    def __init__(self, plan: Plan, workers: int):
        import multiprocessing as mp

        self.pool = mp.get_context("spawn").Pool(workers, _init_worker, (plan,))

    def submit(self, name, args):
        return self.pool.apply_async(_run_task, (name, args))

    def close(self):
        self.pool.terminate()
        self.pool.join()


# ---- which seeds, in which groups ------------------------------------------------------------
def seed_groups(seed_list: list[int], shard, batch: int, gan: bool) -> list[list[int]]:
    """The batches of this run (a shard ``(i, N)`` takes every N-th seed, or with a GAN every
    N-th fixed group of the seed list)."""
    if gan:
        groups = [seed_list[k : k + batch] for k in range(0, len(seed_list), batch)]
        return groups if shard is None else groups[shard[0] :: shard[1]]
    mine = seed_list if shard is None else seed_list[shard[0] :: shard[1]]
    return [mine[k : k + batch] for k in range(0, len(mine), batch)]


def clear_partial(out: Path, seeds) -> None:
    """Remove what killed runs left of these samples in ``out/.partial`` (their files, and the
    temporary names of a write that was cut short)."""
    for s in seeds:
        for pattern in (f"{sample_name(s)}.*", f".{sample_name(s)}.*"):
            for f in (out / PARTIAL).glob(pattern):
                f.unlink(missing_ok=True)


# ---- the run -----------------------------------------------------------------------------------
class Scheduler:
    """Runs the samples of ``groups`` (skipping ``done``) through ``pool``; collects their
    records, annotations and per-stage seconds."""

    def __init__(self, plan: Plan, inputs, pool, bar):
        self.plan, self.inputs, self.pool, self.bar = plan, inputs, pool, bar
        self.records: dict[int, dict] = {}
        self.anns: dict[int, list] = {}
        self.times = dict.fromkeys(STAGES, 0.0)
        self.waiting: deque = deque()  # (seeds, "labels" jobs) waiting for the translator(s)
        self.writing: deque = deque()  # "full" / "finish" jobs
        self.max_pending = max(2, 2 * plan.options.run.workers)
        gan = inputs.generator is not None
        self.min_cells = (plan.options.cells.min_cells or 0) if gan else 0
        self.counts = dict.fromkeys(COUNTS, 0)

    def _add_times(self, times: dict) -> None:
        for k, v in times.items():
            self.times[k] += v

    def collect(self, result) -> None:
        rec, a, t = result
        self.records[rec["seed"]] = rec
        self.anns[rec["seed"]] = a
        self._add_times(t)

    def drain(self, block: bool) -> None:
        while self.writing and (block or self.writing[0].ready()):
            self.collect(self.writing.popleft().get())
            self.bar.update(1)

    def _soft_masks(self, seeds: list[int], batch: int, draws=None) -> np.ndarray:
        """The generator's soft masks (uint8) of ``seeds`` at the run's sampling options."""
        gen, gan = self.inputs.generator, self.plan.options.gan
        t0 = time.perf_counter()
        x = gen.generate(
            seeds,
            trunc=gan.trunc,
            class_idx=gan.class_idx,
            noise_mode=gan.noise_mode,
            batch=batch,
            draws=draws,
            debias=gan.debias,
            decode_opts=self.plan.options.decode.codec_kwargs(),
        )
        raws = gen.to_uint8(x)
        self.times["gan_masks"] += time.perf_counter() - t0
        return raws

    def _generate(self, group: list[int], done: set) -> list:
        """The generator's soft masks of the group's seeds not yet done (None without GAN)."""
        if self.inputs.generator is None:
            return [None] * sum(s not in done for s in group)
        raws = self._soft_masks(group, self.plan.options.run.batch)
        return [r for s, r in zip(group, raws) if s not in done]

    def _redraw(self, seed: int, got: tuple) -> tuple:
        """``got`` (labels, spots, times) of ``seed``, or, when its labels have fewer than
        ``min_cells`` cells, those of the seed's first later latent that has enough (the one
        with the most cells, the earliest of equals, when none has)."""
        cells = int(got[0].max(initial=0))
        if cells >= self.min_cells:
            return got
        best, best_cells = got, cells
        for draw in range(1, MAX_DRAWS + 1):
            raw = self._soft_masks([seed], 1, draws=[draw])[0]
            new = make_labels(self.plan, seed, raw)
            self._add_times(new[2])
            n = int(new[0].max(initial=0))
            if n > best_cells:
                best, best_cells = new, n
            if n >= self.min_cells:
                break
        self.counts["redrawn"] += 1
        self.counts["below_min_cells"] += int(best_cells < self.min_cells)
        return best[0], best[1], {}

    def _spot_images(self, chunk, labels, spots) -> list:
        """The spots model's images of the samples with puncta (None for the others)."""
        out = [None] * len(chunk)
        tr = self.inputs.spot_translator
        idx = [k for k, sp in enumerate(spots) if sp.size]
        if tr is None or not idx:
            return out
        from cellsynth.tools.points import spots_mask

        sm = [spots_mask(labels[k].shape, spots[k]) for k in idx]
        res = tr.translate_batch(
            [(m > 0).astype(np.uint8) for m in sm], sm, seeds=[chunk[k] for k in idx]
        )
        for k, r in zip(idx, res):
            out[k] = r
        return out

    def advance(self) -> None:
        """Translate the oldest waiting batch and queue its "finish" tasks."""
        chunk, jobs = self.waiting.popleft()
        got = [j.get() for j in jobs]
        for g in got:
            self._add_times(g[2])
        if self.min_cells:
            got = [self._redraw(s, g) for s, g in zip(chunk, got)]
        labels = [g[0] for g in got]
        spots = [g[1] for g in got]
        t0 = time.perf_counter()
        tr = self.inputs.translator
        imgs = [None] * len(chunk)  # no translator: "finish" renders the images
        if tr is not None:
            masks = [(lab > 0).astype(np.uint8) for lab in labels]
            imgs = tr.translate_batch(masks, labels, seeds=chunk)
        spot_imgs = self._spot_images(chunk, labels, spots)
        if tr is not None or self.inputs.spot_translator is not None:
            self.times["gan_images"] += time.perf_counter() - t0
        for s, lab, sp, im, si in zip(chunk, labels, spots, imgs, spot_imgs):
            self.writing.append(self.pool.submit("finish", (s, lab, sp, im, si)))
        self.drain(False)

    def run_group(self, group: list[int], done: set) -> None:
        chunk = [s for s in group if s not in done]
        if not chunk:
            return
        raws = self._generate(group, done)
        translators = (self.inputs.translator, self.inputs.spot_translator)
        if all(t is None for t in translators) and not self.min_cells:
            for s, r in zip(chunk, raws):
                self.writing.append(self.pool.submit("full", (s, r)))
            while len(self.writing) > self.max_pending * self.plan.options.run.batch:
                self.collect(self.writing.popleft().get())
                self.bar.update(1)
            self.drain(False)
        else:
            jobs = [self.pool.submit("labels", (s, r)) for s, r in zip(chunk, raws)]
            self.waiting.append((chunk, jobs))
            while len(self.waiting) > self.max_pending:
                self.advance()

    def run(self, groups: list[list[int]], done: list[int], skip=()) -> None:
        """Make the samples of ``groups``; read back those in ``done``; leave out those in
        ``skip`` altogether (someone else reads them back)."""
        for job in [self.pool.submit("done", (s,)) for s in done]:
            self.collect(job.get())
        done_set = set(done) | set(skip)
        for group in groups:
            self.run_group(group, done_set)
        while self.waiting:
            self.advance()
        self.drain(True)


def run_samples(plan: Plan, inputs, seed_list: list[int]) -> tuple:
    """Make (or, resuming, read back) the samples of this run.

    Returns (records in seed-list order, annotations by seed, seconds per stage, number
    written, counts: ``redrawn`` and ``below_min_cells`` of :class:`Scheduler`).
    """
    from tqdm import tqdm

    run = plan.options.run
    out = Path(plan.out)
    groups = seed_groups(seed_list, run.shard, run.batch, inputs.generator is not None)
    mine = [s for g in groups for s in g]
    clear_partial(out, mine)  # leftovers of a killed run
    done = [s for s in mine if is_done(out, s)] if (run.resume or run.shard) else []
    pool = ProcessPool(plan, run.workers) if run.workers > 0 else InlinePool(plan)
    bar = tqdm(
        total=len(mine), initial=len(done), desc="synth", unit="img", disable=not run.progress
    )
    sched = Scheduler(plan, inputs, pool, bar)
    try:
        sched.run(groups, done)
    finally:
        pool.close()
        bar.close()
        clear_partial(out, mine)
        try:
            (out / PARTIAL).rmdir()
        except OSError:
            pass
    records = [sched.records[s] for s in mine]
    return records, sched.anns, sched.times, len(mine) - len(done), sched.counts
