"""Cellpose segmenter: a CPnet trained from scratch with Cellpose's own pieces, or a pretrained
Cellpose model (by name from the local model folder, or by path), or Cellpose-SAM.

From scratch (``model=None``, the default; cellpose 3.x): the network is built untrained
(``CellposeModel(pretrained_model=False)``, nothing downloaded) with ``diam_mean`` set to the mean
object diameter of the training masks; flows come from ``cellpose.dynamics.labels_to_flows``,
augmentation from ``cellpose.transforms.random_rotate_and_resize`` and the loss from
``cellpose.train._loss_fn_seg``. The loop around them is
:func:`cellsynth.benchmark.segmenters._fitting.fit_validated` (as for the other segmenters): a
minutes budget is spent whole, the best weights by AP@0.5 on a seeded validation slice are kept,
and ``cellprob_threshold``, ``flow_threshold`` and ``min_size`` are chosen on that slice.
Prediction is ``CellposeModel.eval(compute_masks=False)`` (the network's flows and cell
probability) followed by Cellpose's own ``dynamics.compute_masks`` with those thresholds.
``precision="auto"`` runs both under bf16 autocast where the device has bf16.

Pretrained (``model="cyto3"``, ``"nuclei"``, other built-in names, or a file path): the weights
must already be in the Cellpose model folder (``$CELLPOSE_LOCAL_MODELS_PATH`` or
``~/.cellpose/models``); a missing file raises CellsynthError saying which file and where.
Nothing here reaches the network: the download function of cellpose is replaced by one that
raises while this module calls cellpose.

Cellpose 4 (Cellpose-SAM): with cellpose >= 4 installed, ``model`` is one of cellpose 4's
built-in names (``cpsam``, ``cpsam_v2``, ``cpdino``, ``cpdino-vitb`` in 4.2; the file of that
name in the model folder) or the path of a cellpose 4 weights file; with cellpose 3 these names
raise "needs cellpose >= 4". The file is checked before cellpose sees the name, because
cellpose 4 downloads a missing built-in model and replaces an unknown name by its default model
(downloading that). Prediction is cellpose 4's own ``CellposeModel.eval`` (network, tiling,
resampling and mask step) with the options ``diameter`` (None: no rescaling, the model's own
scale), ``flow_threshold``, ``cellprob_threshold``, ``min_size``, ``max_size_fraction``,
``niter``, ``augment``, ``tile_overlap`` and ``batch_size`` (tiles per forward pass), all
defaulting to cellpose 4's defaults; ``precision`` picks the weights' dtype (cellpose 4's
``use_bfloat16``: ``auto`` is bf16 where the device has native bf16, else fp32). The tile size
is the model's own (256 for Cellpose-SAM), so ``bsize`` is not used; cellpose 4 cannot train a
CPnet from scratch (``fit`` needs cellpose 3).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import numpy as np

from cellsynth.benchmark.segmenters._fitting import autocast, fit_validated, validation_split
from cellsynth.benchmark.segmenters._torchutil import (
    area_weights,
    check_train,
    cosine_lr,
    device_precision,
    get_device,
    load_weights,
    optimizer_step,
    save_weights,
    seeded,
    to_device,
)
from cellsynth.benchmark.segmenters.base import Segmenter, package_version, register
from cellsynth.errors import CellsynthError, first_line
from cellsynth.tools.labels import relabel_sequential

try:
    import cellpose  # noqa: F401
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"cellpose segmenter needs cellpose ({_exc}); pip install 'cellsynth[benchmark]'"
    ) from None


CELLPOSE_VERSION = package_version("cellpose")
CELLPOSE_MAJOR = int(CELLPOSE_VERSION.split(".")[0]) if CELLPOSE_VERSION[:1].isdigit() else 0

DEFAULTS = {
    "model": None,  # None: train from scratch; or a built-in name / path; "cpsam" (cellpose 4)
    "diameter": None,  # None: the mean training diameter (scratch) or the model's own
    "channels": [0, 0],  # Cellpose channels: [0, 0] grayscale; [2, 3] green cyto + blue nuclei
    "nchan": 2,
    "bsize": 224,  # training patch size (multiple of 16)
    "batch_size": 8,
    "learning_rate": 0.005,
    "weight_decay": 1e-5,
    "epochs": 100,  # used when neither epochs nor a budget is given to fit
    "scale_range": 0.5,  # random resize augmentation: x (1 - r/2) .. (1 + r/2)
    "min_train_masks": 5,
    "flow_threshold": 0.4,
    "cellprob_threshold": 0.0,
    "min_size": 15,
    "seed": 0,
    "device": None,
    "precision": "auto",  # auto: bf16 where the device has it, else fp32
    "val_fraction": 0.1,  # validation slice of the training split (seeded)
    "val_max_images": 16,  # at most this many validation images (each costs ~2 s)
    "n_evals": 5,  # validation points along the training (each costs ~2 s per image)
    "tune": True,  # choose the thresholds on the validation slice
}
# eval options of cellpose 4 models only (cellpose 4's defaults); refused elsewhere when changed
CP4_DEFAULTS = {
    "max_size_fraction": 0.4,  # masks larger than this fraction of the image are removed
    "niter": None,  # dynamics iterations; None: 200, scaled with the diameter
    "augment": False,  # overlapping flipped tiles averaged
    "tile_overlap": 0.1,
}
DEFAULTS.update(CP4_DEFAULTS)

# post-processing candidates chosen on the validation slice (from the flows computed once)
TUNE_GRID = {
    "cellprob_threshold": [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0],
    "flow_threshold": [0.2, 0.4, 0.6, 0.8, 0.0],
    "min_size": [5, 15, 30, 60],
}

# built-in model name -> file name in the Cellpose model folder (cellpose 3.x naming)
_LEGACY = {"cyto": "cytotorch_0", "cyto2": "cyto2torch_0", "nuclei": "nucleitorch_0"}

# cellpose 4's built-in models (its models.MODEL_NAMES in 4.2): cellpose 3 cannot run them
CP4_MODELS = ("cpsam", "cpsam_v2", "cpdino", "cpdino-vitb")
# where cellpose 4 downloads them from (named in the error for a missing file)
CP4_MODEL_URL = "https://huggingface.co/mouseland/cellpose-sam/resolve/main/"


def cellpose_model_dir() -> Path:
    """The folder where Cellpose looks for its built-in models."""
    env = os.environ.get("CELLPOSE_LOCAL_MODELS_PATH")
    return Path(env) if env else Path.home() / ".cellpose" / "models"


def _no_download(url, dst, progress=True):
    raise CellsynthError(
        f"cellpose tried to download {url}; downloads are disabled: put the file at {dst}"
    )


@contextlib.contextmanager
def offline():
    """Within the block, cellpose's downloader raises instead of reaching the network."""
    from cellpose import models, utils

    saved = utils.download_url_to_file
    utils.download_url_to_file = _no_download
    models.utils.download_url_to_file = _no_download  # the same module; kept explicit
    try:
        yield
    finally:
        utils.download_url_to_file = saved


def _local_file(model: str) -> str | None:
    """``model`` as an existing file's path; None when it reads as a name; CellsynthError for a
    path (with a folder separator or a suffix) that is not there."""
    path = Path(os.path.expanduser(str(model)))
    if path.is_file():
        return str(path)
    if os.sep in str(model) or path.suffix:
        raise CellsynthError(f"cellpose: model file {path} not found")
    return None


def resolve_pretrained(model: str) -> str:
    """Built-in name or path -> path of an existing weights file (no download).

    Raises CellsynthError naming the missing file and the folder to put it in."""
    local = _local_file(model)
    if local is not None:
        return local
    from cellpose import models

    names = set(models.MODEL_NAMES)
    if model not in names:
        raise CellsynthError(
            f"cellpose: unknown model {model!r}; give a path or one of {', '.join(sorted(names))}"
        )
    fname = _LEGACY.get(model, model)
    target = cellpose_model_dir() / fname
    if not target.is_file():
        raise CellsynthError(
            f"cellpose: pretrained model {model!r} is not available offline: put the file "
            f"{fname} (from https://www.cellpose.org/models/{fname}) into {target.parent} "
            "(or set CELLPOSE_LOCAL_MODELS_PATH), or give a local model path"
        )
    return str(target)


def resolve_pretrained_cp4(model: str) -> str:
    """Cellpose 4 built-in name or path -> path of an existing weights file (no download).

    Raises CellsynthError naming the missing file and the folder to put it in, or the known
    names for an unknown one (cellpose 4 itself would download its default model instead)."""
    local = _local_file(model)
    if local is not None:
        return local
    from cellpose import models

    names = list(getattr(models, "MODEL_NAMES", CP4_MODELS))
    if model not in names:
        raise CellsynthError(
            f"cellpose {CELLPOSE_VERSION}: unknown model {model!r}; give a path or one of "
            f"{', '.join(names)} (cellpose 3 models such as cyto3 need cellpose 3.1)"
        )
    target = cellpose_model_dir() / model
    if not target.is_file():
        raise CellsynthError(
            f"cellpose: pretrained model {model!r} is not available offline: put the file "
            f"{model} (from {CP4_MODEL_URL}{model}) into {target.parent} "
            "(or set CELLPOSE_LOCAL_MODELS_PATH), or give a local model path"
        )
    return str(target)


def _images_for_cellpose(image: np.ndarray) -> tuple[np.ndarray, int | None]:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3):
        raise CellsynthError(f"cellpose: expected an H x W (x C) image, got {image.shape}")
    return image, (2 if image.ndim == 3 else None)


def mean_diameter(labels_list) -> float:
    """Mean over images of Cellpose's per-image diameter (median equal-area circle)."""
    from cellpose import utils

    diams = [utils.diameters(np.asarray(lab).astype(np.int32))[0] for lab in labels_list]
    diams = [d for d in diams if d > 0]
    if not diams:
        raise CellsynthError("cellpose: the training masks have no objects")
    return float(max(np.mean(diams), 5.0))


@register
class CellposeSegmenter(Segmenter):
    """Cellpose (see the module docstring). Options: see ``DEFAULTS``."""

    name = "cellpose"
    requires = (
        "cellpose>=3.1,<4 (pip install 'cellsynth[benchmark]'); Cellpose-SAM: cellpose>=4 in "
        "its own environment"
    )
    trainable = True
    DEFAULTS = DEFAULTS

    def __init__(self, **options):
        super().__init__(**options)
        o = self.options
        if int(o["bsize"]) % 16 or int(o["bsize"]) < 32:
            raise CellsynthError(f"cellpose: bsize {o['bsize']} must be a multiple of 16, >= 32")
        self.model = None
        self.precision = None
        # a cellpose 4 model (Cellpose-SAM): predicted by cellpose 4's own eval
        self.cp4 = o["model"] is not None and CELLPOSE_MAJOR >= 4
        self._check_cp4_options()
        if o["model"] is not None:
            self._load_pretrained(o["model"])

    def _check_cp4_options(self) -> None:
        """Refuse options that would be silently ignored: the cellpose 4 eval options away from
        cellpose 4 models, and cellpose 3's channel choice with them."""
        o = self.options
        if self.cp4:
            changed = [k for k in ("channels", "nchan") if _listed(o[k]) != DEFAULTS[k]]
            if changed:
                raise CellsynthError(
                    f"cellpose: option(s) {', '.join(changed)} are not used by cellpose 4 "
                    "models (they take the image's first 3 channels as they are)"
                )
            return
        changed = [k for k, v in CP4_DEFAULTS.items() if o[k] != v]
        if changed:
            raise CellsynthError(
                f"cellpose: option(s) {', '.join(changed)} apply to cellpose 4 models only "
                f"(model=cpsam or a cellpose 4 file, with cellpose >= 4; here {CELLPOSE_VERSION})"
            )

    # --- building ------------------------------------------------------------------------
    def _cellpose_model(self, pretrained, diam_mean: float):
        from cellpose import models

        device = get_device(self.options["device"])
        with offline():
            cpm = models.CellposeModel(
                gpu=device.type == "cuda",
                device=device,
                pretrained_model=pretrained,
                diam_mean=float(diam_mean),
                nchan=int(self.options["nchan"]),
                mkldnn=False,
            )
        # under bf16 autocast the outputs come back as float32 (cellpose hands them to numpy)
        cpm.net.register_forward_hook(_outputs_to_float)
        if device.type == "cpu":  # oneDNN's convolutions are faster channels-last
            import torch

            cpm.net.to(memory_format=torch.channels_last)
        return cpm

    def _load_pretrained(self, model: str) -> None:
        if CELLPOSE_MAJOR >= 4:
            self._load_cp4(model)
            return
        if model in CP4_MODELS:
            raise CellsynthError(
                f"cellpose: {model} (Cellpose-SAM) needs cellpose >= 4; installed "
                f"{CELLPOSE_VERSION}. pip install 'cellpose>=4' in its own environment (see the "
                f"README) and put the {model} weights into {cellpose_model_dir()}"
            )
        path = resolve_pretrained(model)
        diam_mean = 17.0 if model == "nuclei" else 30.0
        self.model = self._cellpose_model(path, diam_mean)

    def _load_cp4(self, model: str) -> None:
        """A cellpose 4 model from an existing local file, built offline in the precision
        chosen (cellpose 4 keeps the weights in bf16 or fp32: its ``use_bfloat16``)."""
        from cellpose import models, vit

        path = resolve_pretrained_cp4(model)
        device, precision = device_precision(self.options)
        try:
            # cellpose 4 builds a DINOv3 network from the separate dinov3 package
            if not hasattr(vit, "dinov3_vitl16") and models.get_backbone(path).startswith("dino"):
                raise CellsynthError(
                    f"cellpose: {path} is a Cellpose-DINO model, which needs the dinov3 package "
                    "(pip install git+https://github.com/facebookresearch/dinov3)"
                )
            with offline():
                self.model = models.CellposeModel(
                    gpu=device.type == "cuda",
                    device=device,
                    pretrained_model=path,
                    use_bfloat16=precision == "bf16",
                )
        except CellsynthError:
            raise
        except Exception as exc:  # not a cellpose 4 file: cellpose / torch say why
            raise CellsynthError(
                f"cellpose {CELLPOSE_VERSION}: cannot load {path} as a cellpose 4 model "
                f"({first_line(exc, type(exc).__name__)})"
            ) from None
        self.precision = precision

    # --- training ------------------------------------------------------------------------
    def fit(self, train, workdir, budget_minutes=None, epochs=None, progress=True) -> None:
        """Train a CPnet from scratch (cellpose 3.x) with Cellpose's own pieces: its network,
        flows (``dynamics.labels_to_flows``), augmentation (``transforms.random_rotate_and_resize``)
        and loss (``train._loss_fn_seg``), driven by :func:`budgeted_fit` so that a minutes budget
        is spent whole, the best weights by validation AP@0.5 are kept, and the cell-probability
        and flow thresholds are chosen on the validation slice.

        Args:
            train: CanonicalDataset (or sequence of Samples).
            workdir: folder for the saved model (``model/``).
            budget_minutes / epochs: whichever ends first; neither -> option ``epochs``.
        """
        t_start = time.perf_counter()  # the budget counts from here, imports included
        import torch
        from cellpose import dynamics, transforms
        from cellpose import train as cp_train

        o = self.options
        if o["model"] is not None:
            raise CellsynthError(
                "cellpose: fit trains from scratch; use model=None (pretrained models are "
                "used as they are)"
            )
        if CELLPOSE_MAJOR >= 4:
            raise CellsynthError(
                f"cellpose {CELLPOSE_VERSION} cannot train from scratch offline; install "
                "cellpose 3.1 (pip install 'cellpose>=3.1,<4')"
            )
        check_train(train)
        if epochs is not None and int(epochs) < 1:
            raise CellsynthError(f"epochs must be >= 1, got {epochs}")
        if budget_minutes is not None and float(budget_minutes) <= 0:
            raise CellsynthError(f"budget_minutes must be > 0, got {budget_minutes}")
        fit_samples, val = validation_split(list(train), o)
        labels = [s.labels.astype(np.int32) for s in fit_samples]
        n_masks = [len(np.unique(lab)) - 1 for lab in labels]
        keep = [i for i, n in enumerate(n_masks) if n >= int(o["min_train_masks"])]
        if not keep:
            raise CellsynthError(
                f"cellpose: no training image has >= {o['min_train_masks']} masks "
                "(option min_train_masks)"
            )
        diam = mean_diameter([labels[i] for i in keep])
        device, precision = device_precision(o)
        self.precision = precision
        data = [self._prepare(fit_samples[i].image) for i in keep]
        flows = dynamics.labels_to_flows([labels[i] for i in keep], device=device)
        flows = [np.asarray(f[1:], dtype=np.float32) for f in flows]

        with seeded(int(o["seed"])):
            cpm = self._cellpose_model(False, diam)
        net = cpm.net
        net.diam_labels.data = torch.tensor([diam], dtype=torch.float32, device=device)
        cpm.diam_labels = diam
        self.model = cpm
        bs, bsize = int(o["batch_size"]), int(o["bsize"])
        rng = np.random.default_rng(int(o["seed"]))
        opt = torch.optim.AdamW(
            net.parameters(), lr=float(o["learning_rate"]), weight_decay=float(o["weight_decay"])
        )
        steps = max(1, int(np.ceil(len(data) / bs)))
        probs = area_weights(data)

        def step_fn(step):
            inds = rng.choice(len(data), size=bs, p=probs)
            # cellpose's augmentation draws from numpy's global RNG: seed it per step
            np.random.seed(int(rng.integers(0, 2**31 - 1)))
            imgi, lbl = transforms.random_rotate_and_resize(
                [data[i] for i in inds],
                Y=[flows[i] for i in inds],
                scale_range=float(o["scale_range"]),
                xy=(bsize, bsize),
            )[:2]
            x = to_device(imgi, device)
            net.train()
            with autocast(device, precision):
                y = net(x)[0]
            return optimizer_step(opt, cp_train._loss_fn_seg(lbl, y.float(), device))

        with _numpy_seed(int(o["seed"])), seeded(int(o["seed"]) + 1):
            self.info = fit_validated(
                o,
                val,
                step_fn,
                steps,
                net,
                self._net_output,
                lambda out, opts: self._masks(out[0], out[1], opts),
                TUNE_GRID,
                epochs=epochs,
                budget_minutes=budget_minutes,
                t_start=t_start,
                set_lr=cosine_lr(opt, float(o["learning_rate"])),
                precision=precision,
                device=device,
                progress=progress,
                desc="cellpose fit",
                train_images=len(data),
                diam_mean=diam,
                cellpose=CELLPOSE_VERSION,
            )
        if workdir is not None:
            self.save(Path(workdir) / "model")

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        """Image -> nchan x H x W float32, as Cellpose converts and normalises it."""
        from cellpose import models, transforms

        o = self.options
        img, ax = _images_for_cellpose(image)
        x = transforms.convert_image(
            img, channels=list(o["channels"]), channel_axis=ax, nchan=o["nchan"]
        )
        x = transforms.normalize_img(x, **{**models.normalize_default, "normalize": True})
        return np.ascontiguousarray(np.moveaxis(x, -1, 0), dtype=np.float32)

    def _net_output(self, image: np.ndarray):
        """Image -> (dP 2 x H x W, cellprob H x W) from the network (``CellposeModel.eval``
        without its mask step), in the chosen precision."""
        import torch

        o = self.options
        img, ax = _images_for_cellpose(image)
        device, precision = device_precision(o, self.precision)
        diameter = o["diameter"]
        if diameter is None and o["model"] is None:
            diameter = float(self.model.diam_labels)
        kwargs = {"channels": list(o["channels"])} if CELLPOSE_MAJOR < 4 else {}
        with offline(), torch.no_grad(), autocast(device, precision):
            _, flows, _ = self.model.eval(
                img,
                channel_axis=ax,
                diameter=diameter,
                normalize={"normalize": True},
                bsize=int(o["bsize"]),
                compute_masks=False,
                progress=False,
                **kwargs,
            )
        return np.asarray(flows[1], dtype=np.float32), np.asarray(flows[2], dtype=np.float32)

    def _masks(self, dP: np.ndarray, cellprob: np.ndarray, o: dict) -> np.ndarray:
        """Cellpose's own mask step (``dynamics.compute_masks``) with the given thresholds."""
        from cellpose import dynamics

        masks = dynamics.compute_masks(
            dP,
            cellprob,
            niter=200,
            cellprob_threshold=float(o["cellprob_threshold"]),
            flow_threshold=float(o["flow_threshold"]),
            min_size=int(o["min_size"]),
            device=get_device(o["device"]),
        )
        masks = masks[0] if isinstance(masks, tuple) else masks
        return relabel_sequential(np.asarray(masks))

    # --- prediction ----------------------------------------------------------------------
    def predict(self, image: np.ndarray) -> np.ndarray:
        """H x W (x C) image -> uint16 instance labels H x W: the network's flows and cell
        probability, then Cellpose's mask step with the (chosen) thresholds."""
        if self.model is None:
            raise CellsynthError("cellpose: model is not trained; call fit() or load() first")
        if self.cp4:
            return self._predict_cp4(image)
        dP, cellprob = self._net_output(image)
        return self._masks(dP, cellprob, self.options)

    def _predict_cp4(self, image: np.ndarray) -> np.ndarray:
        """Cellpose 4's ``CellposeModel.eval`` (percentile normalisation, tiles of the model's
        size, resampling to the image and its mask step) with this segmenter's options."""
        o = self.options
        img, ax = _images_for_cellpose(image)
        diameter = None if o["diameter"] is None else float(o["diameter"])
        with offline():
            masks = self.model.eval(
                img,
                channel_axis=ax,
                batch_size=int(o["batch_size"]),
                normalize={"normalize": True},  # a dict: cellpose 4 edits a bool into its default
                diameter=diameter,
                flow_threshold=float(o["flow_threshold"]),
                cellprob_threshold=float(o["cellprob_threshold"]),
                min_size=int(o["min_size"]),
                max_size_fraction=float(o["max_size_fraction"]),
                niter=None if o["niter"] is None else int(o["niter"]),
                augment=bool(o["augment"]),
                tile_overlap=float(o["tile_overlap"]),
            )[0]
        return relabel_sequential(np.asarray(masks))

    # --- persistence ---------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Weights (the CPnet state_dict, incl. diam_mean / diam_labels) + options."""
        if self.model is None:
            raise CellsynthError("cellpose: nothing to save; call fit() first")
        if self.options["model"] is not None:
            # pretrained: the options (model name / path) are enough
            super().save(path)
            return
        save_weights(path, self.model.net.state_dict(), self.options, self.info)

    @classmethod
    def load(cls, path: str | os.PathLike):
        import json

        opt_file = Path(path) / "options.json"
        if opt_file.is_file() and not (Path(path) / "weights.pt").is_file():
            options = json.loads(opt_file.read_text())
            if options.get("model") is not None:
                return cls(**options)
        if CELLPOSE_MAJOR >= 4 and (Path(path) / "weights.pt").is_file():
            raise CellsynthError(
                f"{path}: a CPnet trained here needs cellpose 3.1 to load; installed "
                f"{CELLPOSE_VERSION} (pip install 'cellpose>=3.1,<4')"
            )
        state, options, info = load_weights(path, cls.name)
        options = {**options, "model": None}
        seg = cls(**options)
        if "diam_mean" not in state:
            raise CellsynthError(f"{path}: weights.pt is not a CPnet state_dict")
        cpm = seg._cellpose_model(False, float(state["diam_mean"].reshape(-1)[0]))
        try:
            cpm.net.load_state_dict(state)
        except (RuntimeError, KeyError) as exc:
            raise CellsynthError(
                f"{path}: weights do not fit a CPnet with nchan={options['nchan']} ({exc})"
            ) from None
        cpm.diam_labels = float(cpm.net.diam_labels.item())
        seg.model = cpm
        seg.info = info
        return seg


def _listed(value):
    """A tuple option as the list that JSON gives back (other values as they are)."""
    return list(value) if isinstance(value, tuple) else value


def _outputs_to_float(module, inputs, outputs):
    """Forward hook: low-precision tensor outputs -> float32 (others unchanged)."""
    import torch

    def cast(t):
        return t.float() if torch.is_tensor(t) and t.is_floating_point() else t

    if isinstance(outputs, (tuple, list)):
        return type(outputs)(cast(t) for t in outputs)
    return cast(outputs)


@contextlib.contextmanager
def _numpy_seed(seed: int):
    """Seed numpy's global RNG (cellpose's augmentation uses it) and restore it afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)
