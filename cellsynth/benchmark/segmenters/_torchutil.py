"""Helpers shared by the torch segmenters: image normalisation, random crops with flips/rot90,
tiled prediction, a time- or epoch-budgeted training loop, seeding, and weight folders.

Also :class:`DenseSegmenter`, the common body of the segmenters that predict dense maps
(foreground, boundary, distance) and turn them into instances with
:mod:`cellsynth.benchmark.segmenters._instances` (u2net, unet).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from cellsynth.benchmark.segmenters._instances import instance_targets, maps_to_instances
from cellsynth.benchmark.segmenters.base import Segmenter
from cellsynth.errors import CellsynthError

WEIGHTS = "weights.pt"
OPTIONS = "options.json"
INFO = "info.json"


def get_device(device: str | None = None):
    """torch.device: ``device`` when given, else CUDA when available, else CPU."""
    import torch

    if device:
        try:
            return torch.device(device)
        except RuntimeError as exc:
            raise CellsynthError(f"unknown device {device!r} ({exc}); use cpu or cuda") from None
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def seeded(seed: int):
    """Run a block with torch's global RNG seeded to ``seed`` and restored afterwards."""
    import torch

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def normalize_image(
    image: np.ndarray, channels: int | None = None, percentiles=(1.0, 99.8)
) -> np.ndarray:
    """Any 8/16-bit/float H x W (x C) image -> float32 C x H x W, per-channel percentile scaled
    (``percentiles[0]`` -> 0, ``percentiles[1]`` -> 1; clipped to [-1, 3]).

    Args:
        image: H x W or H x W x C (C <= 4) array.
        channels: force the channel count (1 -> n repeats, n -> 1 averages); None keeps it.
    Returns:
        C x H x W float32.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] > 4) or image.size == 0:
        raise CellsynthError(
            f"expected an H x W or H x W x C (C <= 4) image, got shape {image.shape}"
        )
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool):
        raise CellsynthError(f"unsupported image dtype {image.dtype}")
    x = image.astype(np.float32)
    x = x[None] if x.ndim == 2 else np.moveaxis(x, -1, 0)
    if channels is not None and x.shape[0] != channels:
        if x.shape[0] == 1:
            x = np.repeat(x, channels, axis=0)
        elif channels == 1:
            x = x[:3].mean(axis=0, keepdims=True)
        else:
            raise CellsynthError(
                f"the model takes {channels}-channel images, got {x.shape[0]} channels"
            )
    out = np.empty_like(x)
    for c in range(x.shape[0]):
        lo, hi = np.percentile(x[c], percentiles)
        if hi - lo < 1e-6:
            hi = lo + max(float(x[c].max() - lo), 1e-6)
        out[c] = (x[c] - lo) / (hi - lo)
    return np.clip(out, -1.0, 3.0).astype(np.float32)


def random_crop(arrays, size: int, rng: np.random.Generator):
    """The same random ``size`` x ``size`` crop of every array (C x H x W or H x W); arrays
    smaller than ``size`` are zero-padded (bottom/right) first."""
    h, w = arrays[0].shape[-2:]
    ph, pw = max(size - h, 0), max(size - w, 0)
    if ph or pw:
        arrays = [
            np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, ph), (0, pw)], mode="constant") for a in arrays
        ]
        h, w = arrays[0].shape[-2:]
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    return [a[..., y : y + size, x : x + size] for a in arrays]


def random_flip_rot(arrays, rng: np.random.Generator):
    """The same random flips and rot90 of every array (over the last two axes); copies."""
    k = int(rng.integers(0, 4))
    flip_v, flip_h = bool(rng.integers(0, 2)), bool(rng.integers(0, 2))
    out = []
    for a in arrays:
        a = np.rot90(a, k, axes=(-2, -1))
        if flip_v:
            a = a[..., ::-1, :]
        if flip_h:
            a = a[..., ::-1]
        out.append(np.ascontiguousarray(a))
    return out


def _ramp(n: int, overlap: int) -> np.ndarray:
    w = np.ones(n, dtype=np.float32)
    if overlap > 0:
        r = (np.arange(overlap, dtype=np.float32) + 1) / (overlap + 1)
        w[:overlap] = np.minimum(w[:overlap], r)
        w[-overlap:] = np.minimum(w[-overlap:], r[::-1])
    return w


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step)) + [length - tile]
    return sorted(set(starts))


def predict_tiled(fn, x: np.ndarray, tile: int = 256, overlap: int = 32, multiple: int = 32):
    """Apply ``fn`` (1 x C x h x w float32 numpy -> 1 x K x h x w numpy) over tiles of ``x``.

    The image is reflect-padded to at least one tile and to a multiple of ``multiple``; tiles
    overlap by ``overlap`` pixels and are blended with linear ramps.

    Args:
        fn: the network call on one tile.
        x: C x H x W float32.
    Returns:
        K x H x W float32.
    """
    if tile % multiple:
        raise CellsynthError(f"tile size {tile} must be a multiple of {multiple}")
    c, h, w = x.shape
    ph = max(tile, int(math.ceil(h / multiple)) * multiple) - h
    pw = max(tile, int(math.ceil(w / multiple)) * multiple) - w
    mode = "reflect" if (ph < h and pw < w) else "symmetric"
    xp = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode=mode)
    H, W = xp.shape[1:]
    overlap = min(overlap, tile // 2)
    step = tile - overlap
    acc = None
    weight = np.zeros((H, W), dtype=np.float32)
    win = _ramp(tile, overlap)[:, None] * _ramp(tile, overlap)[None, :]
    for y in _starts(H, tile, step):
        for x0 in _starts(W, tile, step):
            th, tw = min(tile, H), min(tile, W)
            out = np.asarray(fn(xp[None, :, y : y + th, x0 : x0 + tw]))[0]
            if acc is None:
                acc = np.zeros((out.shape[0], H, W), dtype=np.float32)
            ww = win[:th, :tw]
            acc[:, y : y + th, x0 : x0 + tw] += out * ww
            weight[y : y + th, x0 : x0 + tw] += ww
    return (acc / np.maximum(weight, 1e-6))[:, :h, :w]


def train_loop(
    step_fn,
    steps_per_epoch: int,
    epochs: int | None = None,
    budget_minutes: float | None = None,
    default_epochs: int = 50,
    progress: bool = True,
    desc: str = "train",
    set_lr=None,
) -> dict:
    """Run ``step_fn(step) -> loss`` for ``epochs`` epochs or until ``budget_minutes`` passed.

    With both, whichever ends first; with neither, ``default_epochs``. ``set_lr(fraction)`` is
    called before each step with the fraction of training done (by steps or by time, whichever
    is further), for learning-rate schedules.
    Returns: dict(epochs (completed, may be fractional), steps, seconds, loss (mean of last epoch)).
    """
    from tqdm import tqdm

    if steps_per_epoch < 1:
        raise CellsynthError("nothing to train on (0 steps per epoch)")
    if epochs is not None and int(epochs) < 1:
        raise CellsynthError(f"epochs must be >= 1, got {epochs}")
    if budget_minutes is not None and float(budget_minutes) <= 0:
        raise CellsynthError(f"budget_minutes must be > 0, got {budget_minutes}")
    if epochs is None and budget_minutes is None:
        epochs = default_epochs
    total = int(epochs) * steps_per_epoch if epochs is not None else None
    budget_s = float(budget_minutes) * 60.0 if budget_minutes is not None else None
    t0 = time.perf_counter()
    losses: list[float] = []
    step = 0
    bar = tqdm(total=total, desc=desc, disable=not progress, unit="step", leave=False)
    try:
        while True:
            elapsed = time.perf_counter() - t0
            if total is not None and step >= total:
                break
            if budget_s is not None and elapsed >= budget_s and step > 0:
                break
            frac = max(
                step / total if total else 0.0,
                elapsed / budget_s if budget_s else 0.0,
            )
            if set_lr is not None:
                set_lr(min(frac, 1.0))
            loss = float(step_fn(step))
            if not math.isfinite(loss):
                raise CellsynthError(f"{desc}: training diverged (loss {loss}); lower the lr")
            losses.append(loss)
            step += 1
            bar.update(1)
            if step % steps_per_epoch == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-steps_per_epoch:]):.4f}")
    finally:
        bar.close()
    return {
        "epochs": step / steps_per_epoch,
        "steps": step,
        "seconds": time.perf_counter() - t0,
        "loss": float(np.mean(losses[-steps_per_epoch:])) if losses else float("nan"),
    }


def remaining_budget(budget_minutes, t_start: float):
    """Minutes left of ``budget_minutes`` since ``time.perf_counter()`` was ``t_start`` (at
    least a few seconds, so one step still runs); None stays None."""
    if budget_minutes is None:
        return None
    if float(budget_minutes) <= 0:
        raise CellsynthError(f"budget_minutes must be > 0, got {budget_minutes}")
    used = (time.perf_counter() - t_start) / 60.0
    return max(float(budget_minutes) - used, 0.05)


def cosine_lr(optimizer, base_lr: float, warmup: float = 0.05):
    """A ``set_lr(fraction)`` callback: linear warm-up, then cosine decay to 5 % of base_lr."""

    def set_lr(frac: float) -> None:
        if frac < warmup:
            lr = base_lr * (0.1 + 0.9 * frac / warmup)
        else:
            t = (frac - warmup) / max(1.0 - warmup, 1e-9)
            lr = base_lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0))))
        for group in optimizer.param_groups:
            group["lr"] = lr

    return set_lr


def save_weights(path, state_dict, options: dict, info: dict | None = None) -> Path:
    """Write ``weights.pt`` (torch state_dict), ``options.json`` and ``info.json`` into folder
    ``path`` (each file atomically)."""
    import torch

    from cellsynth.atomic import atomic_path, write_text

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu() for k, v in state_dict.items()}
    with atomic_path(path / WEIGHTS) as tmp:
        torch.save(tensors, tmp)
    write_text(path / OPTIONS, json.dumps(options, indent=1, sort_keys=True, default=str))
    write_text(path / INFO, json.dumps(info or {}, indent=1, sort_keys=True, default=str))
    return path


def load_weights(path, name: str) -> tuple[dict, dict, dict]:
    """Read a folder written by :func:`save_weights`: (state_dict, options, info).

    Raises CellsynthError naming the missing or corrupt file."""

    path = Path(path)
    opt_file, w_file, info_file = path / OPTIONS, path / WEIGHTS, path / INFO
    if not opt_file.is_file() or not w_file.is_file():
        raise CellsynthError(
            f"{path}: no saved {name} model here (needs {OPTIONS} and {WEIGHTS}); "
            f"train one first (fit + save)"
        )
    try:
        options = json.loads(opt_file.read_text())
        info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    except (OSError, json.JSONDecodeError) as exc:
        raise CellsynthError(f"{opt_file}: not valid JSON ({exc})") from None
    state = load_state_dict_file(w_file)
    return state, options, info


def load_state_dict_file(path) -> dict:
    """torch.load(path, weights_only=True) -> dict of tensors, with clear errors."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CellsynthError(f"{path}: weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CellsynthError(
            f"{path}: cannot load weights ({type(exc).__name__}: {exc}); "
            "is it a torch state_dict file?"
        ) from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise CellsynthError(f"{path}: expected a state_dict (dict of tensors)")
    return state


def check_train(train) -> None:
    if train is None or len(train) == 0:
        raise CellsynthError("training set is empty; give a split folder with images and masks")


class DenseSegmenter(Segmenter):
    """Shared body of segmenters that predict dense maps (foreground, boundary, distance)
    from a torch network, trained on random crops, predicted by tiles, then watershed.

    Subclasses set ``outputs`` (which of "fg", "boundary", "distance" the net predicts),
    implement ``_build(in_channels)`` -> nn.Module and optionally ``_forward_train`` /
    ``_loss``. Options shared by all (defaults in ``DEFAULTS``).
    """

    trainable = True
    DEFAULTS = {
        "in_channels": None,  # None: from the training images
        "crop": 256,  # training crop size
        "tile": 256,  # prediction tile size
        "overlap": 32,
        "batch_size": 8,
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "steps_per_epoch": None,  # None: ceil(images / batch_size)
        "epochs": 50,  # used when neither epochs nor a budget is given to fit
        "fg_threshold": 0.5,
        "boundary_threshold": 0.5,
        "seed_threshold": 0.5,
        "min_distance": 3,
        "min_size": 8,
        "seed": 0,
        "device": None,
    }
    EXTRA: dict = {}

    def __init__(self, **options):
        defaults = {**self.DEFAULTS, **self.EXTRA}
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            raise CellsynthError(
                f"{self.name}: unknown option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(defaults))}"
            )
        super().__init__(**{**defaults, **options})
        o = self.options
        self.multiple = self._multiple()
        for key in ("crop", "tile"):
            if int(o[key]) < self.multiple or int(o[key]) % self.multiple:
                raise CellsynthError(
                    f"{self.name}: option {key}={o[key]} must be a positive multiple of "
                    f"{self.multiple}"
                )
        self.net = None
        self.info: dict = {}

    # --- to override -------------------------------------------------------------------
    outputs: tuple[str, ...] = ("fg",)

    def _build(self, in_channels: int):
        raise NotImplementedError

    def _multiple(self) -> int:
        """Input sizes must be multiples of this (the network's total down-sampling)."""
        return 32

    def _logits(self, net, x):
        """Training forward: list of logit tensors (deep supervision) or one tensor."""
        return net(x)

    # --- shared ------------------------------------------------------------------------
    def _target_index(self) -> list[int]:
        return [{"fg": 0, "boundary": 1, "distance": 2}[k] for k in self.outputs]

    def _ensure_net(self, in_channels: int):
        if self.net is None:
            with seeded(int(self.options["seed"])):
                self.net = self._build(int(in_channels))
            self.net.to(get_device(self.options["device"]))
        return self.net

    def fit(self, train, workdir, budget_minutes=None, epochs=None, progress=True) -> None:
        """Train on a canonical dataset split (random crops + flips/rot90, AdamW, cosine LR).

        Args:
            train: CanonicalDataset (or any sequence of Samples).
            workdir: folder for the trained weights (``workdir/model``).
            budget_minutes / epochs: whichever ends first; neither -> option ``epochs``.
        """
        import torch
        import torch.nn.functional as F

        t_start = time.perf_counter()
        check_train(train)
        o = self.options
        samples = list(train)
        in_ch = o["in_channels"]
        if in_ch is None:
            in_ch = max(1 if s.image.ndim == 2 else s.image.shape[-1] for s in samples)
            o["in_channels"] = int(in_ch)
        images = [normalize_image(s.image, in_ch) for s in samples]
        targets = [instance_targets(s.labels)[self._target_index()] for s in samples]
        device = get_device(o["device"])
        net = self._ensure_net(in_ch)
        rng = np.random.default_rng(int(o["seed"]))
        bs, crop = int(o["batch_size"]), int(o["crop"])
        steps = o["steps_per_epoch"] or max(1, math.ceil(len(samples) / bs))
        opt = torch.optim.AdamW(net.parameters(), lr=float(o["lr"]), weight_decay=o["weight_decay"])

        def step_fn(step):
            xs, ys = [], []
            for i in rng.integers(0, len(images), size=bs):
                x, y = random_flip_rot(random_crop([images[i], targets[i]], crop, rng), rng)
                xs.append(x)
                ys.append(y)
            x = torch.from_numpy(np.stack(xs)).to(device)
            y = torch.from_numpy(np.stack(ys)).to(device)
            net.train()
            logits = self._logits(net, x)
            if not isinstance(logits, (list, tuple)):
                logits = [logits]
            loss = sum(F.binary_cross_entropy_with_logits(lg, y) for lg in logits)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.item()

        with seeded(int(o["seed"]) + 1):
            result = train_loop(
                step_fn,
                steps,
                epochs=epochs,
                budget_minutes=remaining_budget(budget_minutes, t_start),
                default_epochs=int(o["epochs"]),
                progress=progress,
                desc=f"{self.name} fit",
                set_lr=cosine_lr(opt, float(o["lr"])),
            )
        self.info = {"train_images": len(samples), **result}
        if workdir is not None:
            self.save(Path(workdir) / "model")

    def predict_maps(self, image: np.ndarray) -> np.ndarray:
        """Image -> K x H x W probabilities (the channels named in ``outputs``)."""
        import torch

        if self.net is None:
            raise CellsynthError(f"{self.name}: model is not trained; call fit() or load() first")
        o = self.options
        device = get_device(o["device"])
        x = normalize_image(image, int(o["in_channels"]))
        net = self.net
        net.eval()

        def fn(tile):
            with torch.no_grad():
                out = net(torch.from_numpy(np.ascontiguousarray(tile)).to(device))
            if isinstance(out, (list, tuple)):
                out = out[0]
            return torch.sigmoid(out).cpu().numpy()

        return predict_tiled(fn, x, int(o["tile"]), int(o["overlap"]), self.multiple)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """H x W (x C) image -> uint16 instance labels H x W."""
        maps = dict(zip(self.outputs, self.predict_maps(image)))
        o = self.options
        return maps_to_instances(
            maps["fg"],
            boundary=maps.get("boundary"),
            distance=maps.get("distance"),
            fg_threshold=o["fg_threshold"],
            boundary_threshold=o["boundary_threshold"],
            seed_threshold=o["seed_threshold"],
            min_distance=o["min_distance"],
            min_size=o["min_size"],
        )

    def save(self, path: str | os.PathLike) -> None:
        if self.net is None:
            raise CellsynthError(f"{self.name}: nothing to save; call fit() first")
        save_weights(path, self.net.state_dict(), self.options, self.info)

    @classmethod
    def load(cls, path: str | os.PathLike):
        state, options, info = load_weights(path, cls.name)
        seg = cls(**options)
        if options.get("in_channels") is None:
            raise CellsynthError(f"{path}: options.json lacks in_channels")
        net = seg._ensure_net(int(options["in_channels"]))
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise CellsynthError(
                f"{path}: weights do not fit the {cls.name} network described by options.json "
                f"({str(exc).splitlines()[0]})"
            ) from None
        seg.info = info
        return seg
