"""Pix2PixHD data: the pairs folder, the random transforms (shared by label, instance map and
image), edge maps and the generator/discriminator inputs.

Pairs folder (written by ``cellsynth dataset pack --kind pairs``)::

    ROOT/{split}_label/NAME.png   uint8 semantic labels (0 background, 1 cell, ...)
    ROOT/{split}_inst/NAME.png    uint16 instance ids
    ROOT/{split}_img/NAME.tif     the image (uint8/uint16, 1..4 channels)
    ROOT/pairs.json               {"label_nc", "channels", "size", "splits", "source"}

The reader is :class:`cellsynth.datasets.pack.PairsDataset` (the one reader of the format, next
to its writer); :func:`open_pairs` keeps its items in memory after the first read.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.nn import functional as F

from cellsynth.datasets.io import image_to_network
from cellsynth.datasets.pack import PairsDataset
from cellsynth.errors import CellsynthError


class _Cached:
    """A :class:`PairsDataset` whose items are kept after the first read (the folders are
    small); its other attributes (``names``, ``meta``, ``label_nc`` ...) pass through."""

    def __init__(self, dataset: PairsDataset):
        self.dataset = dataset
        self._items: dict[int, dict] = {}

    def __getattr__(self, name):
        if name.startswith("_") or name == "dataset":  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        if i not in self._items:
            self._items[i] = self.dataset[i]
        return self._items[i]


def open_pairs(root: str | os.PathLike, split: str = "train") -> _Cached:
    """The pairs dataset of ``root``/``split``, read once and kept in memory."""
    return _Cached(PairsDataset(root, split))


def dataset_facts(dataset) -> dict:
    """label_nc, channels, size (from pairs.json) and the names of a pairs dataset."""
    return {
        "label_nc": int(dataset.label_nc),
        "channels": int(dataset.channels),
        "size": list(dataset.size),
        "names": list(dataset.names),
    }


# ---- transforms ----------------------------------------------------------------------------
def _round_to(n: int, base: int) -> int:
    return max(base, int(round(n / base)) * base)


def transform_params(opt, size: tuple[int, int], rng: np.random.Generator, train: bool) -> dict:
    """The random transform for one sample of ``size`` (H, W): resize target, crop box, flip.

    Modes (``opt.resize_or_crop``): ``resize_and_crop`` (loadSize square, crop fineSize),
    ``crop`` (crop fineSize), ``scale_width`` (width loadSize), ``scale_width_and_crop``
    (width loadSize, crop fineSize), ``none``. Crops and flips happen only when ``train``.
    The result is then resized to multiples of ``opt.size_multiple``.
    """
    h, w = size
    mode = opt.resize_or_crop
    if mode == "resize_and_crop":
        h, w = opt.loadSize, opt.loadSize
    elif mode.startswith("scale_width"):
        h, w = max(1, int(round(h * opt.loadSize / w))), opt.loadSize
    crop = None
    if train and mode in ("resize_and_crop", "crop", "scale_width_and_crop"):
        c = opt.fineSize
        if c > h or c > w:
            raise CellsynthError(
                f"--fineSize {c} is larger than the (resized) image {h}x{w}; lower --fineSize "
                "or raise --loadSize"
            )
        top = int(rng.integers(0, h - c + 1))
        left = int(rng.integers(0, w - c + 1))
        crop = (top, left, c, c)
    flip = bool(train and not opt.no_flip and rng.random() < 0.5)
    out_h, out_w = (crop[2], crop[3]) if crop else (h, w)
    base = opt.size_multiple
    final = (_round_to(out_h, base), _round_to(out_w, base))
    return {"resize": (h, w), "crop": crop, "flip": flip, "final": final}


def _resize(x: torch.Tensor, size, nearest: bool) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if nearest:
        return F.interpolate(x, size=size, mode="nearest-exact")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def apply_transform(x: torch.Tensor, params: dict, nearest: bool) -> torch.Tensor:
    """Apply :func:`transform_params` output to a C x H x W float tensor (nearest for ids)."""
    x = _resize(x[None], params["resize"], nearest)[0]
    if params["crop"] is not None:
        top, left, ch, cw = params["crop"]
        x = x[:, top : top + ch, left : left + cw]
    x = _resize(x[None], params["final"], nearest)[0]
    if params["flip"]:
        x = torch.flip(x, dims=[-1])
    return x


def prepare_item(item: dict, opt, params: dict) -> dict:
    """One pairs item -> tensors: label (H x W int64), inst (H x W int64), image (C x H x W)."""
    name = item["name"]
    label = np.asarray(item["label"])
    if opt.label_nc and label.size and int(label.max()) >= opt.label_nc:
        raise CellsynthError(
            f"sample {name!r}: label id {int(label.max())} >= --label_nc {opt.label_nc}; raise "
            "--label_nc or fix the label map"
        )
    image = np.asarray(item["image"])
    channels = 1 if image.ndim == 2 else image.shape[-1]
    if channels != opt.output_nc:
        raise CellsynthError(
            f"sample {name!r}: image has {channels} channels but the model makes "
            f"{opt.output_nc} (--output_nc); use images with {opt.output_nc} channels"
        )
    lab = torch.from_numpy(label.astype(np.float32))[None]
    ins = torch.from_numpy(np.asarray(item["inst"]).astype(np.float32))[None]
    img = torch.from_numpy(image_to_network(image))
    return {
        "name": name,
        "label": apply_transform(lab, params, True)[0].round().long(),
        "inst": apply_transform(ins, params, True)[0].round().long(),
        "image": apply_transform(img, params, False).clamp(-1, 1),
    }


def load_batch(dataset, indices, opt, epoch: int, train: bool) -> dict:
    """Stack prepared items; each item's transform is seeded by (seed, epoch, index)."""
    items = []
    for i in indices:
        item = dataset[int(i)]
        rng = np.random.default_rng([int(opt.seed), int(epoch), int(i)])
        params = transform_params(opt, item["label"].shape[:2], rng, train)
        items.append(prepare_item(item, opt, params))
    sizes = {tuple(it["label"].shape) for it in items}
    if len(sizes) > 1:
        raise CellsynthError(
            f"images of different sizes {sorted(sizes)} in one batch; use --batchSize 1 or a "
            "--resize_or_crop mode that gives one size"
        )
    return {
        "names": [it["name"] for it in items],
        "label": torch.stack([it["label"] for it in items]),
        "inst": torch.stack([it["inst"] for it in items]),
        "image": torch.stack([it["image"] for it in items]),
    }


# ---- network inputs --------------------------------------------------------------------------
def edge_map(inst: torch.Tensor) -> torch.Tensor:
    """Boundary map of instance ids: 1 where any 4-neighbour has a different id, else 0.

    Args: ``inst`` N x H x W integer tensor. Returns N x 1 x H x W float tensor.
    """
    edge = torch.zeros(inst.shape, dtype=torch.bool, device=inst.device)
    dx = inst[:, :, 1:] != inst[:, :, :-1]
    dy = inst[:, 1:, :] != inst[:, :-1, :]
    edge[:, :, 1:] |= dx
    edge[:, :, :-1] |= dx
    edge[:, 1:, :] |= dy
    edge[:, :-1, :] |= dy
    return edge[:, None].float()


def encode_input(label: torch.Tensor, inst: torch.Tensor | None, opt) -> torch.Tensor:
    """Generator/discriminator condition: one-hot labels (``label_nc`` > 0) or the label values
    (``label_nc`` 0), plus the edge map of ``inst`` unless ``no_instance``.

    Args: ``label`` N x H x W int64, ``inst`` N x H x W int64. Returns N x C x H x W float.
    """
    if opt.label_nc:
        if label.numel() and (int(label.max()) >= opt.label_nc or int(label.min()) < 0):
            raise CellsynthError(
                f"label id {int(label.max())} outside 0..{opt.label_nc - 1} (--label_nc "
                f"{opt.label_nc}); fix the label map or the model"
            )
        x = F.one_hot(label, opt.label_nc).permute(0, 3, 1, 2).float()
    else:
        x = label[:, None].float()
    if not opt.no_instance:
        if inst is None:
            raise CellsynthError("this model needs instance maps (trained without --no_instance)")
        x = torch.cat([x, edge_map(inst)], dim=1)
    return x


def feature_regions(label: torch.Tensor, inst: torch.Tensor, opt) -> torch.Tensor:
    """Regions for feature pooling: instances with ``instance_feat``, else semantic classes."""
    return inst if opt.instance_feat else label
