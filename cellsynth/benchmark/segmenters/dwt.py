"""Deep Watershed Transform segmenter (Bai and Urtasun 2017, "Deep Watershed Transform for
Instance Segmentation", CVPR, arXiv:1611.08303), written here from the paper: there is no usable
package of it. The Kaggle Sartorius cell-segmentation solutions used the same scheme on
microscopy.

The paper's chain, in three parts:

1. **Semantic segmentation**: the foreground probability of every pixel.
2. **Direction network (DN)**: for every foreground pixel, the unit vector pointing away from the
   nearest boundary of its own object: the normalised gradient of the object's distance
   transform. Trained with an angular loss on the foreground pixels; here the cosine loss
   ``1 - <u_pred, u_true>``.
3. **Watershed transform network (WTN)**: takes only the predicted directions, gated by the
   foreground, and predicts the watershed energy quantised into ``K`` levels of the object's
   distance transform (level 0: background and the outer boundary band). Trained with a
   class-weighted cross-entropy (inverse square-root level frequencies of the training set).

The cut: the energy is thresholded at a level (``P(level >= energy_cut) > core_threshold`` on the
foreground), connected components become the instance cores, and the cores grow back over the
foreground by a watershed on the expected energy level; foreground regions that hold no core
become objects of their own.

Networks and training (a CPU-sized reading of the paper). Parts 1 and 2 share one U-Net
(``widths``) with three output channels (foreground logit and a 2-vector normalised to a unit
direction): both need the same object-boundary features, and one trunk costs half of two on a
CPU. The WTN is a second, smaller U-Net (``wtn_widths``) whose input is
``[fg, fg * u_y, fg * u_x]`` only (it never sees the image), as in the paper. The two are
trained jointly end to end (the WTN's loss reaches the direction network through the predicted
directions), in one budgeted loop: the paper pre-trains each network on ground-truth inputs and
then fine-tunes end to end, which a 15-minute CPU budget cannot afford in stages. Its
pre-training is kept as a curriculum instead: during the first ``teacher`` fraction of training
each sample's WTN input is the ground truth (foreground and directions) with a probability that
falls linearly from 1 to 0, so the WTN learns the direction -> energy mapping on clean fields
first and on the network's own predictions afterwards.

Targets (:func:`dwt_targets`): per object, the Euclidean distance transform ``d`` (distance to
the nearest pixel outside the object; the image border does not count as a boundary), its
gradient after a Gaussian smoothing (``direction_sigma``) normalised to unit length (pixels where
it vanishes, e.g. a disk's centre, are left out of the direction loss), and the energy level
``min(K - 1, floor(d / level_step))``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from cellsynth.benchmark.segmenters._fitting import autocast
from cellsynth.benchmark.segmenters._torchutil import (
    DenseSegmenter,
    optimizer_step,
    predict_tiled,
    random_crop,
    to_device,
)
from cellsynth.benchmark.segmenters.base import register
from cellsynth.errors import CellsynthError
from cellsynth.tools.labels import drop_small_objects, relabel_sequential

# DenseSegmenter options that do not apply here (its watershed seeds)
_NOT_USED = ("boundary_threshold", "seed_threshold", "min_distance", "seeds")


# --- targets ----------------------------------------------------------------------------------
def dwt_targets(
    labels: np.ndarray, levels: int = 8, level_step: float = 2.0, sigma: float = 1.0
) -> np.ndarray:
    """The Deep Watershed Transform's training targets of an instance label image.

    Args:
        labels: H x W integer instance labels (0 = background).
        levels: K, the number of energy levels.
        level_step: pixels of distance per energy level.
        sigma: Gaussian smoothing of each object's distance transform before its gradient.
    Returns:
        5 x H x W float32: foreground (0/1); direction ``u_y``, ``u_x`` (unit vectors pointing
        away from the object's nearest boundary, 0 where undefined); direction validity (0/1:
        foreground pixels whose smoothed distance gradient does not vanish); energy level
        (0..K-1, 0 on background).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise CellsynthError(f"labels must be 2-D, got shape {labels.shape}")
    if int(levels) < 2:
        raise CellsynthError(f"levels must be >= 2, got {levels}")
    if float(level_step) <= 0:
        raise CellsynthError(f"level_step must be > 0, got {level_step}")
    h, w = labels.shape
    out = np.zeros((5, h, w), dtype=np.float32)
    out[0] = labels > 0
    margin = int(math.ceil(3 * float(sigma))) + 2
    for idx, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        y0, y1 = max(sl[0].start - margin, 0), min(sl[0].stop + margin, h)
        x0, x1 = max(sl[1].start - margin, 0), min(sl[1].stop + margin, w)
        obj = labels[y0:y1, x0:x1] == idx
        if obj.all():  # nothing outside it in view: the crop's edge is its boundary
            d = ndi.distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1]
        else:
            d = ndi.distance_transform_edt(obj)
        smooth = ndi.gaussian_filter(d, float(sigma)) if sigma > 0 else d
        gy, gx = np.gradient(smooth)
        norm = np.hypot(gy, gx)
        valid = obj & (norm > 0.05)
        safe = np.where(valid, norm, 1.0)
        level = np.minimum(np.floor(d / float(level_step)), int(levels) - 1)
        region = out[:, y0:y1, x0:x1]
        region[1][obj] = np.where(valid, gy / safe, 0.0)[obj]
        region[2][obj] = np.where(valid, gx / safe, 0.0)[obj]
        region[3][obj] = valid[obj]
        region[4][obj] = level[obj]
    return out


def flip_rot_targets(image: np.ndarray, target: np.ndarray, rng: np.random.Generator):
    """The same random rot90 and flips of an image (C x H x W) and its :func:`dwt_targets`,
    with the direction vectors turned along (the scalar channels just move). Copies."""
    k = int(rng.integers(0, 4))
    flip_v, flip_h = bool(rng.integers(0, 2)), bool(rng.integers(0, 2))
    image = np.rot90(image, k, axes=(-2, -1))
    target = np.rot90(target, k, axes=(-2, -1)).copy()
    for _ in range(k):  # np.rot90 turns (dy, dx) into (-dx, dy)
        target[1], target[2] = -target[2], target[1].copy()
    if flip_v:
        image, target = image[..., ::-1, :], target[..., ::-1, :]
        target[1] = -target[1]
    if flip_h:
        image, target = image[..., ::-1], target[..., ::-1]
        target[2] = -target[2]
    return np.ascontiguousarray(image), np.ascontiguousarray(target)


def level_weights(targets, levels: int) -> np.ndarray:
    """Cross-entropy class weights of the energy levels: inverse square-root frequencies over
    ``targets`` (:func:`dwt_targets` arrays), scaled to a pixel-weighted mean of 1; levels never
    seen get the largest weight of the seen ones."""
    counts = np.zeros(int(levels), dtype=np.float64)
    for t in targets:
        counts += np.bincount(t[4].astype(np.int64).ravel(), minlength=int(levels))[: int(levels)]
    freq = counts / max(counts.sum(), 1.0)
    seen = freq > 0
    w = np.zeros_like(freq)
    w[seen] = 1.0 / np.sqrt(freq[seen])
    w /= max(float((w * freq).sum()), 1e-12)
    w[~seen] = w[seen].max() if seen.any() else 1.0
    return w.astype(np.float32)


# --- the cut ----------------------------------------------------------------------------------
def energy_summary(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """K x H x W level probabilities -> (cumulative ``P(level >= c)`` for c = 1..K-1 as
    (K-1) x H x W, the expected level H x W)."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 3 or probs.shape[0] < 2:
        raise CellsynthError(f"energy probabilities must be K x H x W (K >= 2), got {probs.shape}")
    cum = np.cumsum(probs[::-1], axis=0)[::-1][1:]
    k = np.arange(probs.shape[0], dtype=np.float32)[:, None, None]
    return np.ascontiguousarray(cum), (probs * k).sum(axis=0)


def watershed_cut(
    fg: np.ndarray,
    cum: np.ndarray,
    energy: np.ndarray,
    fg_threshold: float = 0.5,
    energy_cut: int = 2,
    core_threshold: float = 0.5,
    core_min_size: int = 0,
    min_size: int = 8,
) -> np.ndarray:
    """The Deep Watershed Transform's cut: energy maps -> instance labels.

    Cores are the connected regions of the foreground where ``P(level >= energy_cut)`` exceeds
    ``core_threshold`` (cores under ``core_min_size`` pixels are dropped); a watershed on the
    negated expected energy grows them back over the foreground; foreground regions that no
    core reaches become objects of their own; objects under ``min_size`` pixels are removed.

    Args:
        fg: H x W foreground probabilities.
        cum, energy: :func:`energy_summary` of the level probabilities.
    Returns:
        H x W uint16 labels (uint32 when more than 65535 objects), numbered 1..N.
    """
    from skimage.segmentation import watershed

    fg = np.asarray(fg, dtype=np.float32)
    cut = int(energy_cut)
    if not 1 <= cut <= len(cum):
        raise CellsynthError(f"energy_cut must be in 1..{len(cum)}, got {energy_cut}")
    mask = fg > float(fg_threshold)
    if not mask.any():
        return np.zeros(fg.shape, dtype=np.uint16)
    cores, _ = ndi.label(mask & (cum[cut - 1] > float(core_threshold)))
    cores = drop_small_objects(cores, int(core_min_size))
    out = watershed(-np.asarray(energy, dtype=np.float32), markers=cores, mask=mask)
    out = out.astype(np.int64)
    rest, n_rest = ndi.label(mask & (out == 0))
    if n_rest:
        out[rest > 0] = rest[rest > 0] + out.max()
    return relabel_sequential(drop_small_objects(out, int(min_size)))


# --- networks ---------------------------------------------------------------------------------
def _build_unet(in_ch: int, out_ch: int, widths, half: bool = False, full_skip: int = 0):
    """A plain U-Net: per level two (3x3 conv, batch norm, ReLU), 2x2 max-pool down, bilinear
    up + skip concatenation, a 1x1 output convolution.

    ``half``: the U-Net runs at half the input resolution (4x cheaper on a CPU): a stride-2
    3x3 convolution in, and the output upsampled back; ``full_skip > 0`` adds a full-resolution
    branch (a 3x3 convolution of the input to ``full_skip`` channels) merged with the upsampled
    features by one 3x3 convolution before the output (sharp object edges), else the output
    logits are upsampled bilinearly.
    """
    import torch
    from torch import nn
    from torch.nn import functional as F

    def conv(cin, cout, stride=1):
        return [
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]

    def block(cin, cout):
        return nn.Sequential(*conv(cin, cout), *conv(cout, cout))

    def up2(x):
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            ws = [int(c) for c in widths]
            first = ws[0] if half else in_ch
            self.stem = nn.Sequential(*conv(in_ch, ws[0], stride=2)) if half else None
            self.down = nn.ModuleList(
                block(first if i == 0 else ws[i - 1], c) for i, c in enumerate(ws)
            )
            self.up = nn.ModuleList(block(ws[i] + ws[i + 1], ws[i]) for i in range(len(ws) - 1))
            self.full = None
            if half and full_skip:
                self.full = nn.Sequential(*conv(in_ch, int(full_skip)))
                self.merge = nn.Sequential(*conv(ws[0] + int(full_skip), ws[0]))
            self.head = nn.Conv2d(ws[0], out_ch, 1)

        def forward(self, x):
            inp = x
            if self.stem is not None:
                x = self.stem(x)
            skips = []
            for i, level in enumerate(self.down):
                if i:
                    x = F.max_pool2d(x, 2)
                x = level(x)
                skips.append(x)
            for i in range(len(self.up) - 1, -1, -1):
                x = self.up[i](torch.cat([skips[i], up2(x)], dim=1))
            if self.stem is None:
                return self.head(x)
            if self.full is not None:
                return self.head(self.merge(torch.cat([self.full(inp), up2(x)], dim=1)))
            return up2(self.head(x))

    return UNet()


def _build_dwt(in_ch: int, widths, wtn_widths, levels: int, half: bool):
    import torch
    from torch import nn

    class DWTNet(nn.Module):
        """``direction``: image -> (foreground logit, 2-vector); ``energy`` (the WTN):
        ``[fg, fg * u]`` -> K level logits."""

        def __init__(self):
            super().__init__()
            skip = max(int(widths[0]) // 2, 4)
            self.direction = _build_unet(in_ch, 3, widths, half, full_skip=skip)
            self.energy = _build_unet(3, int(levels), wtn_widths, half)

        @staticmethod
        def unit(v):
            return v / torch.sqrt((v * v).sum(dim=1, keepdim=True) + 1e-8)

        @staticmethod
        def wtn_input(fg_logit, u):
            fg = torch.sigmoid(fg_logit)
            return torch.cat([fg, fg * u], dim=1)

        def forward(self, x):
            out = self.direction(x)
            fg_logit, u = out[:, :1], self.unit(out[:, 1:3].float())
            return fg_logit, u, self.energy(self.wtn_input(fg_logit.float(), u))

    return DWTNet()


# --- the segmenter ----------------------------------------------------------------------------
@register
class DWTSegmenter(DenseSegmenter):
    """Deep Watershed Transform: foreground + direction U-Net, watershed-energy U-Net, energy cut.

    Options (besides :class:`DenseSegmenter`'s training and tiling ones): ``widths`` (direction
    network), ``wtn_widths`` (energy network), ``levels`` (K), ``level_step`` (pixels of
    distance per level), ``direction_sigma``, ``teacher`` (fraction of training with ground-truth
    WTN inputs, decaying), ``direction_weight``, ``energy_weight``; the cut: ``fg_threshold``,
    ``energy_cut``, ``core_threshold``, ``core_min_size``, ``min_size`` (chosen on the validation
    slice when ``tune``).
    """

    name = "dwt"
    requires = "torch"
    trainable = True
    outputs = ("fg", "direction", "energy")
    EXTRA = {
        "widths": [16, 32, 64, 128, 256],
        "wtn_widths": [16, 32, 64, 128],
        "half_resolution": True,
        "levels": 8,
        "level_step": 2.0,
        "direction_sigma": 1.0,
        "teacher": 0.3,
        "direction_weight": 1.0,
        "energy_weight": 1.0,
        "energy_cut": 2,
        "core_threshold": 0.5,
        "core_min_size": 0,
    }

    @classmethod
    def known_options(cls) -> dict:
        base = {k: v for k, v in DenseSegmenter.DEFAULTS.items() if k not in _NOT_USED}
        return {**base, **cls.EXTRA}

    def __init__(self, **options):
        super().__init__(**options)
        o = self.options
        if int(o["levels"]) < 2:
            raise CellsynthError(f"dwt: levels must be >= 2, got {o['levels']}")
        if not 1 <= int(o["energy_cut"]) < int(o["levels"]):
            raise CellsynthError(
                f"dwt: energy_cut must be in 1..{int(o['levels']) - 1}, got {o['energy_cut']}"
            )
        if float(o["level_step"]) <= 0:
            raise CellsynthError(f"dwt: level_step must be > 0, got {o['level_step']}")
        if not 0.0 <= float(o["teacher"]) <= 1.0:
            raise CellsynthError(f"dwt: teacher must be in [0, 1], got {o['teacher']}")

    def _multiple(self) -> int:
        o = self.options
        for key in ("widths", "wtn_widths"):
            if len(list(o[key])) < 1:
                raise CellsynthError(f"dwt: {key} must list at least one width")
        depth = max(len(list(o["widths"])), len(list(o["wtn_widths"])))
        return 2 ** (depth - 1) * (2 if o["half_resolution"] else 1)

    def _build(self, in_channels: int):
        o = self.options
        return _build_dwt(
            in_channels, o["widths"], o["wtn_widths"], int(o["levels"]), bool(o["half_resolution"])
        )

    def _targets(self, labels) -> np.ndarray:
        o = self.options
        return dwt_targets(
            labels, int(o["levels"]), float(o["level_step"]), float(o["direction_sigma"])
        )

    def _fit_targets(self, fit_samples) -> list:
        return [self._targets(s.labels) for s in fit_samples]

    def _fit_payload(self, image) -> dict:
        return self._payload(self.predict_maps(image))

    def _fit_step(self, fit):
        """Both networks trained jointly: random crops + flips/rot90 with the directions turned
        along; foreground BCE + the cosine direction loss on valid foreground pixels + the
        level-weighted energy cross-entropy; during the first ``teacher`` of the training the
        energy net sees the true directions with a falling probability (the curriculum)."""
        import torch
        import torch.nn.functional as F

        o, net, rng, device = self.options, fit.net, fit.rng, fit.device
        weights = level_weights(fit.targets, int(o["levels"]))
        fit.info["level_weights"] = [float(v) for v in weights]
        class_w = torch.from_numpy(weights).to(device)
        teacher, w_dir, w_energy = (
            float(o["teacher"]),
            float(o["direction_weight"]),
            float(o["energy_weight"]),
        )
        lr_at = fit.set_lr
        progress_frac = [0.0]

        def set_lr(frac):
            progress_frac[0] = frac
            lr_at(frac)

        fit.set_lr = set_lr

        def step_fn(step):
            xs, ys = [], []
            for i in rng.choice(len(fit.images), size=fit.bs, p=fit.probs):
                crops = random_crop([fit.images[i], fit.targets[i]], fit.crop, rng)
                x, y = flip_rot_targets(*crops, rng)
                xs.append(x)
                ys.append(y)
            p_true = max(0.0, 1.0 - progress_frac[0] / teacher) if teacher > 0 else 0.0
            use_true = rng.random(fit.bs) < p_true
            x = to_device(np.stack(xs), device)
            y = torch.from_numpy(np.stack(ys)).to(device)
            fg_t, dir_t, valid, level = y[:, :1], y[:, 1:3], y[:, 3:4], y[:, 4].long()
            net.train()
            with autocast(device, fit.precision):
                raw = net.direction(x)
                fg_logit, u = raw[:, :1], net.unit(raw[:, 1:3].float())
                wtn_in = net.wtn_input(fg_logit.float(), u)
                if use_true.any():
                    pick = torch.from_numpy(use_true).to(device)[:, None, None, None]
                    wtn_in = torch.where(pick, torch.cat([fg_t, fg_t * dir_t], dim=1), wtn_in)
                if device.type == "cpu":
                    wtn_in = wtn_in.contiguous(memory_format=torch.channels_last)
                e_logits = net.energy(wtn_in)
            loss_fg = F.binary_cross_entropy_with_logits(fg_logit.float(), fg_t)
            cos = (u.float() * dir_t).sum(dim=1, keepdim=True)
            loss_dir = ((1.0 - cos) * valid).sum() / valid.sum().clamp(min=1.0)
            loss_e = F.cross_entropy(e_logits.float(), level, weight=class_w)
            return optimizer_step(fit.opt, loss_fg + w_dir * loss_dir + w_energy * loss_e)

        return step_fn

    def _tune_grid(self) -> dict:
        top = int(self.options["levels"]) - 1
        return {
            "energy_cut": list(range(1, min(top, 5) + 1)),
            "core_threshold": [0.3, 0.4, 0.5, 0.6, 0.7],
            "fg_threshold": [0.3, 0.4, 0.5, 0.6, 0.7],
            "core_min_size": [0, 4, 8, 16],
            "min_size": [4, 8, 16, 32, 64],
        }

    def predict_maps(self, image: np.ndarray) -> dict:
        """Image -> dict(fg: H x W foreground probability, direction: 2 x H x W unit vectors
        (y, x), energy: K x H x W level probabilities)."""
        import torch

        device, precision, x, net = self._prediction_input(image)
        o = self.options

        def fn(tile):
            t = to_device(tile, device)
            with torch.no_grad(), autocast(device, precision):
                fg_logit, u, e_logits = net(t)
            return torch.cat(
                [torch.sigmoid(fg_logit.float()), u.float(), torch.softmax(e_logits.float(), 1)],
                dim=1,
            ).numpy(force=True)

        maps = predict_tiled(fn, x, int(o["tile"]), int(o["overlap"]), self.multiple)
        return {"fg": maps[0], "direction": maps[1:3], "energy": maps[3:]}

    @staticmethod
    def _payload(maps: dict) -> dict:
        cum, energy = energy_summary(maps["energy"])
        return {"fg": maps["fg"], "cum": cum, "energy": energy}

    @staticmethod
    def _instances(payload: dict, o: dict) -> np.ndarray:
        return watershed_cut(
            payload["fg"],
            payload["cum"],
            payload["energy"],
            fg_threshold=o["fg_threshold"],
            energy_cut=o["energy_cut"],
            core_threshold=o["core_threshold"],
            core_min_size=o["core_min_size"],
            min_size=o["min_size"],
        )

    def predict(self, image: np.ndarray) -> np.ndarray:
        """H x W (x C) image -> uint16 instance labels H x W."""
        return self._instances(self._payload(self.predict_maps(image)), self.options)
