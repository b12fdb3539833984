"""torchvision Mask R-CNN segmenter, set up for dense small cells and trained on the split.

Architectures (option ``arch``): ``resnet50_fpn`` (default; torchvision
``maskrcnn_resnet50_fpn``), ``resnet50_fpn_v2`` (``maskrcnn_resnet50_fpn_v2``), and lighter
``resnet18_fpn`` / ``resnet34_fpn`` (ResNet + FPN from ``backbone_utils``) that train from
scratch on a CPU within minutes, and ``swin_t_fpn`` (a Swin transformer + FPN, built by
:mod:`cellsynth.benchmark.segmenters.swin`, whose ``swin`` segmenter sets its size options).
No weights are downloaded: by default everything starts from random initialisation
(``weights=None, weights_backbone=None``). ``weights`` (a whole Mask R-CNN, e.g. COCO; the
class-specific heads are re-initialised) and ``backbone_weights`` (an ImageNet ResNet, or
Swin-T for ``swin_t_fpn`` at its full size) take a local ``.pth`` path, or a torchvision
weights name (``DEFAULT``, ``COCO_V1``, ``IMAGENET1K_V1``, ...) that is used only when its file
is already in the torch hub cache.

Settings for dense small cells: anchors of 8..128 px (one size per FPN level, ratios 0.5/1/2),
hundreds of detections per image, RPN pre/post-NMS top-n raised to 3000/1500 (test), no internal
resizing (images keep their size, times ``scale``). Images are percentile-normalised, 1-channel
repeated to 3. ``mask_head`` sets the mask head's conv channels (torchvision: 4 x 256; on a CPU
2 x 128 is about ten times cheaper). The network keeps detections down to score 0.25 and box
NMS 0.7; ``score_threshold``, ``nms_threshold``, ``mask_threshold`` and ``min_size`` then filter
them, and are chosen on the validation slice after training (see ``_fitting.fit_validated``).
Soft masks are painted in descending score order, so the labels never overlap.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cellsynth.benchmark.segmenters._fitting import autocast, fit_validated, validation_split
from cellsynth.benchmark.segmenters._torchutil import (
    TorchNetSegmenter,
    area_weights,
    check_train,
    cosine_lr,
    device_precision,
    get_device,
    load_state_dict_file,
    normalize_image,
    optimizer_step,
    random_crop,
    random_flip_rot,
    seeded,
)
from cellsynth.benchmark.segmenters.base import register
from cellsynth.errors import CellsynthError
from cellsynth.tools.labels import drop_small_objects, relabel_sequential

try:
    import torchvision
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.transform import GeneralizedRCNNTransform
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"maskrcnn needs torchvision ({_exc}); pip install 'cellsynth[benchmark]'"
    ) from None

ARCHS = ("resnet50_fpn", "resnet50_fpn_v2", "resnet18_fpn", "resnet34_fpn", "swin_t_fpn")
_WEIGHT_ENUMS = {
    "resnet50_fpn": "MaskRCNN_ResNet50_FPN_Weights",
    "resnet50_fpn_v2": "MaskRCNN_ResNet50_FPN_V2_Weights",
}
_BACKBONE_ENUMS = {
    "resnet50_fpn": "ResNet50_Weights",
    "resnet50_fpn_v2": "ResNet50_Weights",
    "resnet18_fpn": "ResNet18_Weights",
    "resnet34_fpn": "ResNet34_Weights",
    "swin_t_fpn": "Swin_T_Weights",
}

DEFAULTS = {
    "arch": "resnet50_fpn",
    "weights": None,  # local path or torchvision name (hub cache only)
    "backbone_weights": None,
    "anchor_sizes": [8, 16, 32, 64, 128],
    # channels of the mask head's 3x3 convs (torchvision: 4 x 256); the head runs on every
    # positive RoI in training and every detection in prediction, so on a CPU it dominates:
    # 2 x 128 is about 10x cheaper
    "mask_head": [256, 256, 256, 256],
    "max_detections": 500,
    "rpn_pre_nms_top_n_train": 2000,
    "rpn_post_nms_top_n_train": 2000,
    "rpn_pre_nms_top_n_test": 3000,
    "rpn_post_nms_top_n_test": 1500,
    "box_batch_size_per_image": 256,
    "score_threshold": 0.5,
    "nms_threshold": 0.5,
    "mask_threshold": 0.5,
    "min_size": 8,  # objects smaller than this (pixels, after painting) are dropped
    "min_object_area": 4,  # training objects smaller than this after cropping are ignored
    "scale": 1.0,  # images are resized by this factor before the network
    "crop": 256,
    "batch_size": 4,
    "lr": 2e-4,
    "weight_decay": 1e-4,
    "steps_per_epoch": None,  # None: ceil(images / batch_size)
    "epochs": 20,
    "seed": 0,
    "device": None,
    "precision": "auto",  # auto: bf16 where the device has it, else fp32
    "val_fraction": 0.1,  # validation slice of the training split (seeded)
    "val_max_images": 16,  # at most this many validation images (each costs seconds)
    "n_evals": 6,  # validation points along the training
    "tune": True,  # choose score, NMS and mask thresholds on the validation slice
}

# the network keeps detections down to this score and up to this box overlap; the options
# score_threshold / nms_threshold then filter them (so that they can be chosen after training)
RAW_SCORE = 0.25
RAW_NMS = 0.7
# post-processing candidates chosen on the validation slice (from raw detections computed once)
TUNE_GRID = {
    "score_threshold": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
    "nms_threshold": [0.3, 0.4, 0.5, 0.6, 0.7],
    "mask_threshold": [0.3, 0.4, 0.5, 0.6],
    "min_size": [4, 8, 16, 32],
}


class _KeepSizeTransform(GeneralizedRCNNTransform):
    """GeneralizedRCNNTransform without resizing, whose eval postprocess keeps the small
    per-box mask probabilities (N x 1 x 28 x 28) instead of pasting full-image masks: the
    segmenter pastes them one by one (full-image masks of hundreds of cells would need GBs)."""

    def resize(self, image, target=None):
        return image, target

    def postprocess(self, result, image_shapes, original_image_sizes):
        return result


def _resolve_weights(spec, enum_name: str, what: str) -> dict:
    """A local path, or a torchvision weights name found in the hub cache -> state_dict."""
    path = Path(os.path.expanduser(str(spec)))
    if path.suffix in (".pt", ".pth", ".bin") or path.exists() or os.sep in str(spec):
        if not path.is_file():
            raise CellsynthError(
                f"maskrcnn: {what} file {path} not found; give the path of a torch state_dict"
            )
        return load_state_dict_file(path)
    try:
        enum = getattr(torchvision.models, enum_name)
        w = enum[str(spec)] if str(spec) != "DEFAULT" else enum.DEFAULT
    except (AttributeError, KeyError):
        raise CellsynthError(
            f"maskrcnn: unknown {what} {spec!r}; give a local .pth path or a {enum_name} name"
        ) from None
    cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)
    if not cache.is_file():
        raise CellsynthError(
            f"maskrcnn: {what} {enum_name}.{w.name} is not available offline: put "
            f"{cache.name} (from {w.url}) into {cache.parent}, or give a local path"
        )
    return load_state_dict_file(cache)


def build_model(options: dict, load_pretrained: bool = True):
    """Build the Mask R-CNN described by ``options`` (2 classes: background, cell)."""
    from torch import nn
    from torchvision.models.detection import (
        MaskRCNN,
        maskrcnn_resnet50_fpn,
        maskrcnn_resnet50_fpn_v2,
    )
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    arch = options["arch"]
    if arch not in ARCHS:
        raise CellsynthError(f"maskrcnn: unknown arch {arch!r}; choose {', '.join(ARCHS)}")
    sizes = [int(s) for s in options["anchor_sizes"]]
    if len(sizes) != 5:
        raise CellsynthError("maskrcnn: anchor_sizes needs 5 sizes (one per FPN level)")
    kwargs = dict(
        rpn_pre_nms_top_n_train=int(options["rpn_pre_nms_top_n_train"]),
        rpn_post_nms_top_n_train=int(options["rpn_post_nms_top_n_train"]),
        rpn_pre_nms_top_n_test=int(options["rpn_pre_nms_top_n_test"]),
        rpn_post_nms_top_n_test=int(options["rpn_post_nms_top_n_test"]),
        box_detections_per_img=int(options["max_detections"]),
        box_score_thresh=min(RAW_SCORE, float(options["score_threshold"])),
        box_nms_thresh=max(RAW_NMS, float(options["nms_threshold"])),
        box_batch_size_per_image=int(options["box_batch_size_per_image"]),
    )
    if arch == "resnet50_fpn":
        model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2, **kwargs)
    elif arch == "resnet50_fpn_v2":
        model = maskrcnn_resnet50_fpn_v2(
            weights=None, weights_backbone=None, num_classes=2, **kwargs
        )
    elif arch == "swin_t_fpn":
        from cellsynth.benchmark.segmenters._swin_backbone import swin_fpn_backbone

        model = MaskRCNN(swin_fpn_backbone(options), num_classes=2, **kwargs)
    else:
        backbone = resnet_fpn_backbone(
            backbone_name=arch.split("_")[0],
            weights=None,
            norm_layer=nn.BatchNorm2d,
            trainable_layers=5,
        )
        model = MaskRCNN(backbone, num_classes=2, **kwargs)
    head = [int(c) for c in options["mask_head"]]
    if not head or min(head) < 1:
        raise CellsynthError(f"maskrcnn: mask_head needs channel counts >= 1, got {head}")
    if head != [256, 256, 256, 256]:
        from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

        model.roi_heads.mask_head = MaskRCNNHeads(model.backbone.out_channels, head, 1)
        model.roi_heads.mask_predictor = MaskRCNNPredictor(head[-1], head[-1], 2)
    # small anchors: one size per FPN level, three aspect ratios (as many as the RPN head has)
    model.rpn.anchor_generator = AnchorGenerator(
        tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * len(sizes)
    )
    t = model.transform
    model.transform = _KeepSizeTransform(
        t.min_size, t.max_size, t.image_mean, t.image_std, size_divisible=32
    )
    if load_pretrained and options.get("weights"):
        state = _resolve_weights(options["weights"], _WEIGHT_ENUMS.get(arch, ""), "weights")
        _load_matching(
            model, state, f"maskrcnn: weights {options['weights']} do not fit arch {arch}"
        )
    if load_pretrained and options.get("backbone_weights"):
        state = _resolve_weights(
            options["backbone_weights"], _BACKBONE_ENUMS[arch], "backbone_weights"
        )
        _load_matching(
            model.backbone.body,
            state,
            f"maskrcnn: backbone_weights {options['backbone_weights']} do not fit the "
            f"{arch} backbone",
        )
    return model


def _load_matching(module, state: dict, refusal: str) -> None:
    """Load the tensors of ``state`` that ``module`` has, with the same shapes (the rest keep
    their initialisation); fewer than half of the module's: CellsynthError(``refusal``)."""
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(usable) < len(own) // 2:
        raise CellsynthError(f"{refusal} ({len(usable)} of {len(own)} tensors match)")
    module.load_state_dict(usable, strict=False)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Image -> 3 x H x W float32, percentile-normalised and clipped to [0, 1]
    (1 channel repeated, 2 channels + a zero channel, 4 channels: the first 3)."""
    x = normalize_image(image)
    if x.shape[0] == 1:
        x = np.repeat(x, 3, axis=0)
    elif x.shape[0] == 2:
        x = np.concatenate([x, np.zeros_like(x[:1])])
    return np.clip(x[:3], 0.0, 1.0)


def _rescale(x: np.ndarray, scale: float, labels: bool = False) -> np.ndarray:
    if scale == 1.0:
        return x
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    t = t[None, None] if x.ndim == 2 else t[None]
    size = [max(1, int(round(s * scale))) for s in x.shape[-2:]]
    mode = "nearest-exact" if labels else "bilinear"
    out = F.interpolate(t, size=size, mode=mode, **({} if labels else {"align_corners": False}))
    out = out[0, 0] if x.ndim == 2 else out[0]
    return out.numpy().astype(x.dtype if labels else np.float32)


def crop_targets(labels: np.ndarray, min_area: int = 4) -> dict:
    """Instance labels -> Mask R-CNN target dict (boxes x0 y0 x1 y1, labels all 1, masks)."""
    ids, counts = np.unique(labels, return_counts=True)
    keep = (ids != 0) & (counts >= min_area)
    ids = ids[keep]
    boxes, masks = [], []
    for i in ids:
        m = labels == i
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        masks.append(m)
    h, w = labels.shape
    return {
        "boxes": torch.tensor(np.array(boxes, dtype=np.float32).reshape(-1, 4)),
        "labels": torch.ones(len(ids), dtype=torch.int64),
        "masks": torch.from_numpy(np.array(masks, dtype=np.uint8).reshape(len(ids), h, w)),
    }


def paint_instances(
    boxes: np.ndarray, masks: np.ndarray, scores: np.ndarray, shape, threshold: float = 0.5
) -> np.ndarray:
    """Paste per-box soft masks into one label image, highest score first, never overlapping.

    Args:
        boxes: N x 4 (x0, y0, x1, y1) in pixels; masks: N x m x m probabilities (box-relative)
        or N x H x W full-image probabilities; scores: N; shape: (H, W).
    Returns:
        H x W int64 labels 1..N' (painting order).
    """
    h, w = shape
    out = np.zeros((h, w), dtype=np.int64)
    full = masks.ndim == 3 and masks.shape[1:] == (h, w)
    nxt = 1
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        if full:
            m = masks[i] > threshold
            y0, x0 = 0, 0
        else:
            x0, y0, x1, y1 = boxes[i]
            x0, y0 = int(math.floor(x0)), int(math.floor(y0))
            x1, y1 = int(math.ceil(x1)), int(math.ceil(y1))
            bw, bh = max(x1 - x0, 1), max(y1 - y0, 1)
            t = torch.from_numpy(np.ascontiguousarray(masks[i], dtype=np.float32))[None, None]
            m = F.interpolate(t, size=(bh, bw), mode="bilinear", align_corners=False)[0, 0]
            m = m.numpy() > threshold
            # clip the box to the image
            cy0, cx0 = max(-y0, 0), max(-x0, 0)
            cy1, cx1 = bh - max(y0 + bh - h, 0), bw - max(x0 + bw - w, 0)
            if cy1 <= cy0 or cx1 <= cx0:
                continue
            m = m[cy0:cy1, cx0:cx1]
            y0, x0 = y0 + cy0, x0 + cx0
        region = out[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]]
        m = m & (region == 0)
        if m.any():
            region[m] = nxt
            nxt += 1
    return out


@register
class MaskRCNNSegmenter(TorchNetSegmenter):
    """torchvision Mask R-CNN trained on the benchmark split (see the module docstring)."""

    name = "maskrcnn"
    requires = "torchvision (pip install 'cellsynth[benchmark]')"
    trainable = True
    DEFAULTS = DEFAULTS
    net_attr = "model"

    def __init__(self, **options):
        super().__init__(**options)
        o = self.options
        self.check_choice("arch", ARCHS)
        if int(o["crop"]) < 32 or float(o["scale"]) <= 0:
            raise CellsynthError("maskrcnn: crop must be >= 32 and scale > 0")
        self.model = None
        self.precision = None

    def _ensure_model(self, load_pretrained: bool = True):
        if self.model is None:
            with seeded(int(self.options["seed"])):
                self.model = build_model(self.options, load_pretrained=load_pretrained)
            self.model.to(get_device(self.options["device"]))
        return self.model

    def fit(self, train, workdir, budget_minutes=None, epochs=None, progress=True) -> None:
        """Train on random crops (flips/rot90) with AdamW and a cosine learning rate, keep the
        best weights by AP@0.5 on a seeded validation slice, then choose the score, NMS and mask
        thresholds on that slice.

        Args:
            train: CanonicalDataset (or sequence of Samples); workdir: saves ``workdir/model``.
            budget_minutes / epochs: whichever ends first; neither -> option ``epochs``.
        """
        t_start = time.perf_counter()
        check_train(train)
        o = self.options
        device, precision = device_precision(o)
        self.precision = precision
        scale = float(o["scale"])
        fit_samples, val = validation_split(list(train), o)
        images, labels = [], []
        for s in fit_samples:
            images.append(_rescale(to_rgb(s.image), scale))
            labels.append(_rescale(s.labels.astype(np.int32), scale, labels=True))
        model = self._ensure_model()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=float(o["lr"]), weight_decay=float(o["weight_decay"]))
        rng = np.random.default_rng(int(o["seed"]))
        bs, crop = int(o["batch_size"]), int(o["crop"])
        steps = o["steps_per_epoch"] or max(1, math.ceil(len(images) / bs))
        min_area = int(o["min_object_area"])
        probs = area_weights(images)
        augment = self._crop_augmenter(images, labels, rng)

        def step_fn(step):
            xs, ts = [], []
            for i in rng.choice(len(images), size=bs, p=probs):
                x, y = random_crop([images[i], labels[i]], crop, rng)
                if augment is not None:
                    x, y = augment(x, y, i)
                x, y = random_flip_rot([x, y], rng)
                xs.append(torch.from_numpy(x).to(device))
                ts.append({k: v.to(device) for k, v in crop_targets(y, min_area).items()})
            model.train()
            with autocast(device, precision):
                losses = model(xs, ts)
            loss = sum(v.float() for v in losses.values())
            return optimizer_step(opt, loss, clip=(params, 10.0))

        with seeded(int(o["seed"]) + 1):
            self.info = fit_validated(
                o,
                val,
                step_fn,
                steps,
                model,
                self._raw,
                self._paint,
                TUNE_GRID,
                epochs=epochs,
                budget_minutes=budget_minutes,
                t_start=t_start,
                set_lr=cosine_lr(opt, float(o["lr"])),
                precision=precision,
                device=device,
                progress=progress,
                desc="maskrcnn fit",
                eval_untrained=False,
                train_images=len(images),
            )
        if workdir is not None:
            self.save(Path(workdir) / "model")

    def _crop_augmenter(self, images, labels, rng):
        """A hook for subclasses: None (no augmentation), or ``augment(x, y, i) -> (x, y)``
        applied to each training crop (3 x c x c image, c x c labels, cut from training image
        ``i``) before its flips; made once per fit from the training images and labels (after
        ``scale``) and the training RNG."""
        return None

    def _raw(self, image: np.ndarray) -> dict:
        """The network's detections on one image (score >= RAW_SCORE, box NMS at RAW_NMS):
        boxes, scores and per-box mask probabilities, plus the shapes to paint them back."""
        if self.model is None:
            if not self.options.get("weights"):
                raise CellsynthError("maskrcnn: model is not trained; call fit() or load() first")
            self._ensure_model()
        o = self.options
        device, precision = device_precision(o, self.precision)
        x = _rescale(to_rgb(image), float(o["scale"]))
        model = self.model
        model.eval()
        with torch.no_grad(), autocast(device, precision):
            out = model([torch.from_numpy(x).to(device)])[0]
        return {
            "boxes": out["boxes"].float().cpu(),
            "scores": out["scores"].float().cpu(),
            "masks": out["masks"][:, 0].float().cpu().numpy(),
            "shape": tuple(x.shape[1:]),
            "image_shape": tuple(image.shape[:2]),
        }

    @staticmethod
    def _paint(raw: dict, o: dict) -> np.ndarray:
        """Raw detections -> labels: score filter, box NMS, mask threshold, size filter."""
        from torchvision.ops import nms

        boxes, scores, masks = raw["boxes"], raw["scores"], raw["masks"]
        keep = torch.nonzero(scores >= float(o["score_threshold"])).flatten()
        if keep.numel():
            keep = keep[nms(boxes[keep], scores[keep], float(o["nms_threshold"]))]
        keep = keep.numpy()
        lab = paint_instances(
            boxes.numpy()[keep],
            masks[keep],
            scores.numpy()[keep],
            raw["shape"],
            float(o["mask_threshold"]),
        )
        h, w = raw["image_shape"]
        if lab.shape != (h, w):
            lab = (
                F.interpolate(
                    torch.from_numpy(lab.astype(np.float32))[None, None],
                    size=(h, w),
                    mode="nearest",
                )[0, 0]
                .numpy()
                .astype(np.int64)
            )
        return relabel_sequential(drop_small_objects(lab, int(o["min_size"])))

    def predict(self, image: np.ndarray) -> np.ndarray:
        """H x W (x C) image -> uint16 instance labels H x W."""
        return self._paint(self._raw(image), self.options)

    @classmethod
    def _rebuild(cls, path, options: dict):
        seg = cls(**options)
        return seg, seg._ensure_model(load_pretrained=False)
