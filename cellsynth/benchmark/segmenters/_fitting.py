"""Training within a budget, judged on a validation slice: what every trainable segmenter shares.

- :func:`split_validation` / :func:`validation_split`: a seeded validation slice of the
  training split (recorded).
- :func:`resolve_precision` / :func:`autocast`: bf16 mixed precision where the device has it
  (CPUs with ``avx512_bf16`` or ``amx_bf16``; CUDA devices with bf16), fp32 elsewhere.
- :func:`budgeted_fit`: runs training steps until the epochs or the minutes are spent, evaluates
  the validation slice at regular points, keeps the best weights by validation AP@0.5 and the
  learning curve, and stops early enough to leave time for choosing the post-processing.
- :func:`tune_params`: coordinate search of post-processing parameters on the validation slice.
- :func:`pooled_ap50`: TP / (TP + FP + FN) at IoU 0.5 summed over images (the headline figure).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from cellsynth.errors import CellsynthError
from cellsynth.precision import (  # noqa: F401  (the segmenters import them from here)
    PRECISIONS,
    autocast,
    cpu_has_bf16,
    resolve_precision,
)


def split_validation(n: int, fraction: float, seed: int, max_val: int = 64):
    """Seeded split of ``n`` training items into (train indices, validation indices).

    ``round(fraction * n)`` items (at least 1 when ``fraction > 0`` and ``n >= 2``, at most
    ``max_val``) are held out; at least one item is always left for training."""
    fraction = float(fraction)
    if not 0.0 <= fraction < 1.0:
        raise CellsynthError(f"val_fraction must be in [0, 1), got {fraction}")
    n_val = 0
    if fraction > 0 and n >= 2:
        n_val = min(max(1, int(round(fraction * n))), n - 1, int(max_val))
    perm = np.random.default_rng(int(seed)).permutation(n)
    return sorted(perm[n_val:].tolist()), sorted(perm[:n_val].tolist())


def validation_split(samples: list, options: dict) -> tuple[list, list]:
    """(training samples, validation samples): :func:`split_validation` of ``samples`` with a
    segmenter's options ``val_fraction``, ``seed`` and ``val_max_images``."""
    tr_idx, val_idx = split_validation(
        len(samples), options["val_fraction"], int(options["seed"]), int(options["val_max_images"])
    )
    return [samples[i] for i in tr_idx], [samples[i] for i in val_idx]


def pooled_ap50(true_list, pred_list) -> float:
    """Pooled AP at IoU 0.5: sum TP / sum (TP + FP + FN) over the images (0 when all empty)."""
    from cellsynth.benchmark.metrics import average_precision

    if not true_list:
        return float("nan")
    _, tp, fp, fn = average_precision(list(true_list), list(pred_list), [0.5])
    den = int(tp.sum() + fp.sum() + fn.sum())
    return float(tp.sum() / den) if den else 0.0


def tune_params(score_fn, grid: dict, start: dict, rounds: int = 2, deadline: float | None = None):
    """Coordinate search: for each parameter in turn, try every value of ``grid[name]`` with the
    others fixed, keep the best; repeat ``rounds`` times or until nothing changes.

    Args:
        score_fn: params dict -> score (higher is better).
        grid: name -> candidate values; start: initial values (the defaults).
        deadline: ``time.perf_counter()`` value; no candidate is started that would end after it
            (judged by the slowest candidate so far).
    Returns: dict(params, score, default_score, tried).
    """
    seen: dict = {}
    cost = [0.0]  # the slowest candidate so far: none is started that would end past deadline

    def score(p):
        key = tuple(sorted(p.items()))
        if key not in seen:
            t0 = time.perf_counter()
            seen[key] = float(score_fn(dict(p)))
            cost[0] = max(cost[0], time.perf_counter() - t0)
        return seen[key]

    best = dict(start)
    default_score = best_score = score(best)
    for _ in range(max(int(rounds), 1)):
        changed = False
        for name, values in grid.items():
            for v in values:
                if deadline is not None and time.perf_counter() + cost[0] > deadline:
                    break
                cand = {**best, name: v}
                s = score(cand)
                if s > best_score + 1e-12:
                    best, best_score, changed = cand, s, True
        if not changed:
            break
    return {
        "params": best,
        "score": best_score,
        "default_score": default_score,
        "tried": len(seen),
    }


def state_copy(module) -> dict:
    """A detached CPU copy of a module's state_dict (for keeping the best weights)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


@dataclass
class _Schedule:
    """When a :func:`budgeted_fit` stops, evaluates and how far its learning rate has gone."""

    t0: float  # the budget counts from here
    total: int | None  # steps (None: the minutes decide)
    budget_s: float | None
    every_steps: int | None  # evaluate every this many steps (an epochs budget)
    every_s: float | None  # ... or every this many seconds (a minutes budget)
    reserve_evals: float
    train_start: float

    @classmethod
    def make(
        cls,
        steps_per_epoch,
        epochs,
        budget_minutes,
        default_epochs,
        t_start,
        n_evals,
        reserve_evals,
    ) -> _Schedule:
        """Check the budget arguments (neither epochs nor minutes: ``default_epochs``) and
        spread ``n_evals`` evaluations over it."""
        if steps_per_epoch < 1:
            raise CellsynthError("nothing to train on (0 steps per epoch)")
        if epochs is not None and int(epochs) < 1:
            raise CellsynthError(f"epochs must be >= 1, got {epochs}")
        if budget_minutes is not None and float(budget_minutes) <= 0:
            raise CellsynthError(f"budget_minutes must be > 0, got {budget_minutes}")
        if epochs is None and budget_minutes is None:
            epochs = default_epochs
        t0 = time.perf_counter() if t_start is None else float(t_start)
        total = int(epochs) * steps_per_epoch if epochs is not None else None
        budget_s = float(budget_minutes) * 60.0 if budget_minutes is not None else None
        every_steps = max(1, total // n_evals) if (total and n_evals) else None
        every_s = None
        if budget_s is not None and n_evals:
            every_s = max((budget_s - (time.perf_counter() - t0)) / n_evals, 1.0)
        return cls(t0, total, budget_s, every_steps, every_s, reserve_evals, time.perf_counter())

    def done(self, step: int) -> bool:
        """All the epochs' steps are taken."""
        return self.total is not None and step >= self.total

    def out_of_time(self, step: int, now: float, eval_cost: float) -> bool:
        """A minutes budget leaves no more than the time the evaluations still need."""
        if self.budget_s is None or step == 0:
            return False
        return now - self.t0 + (self.reserve_evals + 1.0) * eval_cost >= self.budget_s

    def lr_fraction(self, step: int, now: float, eval_cost: float) -> float:
        """The fraction of training done (of the steps, or of the minutes left for training)."""
        frac = step / self.total if self.total else 0.0
        if self.budget_s is not None:
            reserve = (self.reserve_evals + 1) * eval_cost
            span = max(self.budget_s - (self.train_start - self.t0) - reserve, 1)
            frac = max(frac, (now - self.train_start) / span)
        return min(frac, 1.0)

    def next_eval_time(self) -> float:
        """When the next evaluation by the clock is due (never without a minutes budget)."""
        return time.perf_counter() + self.every_s if self.every_s else math.inf

    def eval_due(self, step: int, next_eval_t: float) -> bool:
        """An evaluation is due after ``step`` (not after the last one: the end evaluates)."""
        due = (self.every_steps and step % self.every_steps == 0) or (
            self.every_s and time.perf_counter() >= next_eval_t
        )
        return bool(due) and not self.done(step)


class _Evaluations:
    """The validation points of a :func:`budgeted_fit`: the learning curve, the best point with
    its weights and payload, and the cost of the latest evaluation."""

    def __init__(self, evaluate, snapshot, t0: float, steps_per_epoch: int):
        self.evaluate, self.snapshot = evaluate, snapshot
        self.t0, self.steps_per_epoch = t0, steps_per_epoch
        self.curve: list[dict] = []
        self.best: dict | None = None
        self.best_state, self.best_payload = None, None
        self.cost = 0.0
        self.since: list[float] = []  # the losses since the latest evaluation

    def run(self, step: int) -> None:
        te = time.perf_counter()
        score, payload = self.evaluate()
        self.cost = time.perf_counter() - te
        point = {
            "minutes": (time.perf_counter() - self.t0) / 60.0,
            "steps": step,
            "epochs": step / self.steps_per_epoch,
            "loss": float(np.mean(self.since)) if self.since else None,
            "val_ap50": float(score),
        }
        self.since.clear()
        self.curve.append(point)
        if self.best is None or score > self.best["val_ap50"]:
            self.best = {k: point[k] for k in ("minutes", "steps", "epochs", "val_ap50")}
            self.best_state = self.snapshot() if self.snapshot is not None else None
            self.best_payload = payload


def budgeted_fit(
    step_fn,
    steps_per_epoch: int,
    evaluate=None,
    snapshot=None,
    restore=None,
    epochs: int | None = None,
    budget_minutes: float | None = None,
    default_epochs: int = 50,
    t_start: float | None = None,
    set_lr=None,
    n_evals: int = 10,
    reserve_evals: float = 3.0,
    eval_untrained: bool = True,
    progress: bool = True,
    desc: str = "train",
) -> dict:
    """Train with ``step_fn(step) -> loss`` for ``epochs`` epochs or ``budget_minutes`` minutes
    (counted from ``t_start``, default now), whichever ends first (neither: ``default_epochs``),
    evaluating ``evaluate() -> (val_ap50, payload)`` before the first step (the untrained
    state), about ``n_evals`` times along the way, and at the end.

    The best evaluation's weights (``snapshot() -> state``) are restored at the end
    (``restore(state)``). With a minutes budget, training stops when the time left equals
    ``reserve_evals`` times the measured cost of one evaluation, which the caller spends on
    choosing the post-processing (:func:`tune_params`). ``set_lr(fraction)`` is called before
    each step with the fraction of training done. ``eval_untrained=False`` skips the first
    evaluation (for detectors whose untrained output is hundreds of boxes per image, which
    costs minutes to score and says nothing).

    Returns: dict(steps, epochs, seconds, loss, curve, best, best_payload, eval_seconds (the
    last evaluation), step_seconds (time inside ``step_fn``), stopped_by).
    """
    from tqdm import tqdm

    if evaluate is None:
        n_evals = 0
    plan = _Schedule.make(
        steps_per_epoch, epochs, budget_minutes, default_epochs, t_start, n_evals, reserve_evals
    )
    evals = _Evaluations(evaluate, snapshot, plan.t0, steps_per_epoch)
    losses: list[float] = []
    step, next_eval_t = 0, plan.next_eval_time()
    step_seconds = 0.0
    if evaluate is not None and eval_untrained:
        evals.run(step)  # the untrained state: the learning curve starts here
        next_eval_t = plan.next_eval_time()
    stopped_by = "epochs"
    bar = tqdm(total=plan.total, desc=desc, disable=not progress, unit="step", leave=False)
    try:
        while True:
            now = time.perf_counter()
            if plan.done(step):
                break
            if plan.out_of_time(step, now, evals.cost):
                stopped_by = "budget"
                break
            if set_lr is not None:
                set_lr(plan.lr_fraction(step, now, evals.cost))
            ts = time.perf_counter()
            loss = float(step_fn(step))
            step_seconds += time.perf_counter() - ts
            if not math.isfinite(loss):
                raise CellsynthError(f"{desc}: training diverged (loss {loss}); lower the lr")
            losses.append(loss)
            evals.since.append(loss)
            step += 1
            bar.update(1)
            if step % steps_per_epoch == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-steps_per_epoch:]):.4f}")
            if evaluate is not None and plan.eval_due(step, next_eval_t):
                evals.run(step)
                next_eval_t = plan.next_eval_time()
    finally:
        bar.close()
    if evaluate is not None:
        if not evals.curve or evals.curve[-1]["steps"] != step:  # the last weights: not scored
            evals.run(step)
        if restore is not None and evals.best_state is not None:
            restore(evals.best_state)
    return {
        "steps": step,
        "epochs": step / steps_per_epoch,
        "seconds": time.perf_counter() - plan.t0,
        "loss": float(np.mean(losses[-steps_per_epoch:])) if losses else float("nan"),
        "curve": evals.curve,
        "best": evals.best,
        "best_payload": evals.best_payload,
        "eval_seconds": evals.cost,
        "step_seconds": step_seconds,
        "stopped_by": stopped_by,
    }


def training_record(
    result: dict,
    precision: str,
    device,
    budget_minutes,
    validation: dict,
    postprocess: dict | None,
    t_start: float,
    **extra,
) -> dict:
    """The JSON-able training record a segmenter keeps in ``info`` (and the runner in
    ``results.json``): precision, device, budget, time, steps, validation, curve, best and the
    chosen post-processing."""
    rec = {
        "precision": precision,
        "device": getattr(device, "type", str(device)),
        "budget_minutes": None if budget_minutes is None else float(budget_minutes),
        "seconds": time.perf_counter() - t_start,
        "steps": int(result.get("steps", 0)),
        "epochs": float(result.get("epochs", 0.0)),
        "loss": result.get("loss"),
        "stopped_by": result.get("stopped_by"),
        "step_seconds": result.get("step_seconds"),
        "validation": validation,
        "curve": result.get("curve", []),
        "best": result.get("best"),
        "postprocess": postprocess,
    }
    rec.update(extra)
    return rec


def fit_validated(
    options: dict,
    val: list,
    step_fn,
    steps_per_epoch: int,
    module,
    payload_fn,
    instances_fn,
    tune_grid: dict,
    *,
    epochs,
    budget_minutes,
    t_start: float,
    set_lr,
    precision: str,
    device,
    progress: bool,
    desc: str,
    eval_untrained: bool = True,
    **extra,
) -> dict:
    """The whole validated fit of a trainable segmenter, shared by all of them.

    :func:`budgeted_fit` runs ``step_fn``; each evaluation runs the network once per validation
    sample (``payload_fn(image) -> payload``: maps, flows or detections) and turns the payloads
    into labels with the current options (``instances_fn(payload, options) -> labels``); the best
    weights of ``module`` are kept. The post-processing options named in ``tune_grid`` are then
    chosen on the best evaluation's payloads (:func:`tune_params`, within the budget) and written
    into ``options``.

    Args:
        options: the segmenter's options (reads epochs, n_evals, tune, val_fraction, seed;
            updated with the chosen post-processing).
        val: the validation samples (may be empty: no evaluation, no tuning).
    Returns: the training record (:func:`training_record`; ``extra`` is added to it).
    """
    truth = [s.labels for s in val]

    def evaluate():
        payloads = [payload_fn(s.image) for s in val]
        return pooled_ap50(truth, [instances_fn(p, options) for p in payloads]), payloads

    result = budgeted_fit(
        step_fn,
        steps_per_epoch,
        evaluate=evaluate if val else None,
        snapshot=lambda: state_copy(module),
        restore=module.load_state_dict,
        epochs=epochs,
        budget_minutes=budget_minutes,
        default_epochs=int(options["epochs"]),
        t_start=t_start,
        set_lr=set_lr,
        n_evals=int(options["n_evals"]),
        eval_untrained=eval_untrained,
        progress=progress,
        desc=desc,
    )
    # A torch module trained channels-last on the CPU predicts in the default layout, as it does
    # once saved and loaded (in bf16 the two layouts can round differently). StarDist passes a
    # Keras model's weights here, which have no layout.
    import torch

    if isinstance(module, torch.nn.Module):
        module.to(memory_format=torch.contiguous_format)
    post = None
    payloads = result["best_payload"]
    if val and options["tune"] and payloads is not None:
        deadline = None if budget_minutes is None else t_start + float(budget_minutes) * 60.0

        def score(params):
            opts = {**options, **params}
            return pooled_ap50(truth, [instances_fn(p, opts) for p in payloads])

        found = tune_params(score, tune_grid, {k: options[k] for k in tune_grid}, deadline=deadline)
        options.update(found["params"])
        post = {
            "params": found["params"],
            "val_ap50": found["score"],
            "default_val_ap50": found["default_score"],
            "tried": found["tried"],
        }
    validation = {
        "n_images": len(val),
        "names": [s.name for s in val],
        "fraction": float(options["val_fraction"]),
        "seed": int(options["seed"]),
    }
    return training_record(
        result, precision, device, budget_minutes, validation, post, t_start, **extra
    )
