"""Pix2PixHD data: the pairs folder, the random transforms (shared by label, instance map and
image), edge maps and the generator/discriminator inputs.

Pairs folder (written by ``cellsynth dataset pack --kind pairs``)::

    ROOT/{split}_label/NAME.png   uint8 semantic labels (0 background, 1 cell, ...)
    ROOT/{split}_inst/NAME.png    uint16 instance ids
    ROOT/{split}_img/NAME.tif     the image (uint8/uint16, 1..4 channels)
    ROOT/pairs.json               {"label_nc", "channels", "size", "splits", "source"}

:func:`open_pairs` uses ``cellsynth.datasets.pack.PairsDataset`` when it exists and otherwise
the reader here (same format, same errors).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from cellsynth.datasets.io import check_labels, image_to_network, list_images, read_image
from cellsynth.errors import CellsynthError


class PairsFolder:
    """Reader of a pairs folder split: ``len``, ``[i]`` -> dict(name, label, inst, image),
    ``.names``. Arrays are read once and kept (the folders are small)."""

    def __init__(self, root: str | os.PathLike, split: str = "train"):
        self.root = Path(root)
        self.split = split
        if not self.root.is_dir():
            raise CellsynthError(
                f"{self.root}: no such pairs folder; make one with "
                "`cellsynth dataset pack --kind pairs`"
            )
        files = {}
        for part in ("label", "inst", "img"):
            folder = self.root / f"{split}_{part}"
            if not folder.is_dir():
                raise CellsynthError(
                    f"{folder}: missing; a pairs folder needs {split}_label/, {split}_inst/ and "
                    f"{split}_img/ (make one with `cellsynth dataset pack --kind pairs`)"
                )
            files[part] = {p.stem: p for p in list_images(folder, what=f"{split}_{part} files")}
        names = set(files["label"])
        for part in ("inst", "img"):
            if set(files[part]) != names:
                odd = sorted(set(files[part]) ^ names)[0]
                where = "label" if odd in files["label"] else part
                other = part if where == "label" else "label"
                raise CellsynthError(
                    f"{files[where][odd]}: unpaired (no {odd} in {split}_{other}/); every "
                    "label must have an instance map and an image of the same name"
                )
        self.names = sorted(names)
        self._files = files
        self._cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict:
        if i in self._cache:
            return self._cache[i]
        name = self.names[i]
        label_path = self._files["label"][name]
        label = read_image(label_path)
        if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
            raise CellsynthError(
                f"{label_path}: semantic labels must be a 2-D integer image, got {label.dtype} "
                f"{label.shape}"
            )
        inst = check_labels(read_image(self._files["inst"][name]), str(self._files["inst"][name]))
        image = read_image(self._files["img"][name])
        if not (label.shape == inst.shape == image.shape[:2]):
            raise CellsynthError(
                f"{self._files['img'][name]}: size mismatch (label {label.shape}, instance map "
                f"{inst.shape}, image {image.shape[:2]}); the three must have the same size"
            )
        item = {"name": name, "label": label.astype(np.uint8), "inst": inst, "image": image}
        self._cache[i] = item
        return item


def read_pairs_info(root: str | os.PathLike) -> dict:
    """``pairs.json`` of a pairs folder ({} when it is absent)."""
    path = Path(root) / "pairs.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise CellsynthError(f"{path}: unreadable ({exc}); re-pack the pairs folder") from None


class _Cached:
    """Keeps the items of a pairs dataset after the first read (the folders are small)."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.names = list(getattr(dataset, "names", []))
        self._items: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        if i not in self._items:
            self._items[i] = self.dataset[i]
        return self._items[i]


def open_pairs(root: str | os.PathLike, split: str = "train"):
    """The pairs dataset of ``root``/``split`` (worker B's PairsDataset when present, read
    once and kept in memory)."""
    try:
        from cellsynth.datasets.pack import PairsDataset
    except ImportError:
        return PairsFolder(root, split)
    return _Cached(PairsDataset(root, split))


def _names(dataset) -> list[str]:
    names = getattr(dataset, "names", None)
    return list(names) if names is not None else [dataset[i]["name"] for i in range(len(dataset))]


def dataset_facts(dataset, root) -> dict:
    """label_nc, channels and size of a pairs dataset, from pairs.json or its first item."""
    info = read_pairs_info(root)
    first = dataset[0]
    image = first["image"]
    channels = 1 if image.ndim == 2 else image.shape[-1]
    label_nc = info.get("label_nc")
    if label_nc is None:
        label_nc = max(int(first["label"].max()) + 1, 2)
    return {
        "label_nc": int(label_nc),
        "channels": int(info.get("channels", channels)),
        "size": list(info.get("size", list(first["label"].shape))),
        "names": _names(dataset),
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
