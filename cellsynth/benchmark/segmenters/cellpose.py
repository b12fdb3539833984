"""Cellpose segmenter: a CPnet trained from scratch with Cellpose's own training code, or a
pretrained Cellpose model (by name from the local model folder, or by path), or Cellpose-SAM.

From scratch (``model=None``, the default; cellpose 3.x): the network is built untrained
(``CellposeModel(pretrained_model=False)``, nothing downloaded) with ``diam_mean`` set to the mean
object diameter of the training masks, flows come from ``cellpose.dynamics.labels_to_flows``,
and ``cellpose.train.train_seg`` trains it. A minutes budget is honoured by timing a short
probe run of ``train_seg`` first and choosing ``n_epochs`` (and, for short budgets, images per
epoch so that the learning-rate warm-up of 10 epochs completes) from it.

Pretrained (``model="cyto3"``, ``"nuclei"``, other built-in names, or a file path): the weights
must already be in the Cellpose model folder (``$CELLPOSE_LOCAL_MODELS_PATH`` or
``~/.cellpose/models``); a missing file raises CellsynthError saying which file and where.
``model="cpsam"`` (Cellpose-SAM) needs cellpose >= 4. Nothing here reaches the network: the
download function of cellpose is replaced by one that raises while this module calls cellpose.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from cellsynth.benchmark.segmenters._instances import relabel
from cellsynth.benchmark.segmenters._torchutil import (
    check_train,
    get_device,
    load_weights,
    save_weights,
    seeded,
)
from cellsynth.benchmark.segmenters.base import Segmenter, register
from cellsynth.errors import CellsynthError

try:
    import cellpose  # noqa: F401
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"cellpose segmenter needs cellpose ({_exc}); pip install 'cellsynth[benchmark]'"
    ) from None


def _cellpose_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cellpose")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


CELLPOSE_VERSION = _cellpose_version()
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
    "nimg_per_epoch": None,  # None: all training images (shrunk for short budgets)
    "min_train_masks": 5,
    "flow_threshold": 0.4,
    "cellprob_threshold": 0.0,
    "min_size": 15,
    "seed": 0,
    "device": None,
}

# built-in model name -> file name in the Cellpose model folder (cellpose 3.x naming)
_LEGACY = {"cyto": "cytotorch_0", "cyto2": "cyto2torch_0", "nuclei": "nucleitorch_0"}


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


def resolve_pretrained(model: str) -> str:
    """Built-in name or path -> path of an existing weights file (no download).

    Raises CellsynthError naming the missing file and the folder to put it in."""
    path = Path(os.path.expanduser(str(model)))
    if path.is_file():
        return str(path)
    if os.sep in str(model) or path.suffix:
        raise CellsynthError(f"cellpose: model file {path} not found")
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
    requires = "cellpose>=3.1,<4 (pip install 'cellsynth[benchmark]')"
    trainable = True

    def __init__(self, **options):
        unknown = sorted(set(options) - set(DEFAULTS))
        if unknown:
            raise CellsynthError(
                f"cellpose: unknown option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(DEFAULTS))}"
            )
        super().__init__(**{**DEFAULTS, **options})
        o = self.options
        if int(o["bsize"]) % 16 or int(o["bsize"]) < 32:
            raise CellsynthError(f"cellpose: bsize {o['bsize']} must be a multiple of 16, >= 32")
        self.model = None
        self.info: dict = {}
        if o["model"] is not None:
            self._load_pretrained(o["model"])

    # --- building ------------------------------------------------------------------------
    def _cellpose_model(self, pretrained, diam_mean: float):
        from cellpose import models

        device = get_device(self.options["device"])
        with offline():
            return models.CellposeModel(
                gpu=device.type == "cuda",
                device=device,
                pretrained_model=pretrained,
                diam_mean=float(diam_mean),
                nchan=int(self.options["nchan"]),
                mkldnn=False,
            )

    def _load_pretrained(self, model: str) -> None:
        if model == "cpsam":
            if CELLPOSE_MAJOR < 4:
                raise CellsynthError(
                    f"cellpose: Cellpose-SAM (cpsam) needs cellpose >= 4; installed "
                    f"{CELLPOSE_VERSION}. pip install 'cellpose>=4' (and put the cpsam weights "
                    f"into {cellpose_model_dir()})"
                )
            path = resolve_pretrained_cp4("cpsam")
            from cellpose import models

            with offline():
                self.model = models.CellposeModel(
                    gpu=get_device(self.options["device"]).type == "cuda",
                    pretrained_model=path,
                )
            return
        if CELLPOSE_MAJOR >= 4:
            raise CellsynthError(
                f"cellpose {CELLPOSE_VERSION}: only cpsam is supported with cellpose 4; "
                "install cellpose 3.1 for other models (pip install 'cellpose>=3.1,<4')"
            )
        path = resolve_pretrained(model)
        diam_mean = 17.0 if model == "nuclei" else 30.0
        self.model = self._cellpose_model(path, diam_mean)

    # --- training ------------------------------------------------------------------------
    def fit(self, train, workdir, budget_minutes=None, epochs=None, progress=True) -> None:
        """Train a CPnet from scratch with ``cellpose.train.train_seg`` (cellpose 3.x).

        Args:
            train: CanonicalDataset (or sequence of Samples).
            workdir: folder for cellpose's own checkpoints and the saved model (``model/``).
            budget_minutes / epochs: whichever ends first; neither -> option ``epochs``.
        """
        from cellpose import dynamics, models, transforms
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
        t_start = time.perf_counter()
        samples = list(train)
        labels = [s.labels.astype(np.int32) for s in samples]
        n_masks = [len(np.unique(lab)) - 1 for lab in labels]
        keep = [i for i, n in enumerate(n_masks) if n >= int(o["min_train_masks"])]
        if not keep:
            raise CellsynthError(
                f"cellpose: no training image has >= {o['min_train_masks']} masks "
                "(option min_train_masks)"
            )
        diam = mean_diameter([labels[i] for i in keep])
        device = get_device(o["device"])
        channels = list(o["channels"])
        norm = {"normalize": True}
        data = []
        for i in keep:
            img, ax = _images_for_cellpose(samples[i].image)
            x = transforms.convert_image(img, channels=channels, channel_axis=ax, nchan=o["nchan"])
            x = transforms.normalize_img(x, **{**models.normalize_default, **norm})
            data.append(np.ascontiguousarray(np.moveaxis(x, -1, 0), dtype=np.float32))
        flows = dynamics.labels_to_flows([labels[i] for i in keep], device=device)

        with seeded(int(o["seed"])):
            cpm = self._cellpose_model(False, diam)
        net = cpm.net
        bs = int(o["batch_size"])
        nimg = len(data)
        common = dict(
            train_data=data,
            train_labels=flows,
            batch_size=bs,
            learning_rate=float(o["learning_rate"]),
            weight_decay=float(o["weight_decay"]),
            normalize={"normalize": False},
            channels=None,
            bsize=int(o["bsize"]),
            min_train_masks=0,
            rescale=True,
        )
        workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp())
        workdir.mkdir(parents=True, exist_ok=True)
        max_epochs = int(epochs) if epochs is not None else None
        nimg_per_epoch = int(o["nimg_per_epoch"] or nimg)
        probe = None
        if budget_minutes is not None:
            # time a short probe run (lr 0 in its only epoch) on a copy of the network
            probe_n = min(2 * bs, nimg_per_epoch)
            t0 = time.perf_counter()
            with _numpy_seed(int(o["seed"])), seeded(int(o["seed"])):
                cp_train.train_seg(
                    copy.deepcopy(net),
                    n_epochs=1,
                    nimg_per_epoch=probe_n,
                    save_path=workdir,
                    model_name="probe",
                    **common,
                )
            per_img = (time.perf_counter() - t0) / probe_n
            (workdir / "models" / "probe").unlink(missing_ok=True)
            left = float(budget_minutes) * 60.0 - (time.perf_counter() - t_start)
            n_imgs = max(int(0.95 * left / per_img), bs)
            probe = {"seconds_per_image": per_img, "images_affordable": n_imgs}
            by_budget = max(n_imgs // nimg_per_epoch, 1)
            if max_epochs is None and by_budget < 20 and o["nimg_per_epoch"] is None:
                # short budget: smaller epochs so that the 10-epoch warm-up completes
                nimg_per_epoch = max(bs, n_imgs // 20)
                by_budget = max(n_imgs // nimg_per_epoch, 1)
            max_epochs = by_budget if max_epochs is None else min(max_epochs, by_budget)
        if max_epochs is None:
            max_epochs = int(o["epochs"])
        t0 = time.perf_counter()
        with _numpy_seed(int(o["seed"])), seeded(int(o["seed"]) + 1):
            cp_train.train_seg(
                net,
                n_epochs=max_epochs,
                nimg_per_epoch=nimg_per_epoch,
                save_path=workdir,
                model_name="cellpose_scratch",
                save_every=max(max_epochs, 1),
                **common,
            )
        cpm.diam_labels = float(net.diam_labels.item())
        self.model = cpm
        self.info = {
            "train_images": nimg,
            "epochs": max_epochs,
            "nimg_per_epoch": nimg_per_epoch,
            "diam_mean": diam,
            "seconds": time.perf_counter() - t0,
            "probe": probe,
            "cellpose": CELLPOSE_VERSION,
        }
        self.save(workdir / "model")

    # --- prediction ----------------------------------------------------------------------
    def predict(self, image: np.ndarray) -> np.ndarray:
        """H x W (x C) image -> uint16 instance labels H x W (``CellposeModel.eval``)."""
        if self.model is None:
            raise CellsynthError("cellpose: model is not trained; call fit() or load() first")
        o = self.options
        img, ax = _images_for_cellpose(image)
        diameter = o["diameter"]
        if diameter is None and o["model"] is None:
            diameter = float(self.model.diam_labels)
        kwargs = {}
        if CELLPOSE_MAJOR < 4:
            kwargs["channels"] = list(o["channels"])
        with offline():
            masks = self.model.eval(
                img,
                channel_axis=ax,
                diameter=diameter,
                normalize={"normalize": True},
                flow_threshold=float(o["flow_threshold"]),
                cellprob_threshold=float(o["cellprob_threshold"]),
                min_size=int(o["min_size"]),
                bsize=int(o["bsize"]),
                progress=False,
                **kwargs,
            )[0]
        return relabel(np.asarray(masks))

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


def resolve_pretrained_cp4(name: str) -> str:  # pragma: no cover - needs cellpose 4
    """Cellpose 4 model name -> existing local file (no download)."""
    target = cellpose_model_dir() / name
    if not target.is_file():
        raise CellsynthError(
            f"cellpose: pretrained model {name!r} is not available offline: put the file "
            f"{name} into {target.parent} (or set CELLPOSE_LOCAL_MODELS_PATH)"
        )
    return str(target)


@contextlib.contextmanager
def _numpy_seed(seed: int):
    """Seed numpy's global RNG (cellpose's augmentation uses it) and restore it afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)
