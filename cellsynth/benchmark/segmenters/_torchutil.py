"""Helpers shared by the torch segmenters: image normalisation, random crops with flips/rot90,
area-weighted sampling, tiled prediction, seeding, learning-rate schedule, and weight folders
(the budgeted training loop with its validation slice is in ``_fitting``).

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
from types import SimpleNamespace

import numpy as np

from cellsynth.benchmark.segmenters._fitting import (
    autocast,
    fit_validated,
    resolve_precision,
    validation_split,
)
from cellsynth.benchmark.segmenters._instances import instance_targets, maps_to_instances
from cellsynth.benchmark.segmenters.base import Segmenter
from cellsynth.datasets.io import channels_first
from cellsynth.errors import CellsynthError, first_line

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


def device_precision(options: dict, precision: str | None = None):
    """(torch.device, precision) of a segmenter's options ``device`` and ``precision``;
    ``precision`` when given (the one chosen at fit time) wins over resolving the option."""
    device = get_device(options["device"])
    return device, precision or resolve_precision(options["precision"], device)


def to_device(array: np.ndarray, device):
    """A numpy batch (N x C x H x W) -> tensor on ``device``, channels-last on a CPU (where
    oneDNN's convolutions are faster that way)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(array)).to(device)
    if device.type == "cpu":
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def optimizer_step(opt, loss, clip=None) -> float:
    """Back-propagate ``loss`` and step ``opt`` (``clip``: (params, max_norm) to clip the
    gradient norm first); returns the loss as a float (what a training ``step_fn`` returns)."""
    import torch

    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(*clip)
    opt.step()
    return loss.item()


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
    refusal = "the model takes {want}-channel images, got {have} channels"
    x = channels_first(image.astype(np.float32), channels, refusal)
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


def fit_patch(patch: int, div: int, shapes) -> int:
    """The training crop (patch) side: ``patch``, or, when the smallest training image is
    smaller, the largest multiple of ``div`` that fits in it (at least ``div``).

    A 128-px image in a 256-px crop is three quarters padding: a step then costs four times
    the compute for the same pixels, and a model that pads differently in image and labels
    learns that objects are background (StarDist's validation AP@0.5 stayed 0 on 128-px
    synthetic images before its padding was fixed)."""
    smallest = min((min(int(h), int(w)) for h, w in (sh[:2] for sh in shapes)), default=patch)
    if smallest >= patch:
        return patch
    return max(div, smallest // div * div)


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


def area_weights(arrays) -> np.ndarray:
    """Sampling probabilities proportional to each array's pixel area (last two axes), so that
    random crops cover every training pixel equally often: large, dense images (which hold most
    of the objects the pooled metrics count) are not under-sampled."""
    areas = np.array([float(a.shape[-2]) * float(a.shape[-1]) for a in arrays])
    return areas / areas.sum()


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


def cosine_lr_value(base_lr: float, frac: float, warmup: float = 0.05) -> float:
    """The learning rate at training fraction ``frac``: linear warm-up, then cosine decay to
    5 % of base_lr."""
    if frac < warmup:
        return base_lr * (0.1 + 0.9 * frac / warmup)
    t = (frac - warmup) / max(1.0 - warmup, 1e-9)
    return base_lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0))))


def cosine_lr(optimizer, base_lr: float, warmup: float = 0.05):
    """A ``set_lr(fraction)`` callback for a torch optimizer (:func:`cosine_lr_value`)."""

    def set_lr(frac: float) -> None:
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr_value(base_lr, frac, warmup)

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


def load_state_dict_file(
    path, what: str = "weights file", expected: str = "a torch state_dict file"
) -> dict:
    """torch.load(path, weights_only=True) -> a non-empty dict, with clear one-line errors
    that call the file ``what`` (e.g. "microsam: checkpoint") and say what it should be
    (``expected``).

    A training checkpoint that keeps the state dict under ``model`` or ``model_state_dict``
    (torchvision's references, EmbedSeg) gives that state dict."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CellsynthError(f"{what} {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a pickle with code, or not a torch file at all
        raise CellsynthError(
            f"{what} {path} cannot be read as weights only "
            f"({first_line(exc, type(exc).__name__)}); is it {expected}?"
        ) from None
    for key in ("model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state:
        raise CellsynthError(f"{what} {path} holds no state dict (a dict of tensors)")
    return state


def load_state_checked(module, state: dict, what: str) -> None:
    """``module.load_state_dict(state)``; a mismatch raises CellsynthError ``what (first line
    of torch's message)``."""
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise CellsynthError(f"{what} ({str(exc).splitlines()[0]})") from None


def saved_in_channels(path, options: dict) -> int:
    """The input channels in the saved ``options`` of folder ``path`` (CellsynthError without)."""
    if options.get("in_channels") is None:
        raise CellsynthError(f"{path}: options.json lacks in_channels")
    return int(options["in_channels"])


def check_train(train) -> None:
    if train is None or len(train) == 0:
        raise CellsynthError("training set is empty; give a split folder with images and masks")


class TorchNetSegmenter(Segmenter):
    """A segmenter whose trained state is one torch module, the attribute named by ``net_attr``
    (None until fit): saved as that module's weights with the options and info
    (:func:`save_weights`), loaded by rebuilding the module from the saved options
    (``_rebuild``, which subclasses implement) and giving it the saved weights."""

    net_attr = "net"

    @classmethod
    def _rebuild(cls, path: Path, options: dict):
        """(segmenter, its fresh torch module) for the ``options`` saved in folder ``path``."""
        raise NotImplementedError

    def save(self, path: str | os.PathLike) -> None:
        net = getattr(self, self.net_attr)
        if net is None:
            raise CellsynthError(f"{self.name}: nothing to save; call fit() first")
        save_weights(path, net.state_dict(), self.options, self.info)

    @classmethod
    def load(cls, path: str | os.PathLike):
        state, options, info = load_weights(path, cls.name)
        seg, net = cls._rebuild(path, options)
        load_state_checked(
            net,
            state,
            f"{path}: weights do not fit the {cls.name} network described by options.json",
        )
        seg.info = info
        return seg


class DenseSegmenter(TorchNetSegmenter):
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
        "seeds": "auto",  # watershed seeds: auto | distance | boundary | edt (see _instances)
        "seed": 0,
        "device": None,
        "precision": "auto",  # auto: bf16 where the device has it, else fp32
        "val_fraction": 0.1,  # validation slice of the training split (seeded)
        "val_max_images": 64,  # at most this many validation images
        "n_evals": 10,  # validation points along the training
        "tune": True,  # choose the post-processing thresholds on the validation slice
    }
    EXTRA: dict = {}

    @classmethod
    def known_options(cls) -> dict:
        return {**cls.DEFAULTS, **cls.EXTRA}

    def __init__(self, **options):
        super().__init__(**options)
        o = self.options
        self.multiple = self._multiple()
        for key in ("crop", "tile"):
            if int(o[key]) < self.multiple or int(o[key]) % self.multiple:
                raise CellsynthError(
                    f"{self.name}: option {key}={o[key]} must be a positive multiple of "
                    f"{self.multiple}"
                )
        self.net = None
        self.precision = None

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

    def _fit_targets(self, fit_samples) -> list:
        """The training target of each image (C x H x W float32), in the images' order."""
        return [instance_targets(s.labels)[self._target_index()] for s in fit_samples]

    def _fit_payload(self, image) -> dict:
        """What the validation's post-processing search gets for one image."""
        return dict(zip(self.outputs, self.predict_maps(image)))

    def _fit_step(self, fit: SimpleNamespace):
        """The training step ``step_fn(step) -> loss`` over ``fit`` (images, targets, device,
        precision, net, rng, bs, crop, opt, probs, set_lr, info): a batch of random crops with
        flips/rot90, binary cross-entropy on every output map (and every deep-supervision
        side output). Subclasses with other targets and losses replace it."""
        import torch
        import torch.nn.functional as F

        def step_fn(step):
            xs, ys = [], []
            for i in fit.rng.choice(len(fit.images), size=fit.bs, p=fit.probs):
                crops = random_crop([fit.images[i], fit.targets[i]], fit.crop, fit.rng)
                x, y = random_flip_rot(crops, fit.rng)
                xs.append(x)
                ys.append(y)
            x = to_device(np.stack(xs), fit.device)
            y = torch.from_numpy(np.stack(ys)).to(fit.device)
            fit.net.train()
            with autocast(fit.device, fit.precision):
                logits = self._logits(fit.net, x)
            if not isinstance(logits, (list, tuple)):
                logits = [logits]
            loss = sum(F.binary_cross_entropy_with_logits(lg.float(), y) for lg in logits)
            return optimizer_step(fit.opt, loss)

        return step_fn

    def fit(self, train, workdir, budget_minutes=None, epochs=None, progress=True) -> None:
        """Train on a canonical dataset split (random crops + flips/rot90, AdamW, cosine LR,
        the step of :meth:`_fit_step`), keep the best weights by AP@0.5 on a seeded validation
        slice, then choose the post-processing thresholds on that slice.

        Args:
            train: CanonicalDataset (or any sequence of Samples).
            workdir: folder for the trained weights (``workdir/model``); None: not saved.
            budget_minutes / epochs: whichever ends first; neither -> option ``epochs``.
        """
        import torch

        t_start = time.perf_counter()
        check_train(train)
        o = self.options
        samples = list(train)
        in_ch = o["in_channels"]
        if in_ch is None:
            in_ch = max(1 if s.image.ndim == 2 else s.image.shape[-1] for s in samples)
            o["in_channels"] = int(in_ch)
        fit_samples, val = validation_split(samples, o)
        images = [normalize_image(s.image, in_ch) for s in fit_samples]
        device, precision = device_precision(o)
        self.precision = precision
        net = self._ensure_net(in_ch)
        if device.type == "cpu":
            net.to(memory_format=torch.channels_last)
        bs = int(o["batch_size"])
        crop = fit_patch(int(o["crop"]), self.multiple, [s.labels.shape for s in fit_samples])
        opt = torch.optim.AdamW(net.parameters(), lr=float(o["lr"]), weight_decay=o["weight_decay"])
        fit = SimpleNamespace(
            images=images,
            targets=self._fit_targets(fit_samples),
            device=device,
            precision=precision,
            net=net,
            rng=np.random.default_rng(int(o["seed"])),
            bs=bs,
            crop=crop,
            opt=opt,
            probs=area_weights(images),
            set_lr=cosine_lr(opt, float(o["lr"])),
            info={"crop": crop},
        )
        step_fn = self._fit_step(fit)
        with seeded(int(o["seed"]) + 1):
            self.info = fit_validated(
                o,
                val,
                step_fn,
                o["steps_per_epoch"] or max(1, math.ceil(len(fit_samples) / bs)),
                net,
                self._fit_payload,
                self._instances,
                self._tune_grid(),
                epochs=epochs,
                budget_minutes=budget_minutes,
                t_start=t_start,
                set_lr=fit.set_lr,
                precision=precision,
                device=device,
                progress=progress,
                desc=f"{self.name} fit",
                train_images=len(fit_samples),
                **fit.info,
            )
        if workdir is not None:
            self.save(Path(workdir) / "model")

    def _tune_grid(self) -> dict:
        grid = {"fg_threshold": [0.3, 0.4, 0.5, 0.6, 0.7]}
        modes = [m for m in ("boundary", "distance") if m in self.outputs]
        if len(modes) > 1:
            grid["seeds"] = modes
        if "boundary" in self.outputs:
            grid["boundary_threshold"] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
        if "distance" in self.outputs:
            grid["seed_threshold"] = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
        if not modes:
            grid["min_distance"] = [2, 3, 5, 8, 12]
        grid["min_size"] = [4, 8, 16, 32, 64]
        return grid

    def _prediction_input(self, image: np.ndarray):
        """(device, precision, normalised C x H x W image, network in eval mode) for
        prediction; CellsynthError when there is no trained network."""
        if self.net is None:
            raise CellsynthError(f"{self.name}: model is not trained; call fit() or load() first")
        o = self.options
        device, precision = device_precision(o, getattr(self, "precision", None))
        x = normalize_image(image, int(o["in_channels"]))
        self.net.eval()
        return device, precision, x, self.net

    def predict_maps(self, image: np.ndarray) -> np.ndarray:
        """Image -> K x H x W probabilities (the channels named in ``outputs``)."""
        import torch

        device, precision, x, net = self._prediction_input(image)
        o = self.options

        def fn(tile):
            t = to_device(tile, device)
            with torch.no_grad(), autocast(device, precision):
                out = net(t)
            if isinstance(out, (list, tuple)):
                out = out[0]
            return torch.sigmoid(out.float()).cpu().numpy()

        return predict_tiled(fn, x, int(o["tile"]), int(o["overlap"]), self.multiple)

    @staticmethod
    def _instances(maps: dict, o: dict) -> np.ndarray:
        return maps_to_instances(
            maps["fg"],
            boundary=maps.get("boundary"),
            distance=maps.get("distance"),
            fg_threshold=o["fg_threshold"],
            boundary_threshold=o["boundary_threshold"],
            seed_threshold=o["seed_threshold"],
            min_distance=o["min_distance"],
            min_size=o["min_size"],
            seeds=o.get("seeds", "auto"),
        )

    def predict(self, image: np.ndarray) -> np.ndarray:
        """H x W (x C) image -> uint16 instance labels H x W."""
        return self._instances(dict(zip(self.outputs, self.predict_maps(image))), self.options)

    @classmethod
    def _rebuild(cls, path, options: dict):
        seg = cls(**options)
        return seg, seg._ensure_net(saved_in_channels(path, options))
