"""EmbedSeg (Lalit et al., "Embedding-based Instance Segmentation in Microscopy", MIDL 2021):
per-pixel spatial embeddings pointing at the object's centre, a learned clustering bandwidth
(sigma) and a seediness map; instances are grown around the best seeds at prediction time.

Everything EmbedSeg-specific comes from the real ``EmbedSeg`` package (0.2.3, PyTorch): its
``BranchedERFNet`` (an ERFNet encoder with two decoders: 2 offsets + ``n_sigma`` bandwidths, and
the seed map; the last layer initialised by its ``init_output``), its training targets (holes
filled by ``fill_label_holes``, centre images by ``generate_center_image``: the medoid by
default), its ``SpatialEmbLoss`` (Lovasz hinge on the instance margins, sigma variance and seed
regression) and its ``Cluster.cluster`` at prediction time. This module drives them the way
every trainable segmenter here is driven: random crops with flips/rot90, Adam with cosine decay,
training steps within a budget, AP@0.5 on a seeded validation slice with the best weights kept,
then the clustering thresholds (``seed_thresh``, ``min_object_size``) chosen on that slice.
``precision="auto"`` runs the network under bf16 autocast where the device has bf16 (the loss
and the clustering stay in float32). Large images are predicted by tiles (the offsets are
relative, so tiles blend), then clustered whole.

The clustering runs on each connected region of the foreground (seed score > 0.5, the pixels
EmbedSeg's ``cluster`` considers) separately, each on its own box: every step of EmbedSeg's loop
scores all the pixels it was given, so on a whole image its cost grows with the square of the
foreground (a 1024^2 image of 724 nuclei on one CPU thread: 56 s whole, 1.4 s by regions). Within a region the seeds
and proposals are those of the whole-image run; a proposal can no longer reach into another
region (an object in two disconnected pieces), and EmbedSeg's ``min_unclustered_sum`` (stop when
fewer pixels are left unclustered, an image-wide count) is not used (0): the loop ends when no
seed reaches ``seed_thresh``. ``min_mask_sum`` counts the whole image's foreground, as there.

Install: ``pip install 'cellsynth[embedseg]'`` (the runtime packages EmbedSeg's modules import)
and then ``pip install --no-deps EmbedSeg==0.2.3``: its wheel pins ``tifffile==2021.4.8`` (this
project needs a newer one) and pulls Jupyter and itkwidgets, none of which the modules used here
need (the Makefile does both steps). The 0.2.5 wheel is broken (it installs ``models``,
``utils``, ``criterions`` ... straight into site-packages) and is not supported.

Three bugs of EmbedSeg 0.2.3 block it on a current torch, on a machine without a GPU or on
some predictions; all are worked around here from the outside, without changing its files:

- its loss hands a boolean object mask to ``lovasz_hinge``, which computes ``1 - mask``: torch
  refuses to subtract a bool tensor. The name ``lovasz_hinge`` in EmbedSeg's loss module is
  replaced by a wrapper that passes the mask as uint8 (:func:`_patch_lovasz`).
- ``Cluster`` puts its tensors on the GPU with hard-coded ``.cuda()`` calls. While it runs
  here, ``Tensor.cuda`` moves a tensor to the segmenter's device instead (:func:`_cuda_means`).
- ``Cluster.cluster`` marks each object's centre one pixel past where it is and raises
  IndexError for a centre on the last row/column or outside the image; the centre index is
  clamped (:func:`_patch_degrid`; the centres are not used here).

Saved models are weights only: the network's state_dict in ``weights.pt`` (loadable with
``torch.load(weights_only=True)``), beside ``options.json`` and ``info.json``.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from cellsynth.benchmark.segmenters._fitting import autocast, fit_validated, validation_split
from cellsynth.benchmark.segmenters._torchutil import (
    TorchNetSegmenter,
    area_weights,
    check_train,
    cosine_lr,
    device_precision,
    fit_patch,
    get_device,
    load_state_checked,
    load_state_dict_file,
    normalize_image,
    optimizer_step,
    predict_tiled,
    random_crop,
    random_flip_rot,
    saved_in_channels,
    seeded,
    to_device,
)
from cellsynth.benchmark.segmenters.base import package_version, register
from cellsynth.errors import CellsynthError
from cellsynth.tools.labels import relabel_sequential

INSTALL = "pip install 'cellsynth[embedseg]' && pip install --no-deps EmbedSeg==0.2.3"

# EmbedSeg's coordinate grid: 1024 pixels span [0, 1] (its grid_x = 1024, pixel_x = 1), so the
# offsets (tanh, in [-1, 1]) reach about 1023 pixels. The same pixel pitch is kept for crops and
# for whole images of any size.
PITCH = 1.0 / 1023.0
MULTIPLE = 8  # ERFNet down-samples three times
CENTERS = ("medoid", "approximate-medoid", "centroid")

DEFAULTS = {
    "in_channels": None,  # None: from the training images
    "crop": 256,  # training crop size (multiple of 8)
    "tile": 256,  # prediction tile size (multiple of 8)
    "overlap": 32,
    "batch_size": 4,
    "lr": 5e-4,  # EmbedSeg's train_lr
    "weight_decay": 1e-4,  # EmbedSeg's Adam weight decay
    "steps_per_epoch": None,  # None: ceil(images / batch_size)
    "epochs": 50,  # used when neither epochs nor a budget is given to fit
    "center": "medoid",  # the centre each object's embeddings point at (EmbedSeg's choices)
    "n_sigma": 2,  # 2: one bandwidth per axis; 1: isotropic
    "foreground_weight": 10.0,  # EmbedSeg's value for 2-D data
    "w_inst": 1.0,  # loss weights, EmbedSeg's defaults
    "w_var": 10.0,
    "w_seed": 1.0,
    # clustering: EmbedSeg's test defaults where not said. Its seed_thresh is 0.9, which a partly
    # trained network's seeds do not reach: the validation points along the training (which
    # choose the weights kept) would all score 0; the slice chooses the final value.
    "seed_thresh": 0.5,
    "min_object_size": 36,
    "min_mask_sum": 0,  # EmbedSeg's test default is 128: images with fewer seed pixels get none
    "seed": 0,
    "device": None,
    "precision": "auto",  # auto: bf16 where the device has it, else fp32
    "val_fraction": 0.1,  # validation slice of the training split (seeded)
    "val_max_images": 32,
    "n_evals": 10,  # validation points along the training
    "tune": True,  # choose the clustering thresholds on the validation slice
    # a local EmbedSeg checkpoint (its own training's best_iou_model.pth, or the state dict of
    # one): predict with it as it is, or fit from it (fine-tuning); never downloaded
    "pretrained": None,
}

TUNE_GRID = {
    "seed_thresh": [0.5, 0.6, 0.7, 0.8, 0.9],
    "min_object_size": [0, 8, 16, 36, 64, 128],
}


def _import_embedseg() -> SimpleNamespace:
    """The pieces of EmbedSeg used here (with the loss fixed for a current torch)."""
    try:
        from EmbedSeg.criterions import my_loss
        from EmbedSeg.models.BranchedERFNet import BranchedERFNet
        from EmbedSeg.utils import utils as es_utils

        with warnings.catch_warnings():  # its scipy.ndimage.measurements imports
            warnings.simplefilter("ignore", DeprecationWarning)
            from EmbedSeg.utils import generate_crops
    except ImportError as exc:
        raise CellsynthError(
            f"embedseg needs the EmbedSeg package and the packages it imports ({exc}); {INSTALL}"
        ) from None
    _patch_lovasz(my_loss)
    _patch_degrid(es_utils)
    return SimpleNamespace(
        BranchedERFNet=BranchedERFNet,
        SpatialEmbLoss=my_loss.SpatialEmbLoss,
        Cluster=es_utils.Cluster,
        fill_label_holes=generate_crops.fill_label_holes,
        generate_center_image=generate_crops.generate_center_image,
    )


def _patch_lovasz(my_loss) -> None:
    """Make EmbedSeg 0.2.3's loss run on a current torch.

    ``SpatialEmbLoss.forward`` passes ``instance.eq(id)`` (a bool tensor) to ``lovasz_hinge``,
    whose gradient computes ``1 - labels``; torch refuses to subtract a bool tensor (EmbedSeg
    was written when comparisons gave uint8). ``forward`` looks ``lovasz_hinge`` up in its module
    at call time, so the name there is pointed at a wrapper that converts the mask to uint8 and
    calls EmbedSeg's own function. Done once per process."""
    import torch

    original = my_loss.lovasz_hinge
    if getattr(original, "cellsynth_uint8_labels", False):
        return

    def lovasz_hinge(logits, labels, *args, **kwargs):
        if labels.dtype == torch.bool:
            labels = labels.to(torch.uint8)
        return original(logits, labels, *args, **kwargs)

    lovasz_hinge.cellsynth_uint8_labels = True
    my_loss.lovasz_hinge = lovasz_hinge


def _patch_degrid(es_utils) -> None:
    """Keep EmbedSeg 0.2.3's ``Cluster.cluster`` from indexing past its image.

    For each object it marks the seed's embedding (the object's centre) in an image of the
    prediction's size, at ``degrid(coordinate)`` = pixel index + 1: a centre on the last
    row/column or outside the image (an embedding may point anywhere) raises IndexError. That
    image only goes into the object list ``cluster`` returns beside the instance map, which is
    not used here; ``cluster`` looks ``degrid`` up in its module at call time, so the name there
    is pointed at a wrapper that clamps the index into the grid (and hands EmbedSeg a float
    instead of a 1-element array, which numpy >= 1.25 deprecates converting with int())."""
    original = es_utils.degrid
    if getattr(original, "cellsynth_clamped", False):
        return

    def degrid(meter, grid_size, pixel_size):
        index = original(float(np.ravel(meter)[0]), grid_size, pixel_size)
        return min(max(index, 0), int(grid_size) - 1)

    degrid.cellsynth_clamped = True
    es_utils.degrid = degrid


@contextlib.contextmanager
def _cuda_means(device):
    """Within the block, ``Tensor.cuda()`` moves a tensor to ``device`` instead of the GPU.

    EmbedSeg 0.2.3's ``Cluster`` calls ``.cuda()`` on its coordinate grid (in ``__init__``) and
    on its work tensors (in ``cluster``), which fails on a machine without CUDA. The method is
    replaced on the class for the duration of the call only (not thread-safe: another thread
    calling ``.cuda()`` meanwhile would get ``device`` too)."""
    import torch

    own = "cuda" in vars(torch.Tensor)
    saved = vars(torch.Tensor).get("cuda")

    def cuda(self, *args, **kwargs):
        return self.to(device)

    torch.Tensor.cuda = cuda
    try:
        yield
    finally:
        if own:
            torch.Tensor.cuda = saved
        else:
            del torch.Tensor.cuda


def _quiet():
    """EmbedSeg prints as it builds its network and loss."""
    return contextlib.redirect_stdout(io.StringIO())


def _center_images(es, crops: list[np.ndarray], center: str) -> np.ndarray:
    """EmbedSeg's centre image (one True pixel per object) of each label crop: B x H x W bool."""
    out = []
    for lab in crops:
        ids = np.unique(lab)
        out.append(es.generate_center_image(lab, center, ids[ids != 0], False))
    return np.stack(out).astype(bool)


def _loss(criterion, prediction, instances, centers, weights: dict):
    """EmbedSeg's SpatialEmbLoss of a batch (B x C x H x W output, B x H x W instance ids and
    centre images), the foreground being the labelled pixels."""
    import torch

    with warnings.catch_warnings():
        # it indexes with a uint8 mask (its centre image .byte()): deprecated by torch
        warnings.filterwarnings("ignore", message="indexing with dtype torch.uint8")
        return criterion(prediction, instances, (instances > 0).to(torch.uint8), centers, **weights)


@register
class EmbedSegSegmenter(TorchNetSegmenter):
    """EmbedSeg's BranchedERFNet trained from scratch within the budget (see the module
    docstring). Options: see ``DEFAULTS``."""

    name = "embedseg"
    requires = f"EmbedSeg 0.2.3 ({INSTALL})"
    trainable = True
    DEFAULTS = DEFAULTS

    def __init__(self, **options):
        super().__init__(**options)
        o = self.options
        for key in ("crop", "tile"):
            if int(o[key]) < MULTIPLE or int(o[key]) % MULTIPLE:
                raise CellsynthError(
                    f"embedseg: option {key}={o[key]} must be a positive multiple of {MULTIPLE}"
                )
        if int(o["n_sigma"]) not in (1, 2):
            raise CellsynthError(f"embedseg: n_sigma must be 1 or 2, got {o['n_sigma']}")
        self.check_choice("center", CENTERS)
        self.net = None
        self.precision = None

    # --- the network -----------------------------------------------------------------------
    def _pretrained(self) -> dict | None:
        """The state dict of option ``pretrained`` (checked), with in_channels and n_sigma set
        from its shapes; None without the option."""
        spec = self.options.get("pretrained")
        if not spec:
            return None
        state = pretrained_state(spec)
        self.options["in_channels"] = int(state["encoder.initial_block.conv.weight"].shape[1])
        self.options["n_sigma"] = int(state["decoders.0.output_conv.weight"].shape[1]) - 2
        return state

    def _ensure_net(self, in_channels: int | None = None):
        if self.net is not None:
            return self.net
        state = self._pretrained()
        if state is not None:
            in_channels = self.options["in_channels"]
        es = _import_embedseg()
        n_sigma = int(self.options["n_sigma"])
        with seeded(int(self.options["seed"])), _quiet():
            net = es.BranchedERFNet(num_classes=[2 + n_sigma, 1], input_channels=int(in_channels))
            net.init_output(n_sigma)  # offsets 0, bandwidths 1: EmbedSeg's start
        self.options["in_channels"] = int(in_channels)
        if state is not None:
            load_state_checked(
                net,
                state,
                f"embedseg: {self.options['pretrained']} is not a BranchedERFNet of EmbedSeg",
            )
        self.net = net.to(get_device(self.options["device"]))
        return self.net

    # --- training --------------------------------------------------------------------------
    def fit(self, train, workdir, budget_minutes=None, epochs=None, progress=True) -> None:
        """Train BranchedERFNet on a canonical split with EmbedSeg's targets and loss (random
        crops + flips/rot90, Adam with cosine decay), keep the best weights by AP@0.5 on a
        seeded validation slice, then choose the clustering thresholds there.

        Args:
            train: CanonicalDataset (or any sequence of Samples).
            workdir: folder for the trained weights (``workdir/model``).
            budget_minutes / epochs: whichever ends first; neither -> option ``epochs``.
        """
        t_start = time.perf_counter()  # the budget counts from here, imports included
        check_train(train)
        es = _import_embedseg()
        import torch

        o = self.options
        samples = list(train)
        if o.get("pretrained"):
            self._ensure_net()  # fine-tune: in_channels and n_sigma come from the checkpoint
        in_ch = o["in_channels"] or max(
            1 if s.image.ndim == 2 else s.image.shape[-1] for s in samples
        )
        fit_samples, val = validation_split(samples, o)
        images = [normalize_image(s.image, int(in_ch)) for s in fit_samples]
        labels = [es.fill_label_holes(np.asarray(s.labels).astype(np.int32)) for s in fit_samples]
        device, precision = device_precision(o)
        self.precision = precision
        net = self._ensure_net(in_ch)
        if device.type == "cpu":
            net.to(memory_format=torch.channels_last)
        bs, n_sigma = int(o["batch_size"]), int(o["n_sigma"])
        crop = fit_patch(int(o["crop"]), MULTIPLE, [s.labels.shape for s in fit_samples])
        side = (crop - 1) * PITCH
        with _quiet():
            criterion = es.SpatialEmbLoss(
                grid_y=crop,
                grid_x=crop,
                pixel_y=side,
                pixel_x=side,
                one_hot=False,
                n_sigma=n_sigma,
                foreground_weight=float(o["foreground_weight"]),
            ).to(device)
        weights = {k: float(o[k]) for k in ("w_inst", "w_var", "w_seed")}
        rng = np.random.default_rng(int(o["seed"]))
        steps = int(o["steps_per_epoch"] or max(1, -(-len(images) // bs)))
        opt = torch.optim.Adam(net.parameters(), lr=float(o["lr"]), weight_decay=o["weight_decay"])
        probs = area_weights(images)

        def step_fn(step):
            xs, ys = [], []
            for i in rng.choice(len(images), size=bs, p=probs):
                x, y = random_flip_rot(random_crop([images[i], labels[i]], crop, rng), rng)
                xs.append(x)
                ys.append(y)
            centers = torch.from_numpy(_center_images(es, ys, o["center"])).to(device)
            instances = torch.from_numpy(np.stack(ys)).to(device)
            net.train()
            with autocast(device, precision):
                out = net(to_device(np.stack(xs), device))
            return optimizer_step(opt, _loss(criterion, out.float(), instances, centers, weights))

        with seeded(int(o["seed"]) + 1):
            self.info = fit_validated(
                o,
                val,
                step_fn,
                steps,
                net,
                self.predict_maps,
                self._instances,
                TUNE_GRID,
                epochs=epochs,
                budget_minutes=budget_minutes,
                t_start=t_start,
                set_lr=cosine_lr(opt, float(o["lr"])),
                precision=precision,
                device=device,
                progress=progress,
                desc="embedseg fit",
                train_images=len(images),
                crop=crop,
                embedseg=package_version("EmbedSeg"),
            )
        if workdir is not None:
            self.save(Path(workdir) / "model")

    # --- prediction ------------------------------------------------------------------------
    def predict_maps(self, image: np.ndarray) -> np.ndarray:
        """Image -> the network's raw output, (2 + n_sigma + 1) x H x W float32 (offsets,
        bandwidths, seed logits), by tiles."""
        import torch

        if self.net is None and self.options.get("pretrained"):
            self._ensure_net()  # a pretrained checkpoint predicts as it is
        if self.net is None:
            raise CellsynthError(
                "embedseg: model is not trained; call fit() or load() first, or give the "
                "option pretrained=PATH"
            )
        o = self.options
        device, precision = device_precision(o, self.precision)
        x = normalize_image(image, int(o["in_channels"]))
        net = self.net
        net.eval()

        def fn(tile):
            with torch.no_grad(), autocast(device, precision):
                out = net(to_device(tile, device))
            return out.float().cpu().numpy()

        return predict_tiled(fn, x, int(o["tile"]), int(o["overlap"]), MULTIPLE)

    def _instances(self, maps: np.ndarray, o: dict) -> np.ndarray:
        """EmbedSeg's ``Cluster.cluster`` of one image's network output -> uint16 labels, run on
        each connected region of its foreground (seed score > 0.5) separately (see
        :func:`_cluster_regions`)."""
        from scipy import ndimage

        n_sigma = int(o["n_sigma"])
        seed_logit = maps[2 + n_sigma]
        fg = seed_logit > 0  # sigmoid > 0.5: the pixels EmbedSeg's cluster considers
        out = np.zeros(fg.shape, np.uint32)
        if fg.sum() <= int(o["min_mask_sum"]):
            return relabel_sequential(out)
        regions, _ = ndimage.label(fg, structure=np.ones((3, 3), bool))
        sizes = np.bincount(regions.ravel())
        count = 0
        for i, box in enumerate(ndimage.find_objects(regions), 1):
            if box is None or sizes[i] <= int(o["min_object_size"]):
                continue  # a proposal stays within its region: none could be large enough
            part = maps[:, box[0], box[1]].copy()
            part[2 + n_sigma][regions[box] != i] = -30.0  # the other regions' pixels: no seeds
            h, w = part.shape[1:]
            if h < 2 or w < 2:  # EmbedSeg's cluster squeezes a 1-pixel-wide mask to 1-D
                part = np.pad(part, ((0, 0), (0, max(2 - h, 0)), (0, max(2 - w, 0))))
                part[2 + n_sigma, h:] = part[2 + n_sigma, :, w:] = -30.0
            local = self._cluster(part, o)[:h, :w]
            keep = local > 0
            out[box][keep] = local[keep].astype(np.uint32) + count
            count += int(local.max(initial=0))
        return relabel_sequential(out)

    @staticmethod
    def _cluster(maps: np.ndarray, o: dict) -> np.ndarray:
        """EmbedSeg's ``Cluster.cluster`` of a (2 + n_sigma + 1) x h x w output on its own
        coordinate grid (the training pixel pitch) -> uint16 instance map."""
        import torch

        es = _import_embedseg()
        device = get_device(o["device"])
        h, w = maps.shape[1:]
        with _cuda_means(device):
            cluster = es.Cluster(
                grid_y=h, grid_x=w, pixel_y=(h - 1) * PITCH, pixel_x=(w - 1) * PITCH
            )
            instance_map, _ = cluster.cluster(
                torch.from_numpy(np.ascontiguousarray(maps)).to(device),
                n_sigma=int(o["n_sigma"]),
                seed_thresh=float(o["seed_thresh"]),
                min_mask_sum=0,
                min_unclustered_sum=0,
                min_object_size=int(o["min_object_size"]),
            )
        # EmbedSeg counts objects in int16: read the bits as uint16 (up to 65,535 objects)
        return instance_map.cpu().numpy().view(np.uint16)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """H x W (x C) image -> uint16 instance labels H x W."""
        return self._instances(self.predict_maps(image), self.options)

    # --- persistence -----------------------------------------------------------------------
    @classmethod
    def _rebuild(cls, path, options: dict):
        in_channels = saved_in_channels(path, options)
        seg = cls(**{**options, "pretrained": None})  # the saved weights replace the start point
        net = seg._ensure_net(in_channels)
        seg.options["pretrained"] = options.get("pretrained")
        return seg, net


def pretrained_state(spec) -> dict:
    """The BranchedERFNet state dict in a local EmbedSeg checkpoint: EmbedSeg's own training
    saves ``{"model_state_dict": ..., "optim_state_dict": ..., ...}`` from a ``DataParallel``
    model (keys prefixed ``module.``); a bare state dict works too. Loaded with
    ``weights_only=True`` (:func:`load_state_dict_file`); anything else is one clear error."""
    path = Path(os.path.expanduser(str(spec)))
    if not path.is_file():
        raise CellsynthError(
            f"embedseg: pretrained model {path} not found; put an EmbedSeg checkpoint there (its "
            "training writes best_iou_model.pth); nothing is downloaded"
        )
    state = load_state_dict_file(path, "embedseg: pretrained model", "an EmbedSeg checkpoint")
    if not all(hasattr(v, "shape") for v in state.values()):
        raise CellsynthError(f"embedseg: {path} holds no state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    for key in ("encoder.initial_block.conv.weight", "decoders.0.output_conv.weight"):
        if key not in state:
            raise CellsynthError(f"embedseg: {path} is not a BranchedERFNet of EmbedSeg ({key})")
    return state
