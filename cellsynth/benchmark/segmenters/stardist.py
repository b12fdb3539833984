"""StarDist (Schmidt et al., MICCAI 2018): star-convex polygons per pixel + non-maximum suppression.

Everything StarDist-specific comes from the real ``stardist`` package (TensorFlow/Keras): its
``StarDist2D`` network (a U-Net with a probability head and ``n_rays`` radial distances), its
losses (compiled by ``prepare_for_training``), its training-patch generator ``StarDistData2D``
(object probabilities and star distances computed by its C code) and its polygon NMS
(``_instances_from_prediction``). This module only drives it the way every trainable segmenter
here is driven: training steps within a budget, AP@0.5 on a seeded validation slice with the best
weights kept, then the probability and NMS thresholds chosen on that slice.

Needs ``pip install 'cellsynth[stardist]'`` (stardist and tensorflow-cpu). Saved models are
weights only: the Keras weights as tensors in ``weights.pt`` (loadable with
``torch.load(weights_only=True)``), beside ``options.json`` and ``info.json``.

``pretrained``: a local StarDist model folder (``config.json``, ``weights_best.h5`` or
``weights_best.weights.h5``, optionally ``thresholds.json``; e.g. ``2D_versatile_fluo`` unpacked)
is used as it is, with no training: nothing is downloaded.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from cellsynth.benchmark.segmenters._fitting import fit_validated
from cellsynth.benchmark.segmenters._tfutil import import_tensorflow, set_tensorflow_threads
from cellsynth.benchmark.segmenters._torchutil import (
    check_train,
    cosine_lr_value,
    fit_patch,
    load_weights,
    normalize_image,
    save_weights,
)
from cellsynth.benchmark.segmenters.base import Segmenter, register
from cellsynth.errors import CellsynthError
from cellsynth.tools.labels import label_dtype

INSTALL = "pip install 'cellsynth[stardist]'"


def _import_stardist():
    """(StarDist2D, Config2D) with TensorFlow's logging quieted and its CPU threads set."""
    try:
        tf = import_tensorflow()
        from stardist.models import Config2D, StarDist2D
    except ImportError as exc:
        raise CellsynthError(
            f"stardist needs the stardist and tensorflow packages ({exc}); {INSTALL}"
        ) from None
    set_tensorflow_threads(tf)
    return StarDist2D, Config2D


class _KerasWeights:
    """A torch-module-like view of a Keras model's weights (what fit_validated keeps as best)."""

    def __init__(self, keras_model):
        self.keras_model = keras_model

    def state_dict(self) -> dict:
        import torch

        return {
            f"{i:03d}": torch.from_numpy(np.array(w, copy=True))
            for i, w in enumerate(self.keras_model.get_weights())
        }

    def load_state_dict(self, state: dict) -> None:
        current = self.keras_model.get_weights()
        keys = sorted(state)
        if len(keys) != len(current) or any(
            tuple(state[k].shape) != w.shape for k, w in zip(keys, current)
        ):
            raise CellsynthError(
                f"stardist: the saved weights ({len(keys)} arrays) do not fit this network "
                f"({len(current)} arrays); were the options changed?"
            )
        self.keras_model.set_weights([state[k].numpy() for k in keys])


def _augment(x, y):
    """Random flips, 90-degree rotations and intensity scaling of one training patch."""
    k = np.random.randint(4)
    x, y = np.rot90(x, k, axes=(0, 1)), np.rot90(y, k, axes=(0, 1))
    if np.random.rand() < 0.5:
        x, y = x[:, ::-1], y[:, ::-1]
    x = x * np.random.uniform(0.6, 2.0) + np.random.uniform(-0.2, 0.2)
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y)


@register
class StarDistSegmenter(Segmenter):
    """StarDist2D trained from scratch within the budget (or a pretrained local model).

    Options: ``n_rays`` (32), ``grid`` (2: predictions on a 2x subsampled grid), ``patch``
    (training patch side; images smaller than it are padded), ``batch_size``, ``unet_depth``,
    ``unet_filters`` (filters of the first level), ``lr``, ``epochs``, ``steps_per_epoch``
    (None: images / batch_size), ``prob_thresh`` / ``nms_thresh`` (tuned on the validation slice
    when ``tune``), ``seed``, ``val_fraction``, ``val_max_images``, ``n_evals``, ``in_channels``,
    ``pretrained``.
    """

    name = "stardist"
    requires = f"stardist, tensorflow ({INSTALL})"
    trainable = True
    DEFAULTS = {
        "n_rays": 32,
        "grid": 2,
        "patch": 256,
        "batch_size": 4,
        "unet_depth": 3,
        "unet_filters": 32,
        "lr": 3e-4,
        "epochs": 100,
        "steps_per_epoch": None,
        "prob_thresh": 0.5,
        "nms_thresh": 0.4,
        "seed": 0,
        "val_fraction": 0.1,
        "val_max_images": 64,
        "n_evals": 10,
        "tune": True,
        "in_channels": None,
        "pretrained": None,
    }

    def __init__(self, **options):
        super().__init__(**options)
        o = self.options
        div = self._divisor()
        if int(o["patch"]) < div or int(o["patch"]) % div:
            raise CellsynthError(
                f"stardist: patch={o['patch']} must be a positive multiple of {div} "
                f"(grid x 2^unet_depth)"
            )
        if int(o["n_rays"]) < 3:
            raise CellsynthError(f"stardist: n_rays must be at least 3, got {o['n_rays']}")
        self.model = None

    def _divisor(self) -> int:
        """What a patch side must be a multiple of: grid x 2^unet_depth."""
        return int(self.options["grid"]) * 2 ** int(self.options["unet_depth"])

    # --- the network ---------------------------------------------------------------------------
    def _config(self, in_channels: int):
        _, Config2D = _import_stardist()
        o = self.options
        return Config2D(
            n_rays=int(o["n_rays"]),
            grid=(int(o["grid"]),) * 2,
            n_channel_in=int(in_channels),
            unet_n_depth=int(o["unet_depth"]),
            unet_n_filter_base=int(o["unet_filters"]),
            train_patch_size=(int(o["patch"]),) * 2,
            train_batch_size=int(o["batch_size"]),
            train_learning_rate=float(o["lr"]),
            use_gpu=False,
        )

    def _ensure_model(self, in_channels: int):
        if self.model is not None:
            return self.model
        StarDist2D, _ = _import_stardist()
        pre = self.options["pretrained"]
        if pre:
            folder = Path(pre)
            weights = [folder / n for n in ("weights_best.weights.h5", "weights_best.h5")]
            if not (folder / "config.json").is_file() or not any(w.is_file() for w in weights):
                raise CellsynthError(
                    f"stardist: pretrained={pre} is not a StarDist model folder; put its "
                    "config.json and weights_best.h5 (e.g. the unpacked 2D_versatile_fluo) there"
                )
            self.model = StarDist2D(None, name=folder.name, basedir=str(folder.parent))
            self.options["in_channels"] = int(self.model.config.n_channel_in)
            return self.model
        import keras

        keras.utils.set_random_seed(int(self.options["seed"]))
        self.model = StarDist2D(self._config(in_channels), name="stardist", basedir=None)
        self.options["in_channels"] = int(in_channels)
        return self.model

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        """H x W (x C) image -> percentile-normalised float32 H x W (x C) for the network."""
        x = normalize_image(image, self.options["in_channels"])
        return x[0] if x.shape[0] == 1 else np.moveaxis(x, 0, -1)

    # --- training ------------------------------------------------------------------------------
    def fit(self, train, workdir, budget_minutes=None, epochs=None, progress=True) -> None:
        """Train StarDist2D on a canonical split (its patch generator and losses; flips, rot90
        and intensity augmentation; Adam with cosine decay), keep the best weights by AP@0.5 on a
        seeded validation slice, then choose prob_thresh and nms_thresh there. With
        ``pretrained`` nothing is trained."""
        from cellsynth.benchmark.segmenters._fitting import validation_split

        t_start = time.perf_counter()
        check_train(train)
        _import_stardist()  # one clear line when it is not installed
        from stardist import fill_label_holes
        from stardist.models import StarDistData2D

        o = self.options
        if o["pretrained"]:
            self._ensure_model(None)
            self.info = {"pretrained": str(o["pretrained"]), "seconds": 0.0, "steps": 0}
            if workdir is not None:
                self.save(Path(workdir) / "model")
            return
        samples = list(train)
        in_ch = o["in_channels"] or max(
            1 if s.image.ndim == 2 else s.image.shape[-1] for s in samples
        )
        o["in_channels"] = int(in_ch)
        fit_samples, val = validation_split(samples, o)
        patch = fit_patch(int(o["patch"]), self._divisor(), [s.labels.shape for s in fit_samples])
        xs = [_pad_to(self._prepare(s.image), patch) for s in fit_samples]
        ys = [_pad_to(fill_label_holes(s.labels.astype(np.int32)), patch) for s in fit_samples]
        model = self._ensure_model(in_ch)
        model.prepare_for_training()
        keras_model = model.keras_model
        bs = int(o["batch_size"])
        steps = int(o["steps_per_epoch"] or max(1, -(-len(xs) // bs)))
        np.random.seed(int(o["seed"]))
        data = StarDistData2D(
            xs,
            ys,
            batch_size=bs,
            n_rays=int(o["n_rays"]),
            length=10**9,
            patch_size=(patch, patch),
            grid=(int(o["grid"]),) * 2,
            augmenter=_augment,
        )
        base_lr = float(o["lr"])

        def set_lr(fraction):
            keras_model.optimizer.learning_rate.assign(cosine_lr_value(base_lr, fraction))

        def step_fn(step):
            inputs, targets = data[step]
            out = keras_model.train_on_batch(inputs, targets)
            return float(np.ravel(out)[0])

        self.info = fit_validated(
            o,
            val,
            step_fn,
            steps,
            _KerasWeights(keras_model),
            self._payload,
            self._instances,
            {"prob_thresh": [0.3, 0.4, 0.5, 0.6, 0.7], "nms_thresh": [0.2, 0.3, 0.4, 0.5]},
            epochs=epochs,
            budget_minutes=budget_minutes,
            t_start=t_start,
            set_lr=set_lr,
            precision="fp32",
            device="cpu",
            progress=progress,
            desc="stardist fit",
            train_images=len(fit_samples),
            patch=patch,
        )
        if workdir is not None:
            self.save(Path(workdir) / "model")

    # --- prediction ----------------------------------------------------------------------------
    def _payload(self, image: np.ndarray):
        """(image shape, probabilities, distances) of one image (the network's output)."""
        x = self._prepare(image)
        prob, dist = self.model.predict(x, show_tile_progress=False)
        return x.shape[:2], prob, dist

    def _instances(self, payload, options: dict) -> np.ndarray:
        shape, prob, dist = payload
        labels, _ = self.model._instances_from_prediction(
            shape,
            prob,
            dist,
            prob_thresh=float(options["prob_thresh"]),
            nms_thresh=float(options["nms_thresh"]),
        )
        return _as_labels(labels)

    def predict(self, image: np.ndarray) -> np.ndarray:
        if self.model is None:
            if self.options["pretrained"]:
                self._ensure_model(None)
            else:
                raise CellsynthError("stardist: not trained; call fit (or load a saved model)")
        image = np.asarray(image)
        if image.ndim not in (2, 3) or image.size == 0:
            raise CellsynthError(f"stardist: expected an H x W (x C) image, got {image.shape}")
        return self._instances(self._payload(image), self._thresholds())

    def _thresholds(self) -> dict:
        o = self.options
        if o["pretrained"] and not self.info.get("steps"):
            t = self.model.thresholds  # the pretrained model's own thresholds
            return {"prob_thresh": t.prob, "nms_thresh": t.nms}
        return o

    # --- persistence ---------------------------------------------------------------------------
    def save(self, path) -> None:
        if self.model is None:
            raise CellsynthError("stardist: nothing to save; fit first")
        if self.options["pretrained"]:
            super().save(path)  # the options name the pretrained folder
            return
        save_weights(
            path, _KerasWeights(self.model.keras_model).state_dict(), self.options, self.info
        )

    @classmethod
    def load(cls, path) -> StarDistSegmenter:
        import json

        p = Path(path)
        if (p / "options.json").is_file() and not (p / "weights.pt").is_file():
            seg = cls(**json.loads((p / "options.json").read_text()))
            if not seg.options["pretrained"]:
                raise CellsynthError(f"{path}: no saved stardist weights here (weights.pt)")
            seg._ensure_model(None)
            return seg
        state, options, info = load_weights(path, cls.name)
        seg = cls(**options)
        seg._ensure_model(int(options["in_channels"]))
        _KerasWeights(seg.model.keras_model).load_state_dict(state)
        seg.info = info
        return seg


def _pad_to(a: np.ndarray, size: int) -> np.ndarray:
    """Pad an H x W (x C) array at the bottom/right to at least size x size with zeros (for an
    image, after its percentile normalisation: background), so the padded image shows nothing
    where the padded labels hold nothing (a reflected image there showed nuclei the labels
    called background)."""
    ph, pw = max(0, size - a.shape[0]), max(0, size - a.shape[1])
    if not ph and not pw:
        return a
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (a.ndim - 2)
    return np.pad(a, pad)


def _as_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    return labels.astype(label_dtype(int(labels.max(initial=0))))
