"""Swin transformer + FPN + Mask R-CNN with space-filling augmentation (segmenter ``swin``).

After SCTS: Y. Zhou, W. Li, G. Yang, "SCTS: Instance Segmentation of Single Cells Using a
Transformer-Based Semantic-Aware Model and Space-Filling Augmentation", WACV 2023, reported best
in its group on LIVECell. Written here from the paper's description (no code of the paper): a
Swin transformer backbone feeding an FPN into a Mask R-CNN, trained with cells cut from training
images pasted into the empty background of other training crops, so that sparse images become
densely filled. The paper's semantic-aware head is not reproduced; the Mask R-CNN is the
project's (:mod:`cellsynth.benchmark.segmenters.maskrcnn`: small anchors, no internal resizing,
percentile normalisation, thresholds chosen on the validation slice, soft masks painted in score
order), with ``arch="swin_t_fpn"``.

Backbone (:class:`SwinFPN`): torchvision's ``SwinTransformer`` blocks (the ``swin_t`` layout:
patch 4, window 7, depths 2/2/6/2, heads 3/6/12/24 at embed dim 96; random initialisation,
nothing downloaded), its four stages (strides 4, 8, 16, 32; channels C, 2C, 4C, 8C), each
through its own LayerNorm, into torchvision's ``FeaturePyramidNetwork`` with a max-pooled extra
level: five maps ``0``, ``1``, ``2``, ``3``, ``pool`` of ``fpn_channels`` channels at strides
4..64, one anchor size per level (8..128 px by default). Inputs are zero-padded (bottom/right) to
a multiple of 32 so that every patch merging halves exactly, and each stage is cropped back to
``ceil(size / stride)``; torchvision pads the attention windows itself. ``swin_embed_dim`` and
``swin_depths`` make it smaller for a CPU (e.g. 48 and 2/2/2/2).

Space filling (:func:`space_fill`, options ``space_fill`` = probability per training crop,
``space_fill_cells`` = most cells pasted into one crop, ``space_fill_fraction`` = stop once this
fraction of the crop is cells): a bank of donor cells (:func:`cut_cells`: each instance's
bounding box of pixels and its mask, cells touching the image border left out) is cut from the
training images once; a crop draws donors from the other images and pastes each at a random
empty place where the cell, grown by ``space_fill_margin`` pixels, touches no cell already
there; the pasted pixels keep their values and the cell its shape, and its mask joins the
targets under a new label.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from cellsynth.benchmark.segmenters import maskrcnn
from cellsynth.benchmark.segmenters._swin_backbone import (  # noqa: F401 (re-exported)
    BACKBONE_DEFAULTS,
    SwinBody,
    SwinFPN,
    swin_fpn_backbone,
    swin_heads,
)
from cellsynth.benchmark.segmenters.base import register
from cellsynth.errors import CellsynthError

SWIN_ARCHS = ("swin_t_fpn",)
# at most this many donor cells are kept (a random subset), whatever the training set's size
DONOR_BANK = 4000

DEFAULTS = {
    **maskrcnn.DEFAULTS,
    "arch": "swin_t_fpn",
    **BACKBONE_DEFAULTS,
    "weight_decay": 0.05,  # AdamW, as Swin detectors are trained
    "space_fill": 0.5,  # probability that a training crop is filled
    "space_fill_cells": 30,  # most cells pasted into one crop
    "space_fill_fraction": 0.5,  # stop filling once this fraction of the crop is cells
    "space_fill_margin": 1,  # pasted cells keep this many pixels from any other cell
}


# --- space-filling augmentation ------------------------------------------------------------------
def cut_cells(image: np.ndarray, labels: np.ndarray, min_area: int = 4, border: bool = False):
    """The cells of one image as donors for :func:`space_fill`.

    Args:
        image: C x H x W or H x W; labels: H x W instance labels (0 = background).
        min_area: cells with fewer pixels are left out.
        border: keep cells touching the image border (cut off there; left out by default).
    Returns:
        list of (pixels, mask): pixels C x h x w (or h x w) copied from the cell's bounding box,
        mask h x w bool.
    """
    labels = np.asarray(labels)
    h, w = labels.shape
    donors = []
    for idx, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        ys, xs = sl
        if not border and (ys.start == 0 or xs.start == 0 or ys.stop == h or xs.stop == w):
            continue
        mask = labels[sl] == idx
        if mask.sum() < min_area:
            continue
        donors.append((np.array(image[..., ys, xs]), mask))
    return donors


def space_fill(
    image: np.ndarray,
    labels: np.ndarray,
    donors,
    rng: np.random.Generator,
    max_cells: int = 30,
    max_fraction: float = 1.0,
    margin: int = 1,
    tries: int = 10,
):
    """Paste donor cells into the empty background of one image, never onto existing cells.

    Each of up to ``max_cells`` donors (drawn at random) is tried at up to ``tries`` random
    places centred on empty pixels; it is pasted at the first where the cell grown by ``margin``
    pixels overlaps no cell (existing or pasted before) and lies inside the image. Its pixels are
    copied unchanged under its mask and the mask is labelled with the next free id. Filling
    stops once ``max_fraction`` of the pixels are cells.

    Args:
        image: C x H x W or H x W; labels: H x W instance labels.
        donors: sequence of (pixels, mask) as :func:`cut_cells` returns them (same channels).
    Returns:
        (image, labels) copies (labels int32), and the number of cells pasted.
    """
    image = np.array(image)
    labels = np.array(labels, dtype=np.int32)
    h, w = labels.shape
    occupied = labels > 0
    n_pasted = 0
    if not len(donors) or max_cells < 1:
        return image, labels, 0
    total = float(h * w)
    filled = float(occupied.sum())
    next_id = int(labels.max()) + 1
    grow = np.ones((3, 3), bool)
    for _ in range(int(max_cells)):
        if filled >= max_fraction * total:
            break
        empty = np.flatnonzero(~occupied)
        if not empty.size:
            break
        pixels, mask = donors[int(rng.integers(len(donors)))]
        mh, mw = mask.shape
        if mh > h or mw > w:
            continue
        halo = np.pad(mask, margin) if margin > 0 else mask
        if margin > 0:
            halo = ndi.binary_dilation(halo, grow, iterations=int(margin))
        for c in rng.choice(empty, size=min(int(tries), empty.size), replace=False):
            y = int(c // w) - mh // 2
            x = int(c % w) - mw // 2
            if y < 0 or x < 0 or y + mh > h or x + mw > w:
                continue
            # the grown cell, clipped to the image, must meet no occupied pixel
            y0, x0 = y - margin, x - margin
            cy0, cx0 = max(y0, 0), max(x0, 0)
            cy1, cx1 = min(y0 + halo.shape[0], h), min(x0 + halo.shape[1], w)
            part = halo[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
            if (occupied[cy0:cy1, cx0:cx1] & part).any():
                continue
            region = (slice(y, y + mh), slice(x, x + mw))
            image[(..., *region)][..., mask] = pixels[..., mask]
            labels[region][mask] = next_id
            occupied[region] |= mask
            filled += float(mask.sum())
            next_id += 1
            n_pasted += 1
            break
    return image, labels, n_pasted


class _Subset:
    """The items of ``items`` at ``index`` as a sequence (no copy of the list)."""

    def __init__(self, items, index):
        self.items, self.index = items, index

    def __len__(self):
        return len(self.index)

    def __getitem__(self, k):
        return self.items[int(self.index[k])]


@register
class SwinSegmenter(maskrcnn.MaskRCNNSegmenter):
    """Mask R-CNN on a Swin transformer + FPN with space-filling augmentation (module docstring)."""

    name = "swin"
    DEFAULTS = DEFAULTS

    def __init__(self, **options):
        super().__init__(**options)
        o = self.options
        self.check_choice("arch", SWIN_ARCHS)
        if not 0.0 <= float(o["space_fill"]) <= 1.0:
            raise CellsynthError(f"swin: space_fill must be in [0, 1], got {o['space_fill']}")
        if int(o["space_fill_cells"]) < 0 or int(o["space_fill_margin"]) < 0:
            raise CellsynthError("swin: space_fill_cells and space_fill_margin must be >= 0")
        # refuse a bad backbone now rather than at the first fit
        swin_heads(int(o["swin_embed_dim"]), o["swin_heads"])

    def _crop_augmenter(self, images, labels, rng):
        """Space filling of the training crops (see :func:`space_fill`): the donor bank is cut
        from the training images once, each crop draws from the other images' cells."""
        o = self.options
        p, cells = float(o["space_fill"]), int(o["space_fill_cells"])
        if p <= 0 or cells < 1:
            return None
        min_area = int(o["min_object_area"])
        bank, source = [], []
        for i, (x, y) in enumerate(zip(images, labels, strict=True)):
            got = cut_cells(x, y, min_area)
            bank += got
            source += [i] * len(got)
        if not bank:
            return None
        source = np.array(source)
        if len(bank) > DONOR_BANK:
            keep = np.sort(rng.choice(len(bank), size=DONOR_BANK, replace=False))
            bank, source = [bank[k] for k in keep], source[keep]
        many = len(set(source.tolist())) > 1
        fraction, margin = float(o["space_fill_fraction"]), int(o["space_fill_margin"])

        def augment(x, y, i):
            if rng.random() >= p:
                return x, y
            donors = _Subset(bank, np.flatnonzero(source != i)) if many else bank
            x, y, _ = space_fill(x, y, donors, rng, cells, fraction, margin)
            return x, y

        return augment
