"""Adaptive discriminator augmentation (ADA) for mask images.

Every image shown to the discriminator (real and generated alike) goes through
:class:`AugmentPipe`. Each transform is applied to each image independently with probability
``p``; the training loop raises ``p`` when the discriminator overfits (the sign of its outputs on
real images drifts above ``target``) and lowers it otherwise (:func:`adjust_p`).

The geometric transforms (x-flip, 90-degree rotations, integer translation, isotropic and
anisotropic scaling, arbitrary rotation, fractional translation) are composed into one 2-D
affine matrix per image and applied with one differentiable ``grid_sample`` (reflection
padding), so the discriminator's gradient flows back to the generator. Colour transforms
(brightness, contrast, luma flip, hue rotation, saturation) exist only for 3-channel images
and are off by default, because the channels of an encoded mask are not colours.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cellsynth.errors import CellsynthError

# Transform names and their default strengths (ADA's "bgc" geometric set).
GEOMETRIC = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
COLOUR = ("brightness", "contrast", "lumaflip", "hue", "saturation")
PRESETS = {
    "geom": dict.fromkeys(GEOMETRIC, 1.0),
    "flips": {"xflip": 1.0, "rotate90": 1.0},
    "geom+color": {**dict.fromkeys(GEOMETRIC, 1.0), **dict.fromkeys(COLOUR, 1.0)},
}


# aten enums of grid_sampler_2d: interpolation 0 = bilinear; padding 2 = reflection.
_BILINEAR, _REFLECTION = 0, 2


class _Resample(torch.autograd.Function):
    """Bilinear, reflection-padded ``grid_sample`` of an image by a fixed grid, differentiable
    any number of times with respect to the image.

    R1 differentiates the discriminator's gradient with respect to the (augmented) reals, which
    goes through the backward of ``grid_sample``; some torch versions (2.11 on CUDA, for one)
    have no derivative for that backward. Sampling by a fixed grid is linear in the image, so its
    backward is the transposed sampling (``_ResampleT``), and the backward of that is the
    sampling again. The grid gets no gradient (the augmentation parameters are not learned).
    """

    @staticmethod
    def forward(ctx, x, grid):
        ctx.save_for_backward(grid)
        ctx.image_shape = x.shape
        return F.grid_sample(
            x, grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )

    @staticmethod
    def backward(ctx, gy):
        (grid,) = ctx.saved_tensors
        return _ResampleT.apply(gy, grid, ctx.image_shape), None


class _ResampleT(torch.autograd.Function):
    """The transpose of ``_Resample``: scatters an output-sized gradient back onto the image."""

    @staticmethod
    def forward(ctx, gy, grid, image_shape):
        ctx.save_for_backward(grid)
        like = gy.new_empty(image_shape)  # only its shape and dtype are read
        gx, _ = torch.ops.aten.grid_sampler_2d_backward(
            gy.contiguous(), like, grid, _BILINEAR, _REFLECTION, False, [True, False]
        )
        return gx

    @staticmethod
    def backward(ctx, ggx):
        (grid,) = ctx.saved_tensors
        return _Resample.apply(ggx, grid), None, None


def resample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``grid_sample(x, grid)`` (bilinear, reflection padding, align_corners=False) that can be
    differentiated twice with respect to ``x`` on every device and torch version."""
    if grid.requires_grad:
        raise CellsynthError("resample: the sampling grid must not require a gradient")
    return _Resample.apply(x, grid)


def _rot2d(theta: torch.Tensor) -> torch.Tensor:
    """N angles -> N x 3 x 3 rotation matrices."""
    c, s = torch.cos(theta), torch.sin(theta)
    z, o = torch.zeros_like(theta), torch.ones_like(theta)
    return torch.stack([c, -s, z, s, c, z, z, z, o], dim=1).view(-1, 3, 3)


def _scale2d(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    z, o = torch.zeros_like(sx), torch.ones_like(sx)
    return torch.stack([sx, z, z, z, sy, z, z, z, o], dim=1).view(-1, 3, 3)


def _translate2d(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    z, o = torch.zeros_like(tx), torch.ones_like(tx)
    return torch.stack([o, z, tx, z, o, ty, z, z, o], dim=1).view(-1, 3, 3)


def _gate(values: torch.Tensor, neutral: float, prob: float) -> torch.Tensor:
    """Keep each value with probability ``prob``, else replace it with ``neutral``."""
    keep = torch.rand(values.shape[0], device=values.device) < prob
    return torch.where(keep, values, torch.full_like(values, neutral))


class AugmentPipe(torch.nn.Module):
    """Differentiable ADA augmentation of N x C x H x W images in [-1, 1].

    Args:
        xflip, rotate90, xint, scale, rotate, aniso, xfrac: multipliers of ``p`` for the
            geometric transforms (0 turns one off).
        brightness, contrast, lumaflip, hue, saturation: the same for colour transforms
            (3-channel images only).
        xint_max, scale_std, rotate_max, aniso_std, xfrac_std, ...: transform strengths as
            in ADA (translation as a fraction of the image size, scale stds in log2 units).
    The augmentation probability ``p`` is a buffer (saved with the module).
    """

    def __init__(
        self,
        xflip=0.0,
        rotate90=0.0,
        xint=0.0,
        scale=0.0,
        rotate=0.0,
        aniso=0.0,
        xfrac=0.0,
        brightness=0.0,
        contrast=0.0,
        lumaflip=0.0,
        hue=0.0,
        saturation=0.0,
        xint_max=0.125,
        scale_std=0.2,
        rotate_max=1.0,
        aniso_std=0.2,
        xfrac_std=0.125,
        brightness_std=0.2,
        contrast_std=0.5,
        hue_max=1.0,
        saturation_std=1.0,
    ):
        super().__init__()
        self.register_buffer("p", torch.zeros([]))
        # multipliers keyed (and ordered) by GEOMETRIC and COLOUR, the names the presets use
        geom = (xflip, rotate90, xint, scale, rotate, aniso, xfrac)
        colour = (brightness, contrast, lumaflip, hue, saturation)
        self.geom = {k: float(v) for k, v in zip(GEOMETRIC, geom, strict=True)}
        self.colour = {k: float(v) for k, v in zip(COLOUR, colour, strict=True)}
        self.xint_max, self.scale_std, self.rotate_max = xint_max, scale_std, rotate_max
        self.aniso_std, self.xfrac_std = aniso_std, xfrac_std
        self.brightness_std, self.contrast_std = brightness_std, contrast_std
        self.hue_max, self.saturation_std = hue_max, saturation_std

    @classmethod
    def from_preset(cls, name: str, channels: int) -> AugmentPipe:
        """Build from a preset name: ``geom`` (default for masks), ``flips``, ``geom+color``."""
        if name not in PRESETS:
            raise CellsynthError(
                f"unknown augmentation preset {name!r}; use one of {list(PRESETS)}"
            )
        kwargs = dict(PRESETS[name])
        if channels != 3 and any(kwargs.get(k, 0) for k in COLOUR):
            raise CellsynthError(
                f"colour augmentation needs 3-channel images, the data has {channels}; "
                "use the 'geom' preset"
            )
        return cls(**kwargs)

    def geometric_matrix(self, n: int, height: int, width: int, device) -> torch.Tensor:
        """Random N x 3 x 3 matrices (output pixel -> input pixel, centred coordinates)."""
        p = float(self.p)
        eye = torch.eye(3, device=device).repeat(n, 1, 1)
        m = eye
        g = self.geom
        if g["xflip"] > 0:
            i = torch.floor(torch.rand(n, device=device) * 2)
            i = _gate(i, 0.0, g["xflip"] * p)
            m = m @ _scale2d(1 - 2 * i, torch.ones_like(i))
        if g["rotate90"] > 0:
            i = torch.floor(torch.rand(n, device=device) * 4)
            i = _gate(i, 0.0, g["rotate90"] * p)
            m = m @ _rot2d(i * (math.pi / 2))
        if g["xint"] > 0:
            t = (torch.rand(n, 2, device=device) * 2 - 1) * self.xint_max
            keep = torch.rand(n, device=device) < g["xint"] * p
            tx = torch.where(keep, torch.round(t[:, 0] * width), torch.zeros_like(t[:, 0]))
            ty = torch.where(keep, torch.round(t[:, 1] * height), torch.zeros_like(t[:, 1]))
            m = m @ _translate2d(tx, ty)
        if g["scale"] > 0:
            s = torch.exp2(torch.randn(n, device=device) * self.scale_std)
            s = _gate(s, 1.0, g["scale"] * p)
            m = m @ _scale2d(s, s)
        p_rot = 1 - math.sqrt(max(0.0, 1 - min(g["rotate"] * p, 1.0)))  # applied twice
        if g["rotate"] > 0:
            r = (torch.rand(n, device=device) * 2 - 1) * math.pi * self.rotate_max
            m = m @ _rot2d(_gate(r, 0.0, p_rot))
        if g["aniso"] > 0:
            s = torch.exp2(torch.randn(n, device=device) * self.aniso_std)
            s = _gate(s, 1.0, g["aniso"] * p)
            m = m @ _scale2d(s, 1 / s)
        if g["rotate"] > 0:
            r = (torch.rand(n, device=device) * 2 - 1) * math.pi * self.rotate_max
            m = m @ _rot2d(_gate(r, 0.0, p_rot))
        if g["xfrac"] > 0:
            t = torch.randn(n, 2, device=device) * self.xfrac_std
            tx = _gate(t[:, 0] * width, 0.0, g["xfrac"] * p)
            ty = _gate(t[:, 1] * height, 0.0, g["xfrac"] * p)
            m = m @ _translate2d(tx, ty)
        return m

    def colour_matrix(self, n: int, device) -> torch.Tensor:
        """Random N x 4 x 4 colour matrices acting on (r, g, b, 1) in [-1, 1]."""
        p = float(self.p)
        c = self.colour
        m = torch.eye(4, device=device).repeat(n, 1, 1)
        luma = torch.tensor([1.0, 1.0, 1.0, 0.0], device=device) / math.sqrt(3)
        outer = torch.outer(luma, luma)
        if c["brightness"] > 0:
            b = _gate(torch.randn(n, device=device) * self.brightness_std, 0.0, c["brightness"] * p)
            t = torch.eye(4, device=device).repeat(n, 1, 1)
            t[:, :3, 3] = b[:, None]
            m = t @ m
        if c["contrast"] > 0:
            s = torch.exp2(torch.randn(n, device=device) * self.contrast_std)
            s = _gate(s, 1.0, c["contrast"] * p)
            t = torch.eye(4, device=device).repeat(n, 1, 1)
            t[:, :3, :3] *= s[:, None, None]
            m = t @ m
        if c["lumaflip"] > 0:
            i = _gate(torch.floor(torch.rand(n, device=device) * 2), 0.0, c["lumaflip"] * p)
            t = torch.eye(4, device=device) - 2 * outer * i[:, None, None]
            m = t @ m
        if c["hue"] > 0:
            theta = (torch.rand(n, device=device) * 2 - 1) * math.pi * self.hue_max
            theta = _gate(theta, 0.0, c["hue"] * p)
            m = _rotate_about_luma(theta, luma[:3]) @ m
        if c["saturation"] > 0:
            s = torch.exp2(torch.randn(n, device=device) * self.saturation_std)
            s = _gate(s, 1.0, c["saturation"] * p)
            t = outer + (torch.eye(4, device=device) - outer) * s[:, None, None]
            t[:, 3, 3] = 1
            m = t @ m
        return m

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Augment N x C x H x W images; returns a tensor of the same shape (identity at p=0)."""
        if images.ndim != 4:
            raise CellsynthError(
                f"AugmentPipe needs N x C x H x W images, got {tuple(images.shape)}"
            )
        if float(self.p) <= 0:
            return images
        n, ch, h, w = images.shape
        x = images
        if any(v > 0 for v in self.geom.values()):
            m = self.geometric_matrix(n, h, w, images.device)
            # Centred pixel coordinates -> grid_sample's normalised coordinates
            # (align_corners=False: the image spans [-1, 1] edge to edge).
            to_norm = torch.diag(torch.tensor([2.0 / w, 2.0 / h, 1.0], device=images.device))
            from_norm = torch.diag(torch.tensor([w / 2.0, h / 2.0, 1.0], device=images.device))
            theta = (to_norm @ m @ from_norm)[:, :2, :]
            grid = F.affine_grid(theta.to(x.dtype), [n, ch, h, w], align_corners=False)
            x = resample(x, grid)
        if any(v > 0 for v in self.colour.values()):
            if ch != 3:
                raise CellsynthError(f"colour augmentation needs 3-channel images, got {ch}")
            cm = self.colour_matrix(n, images.device).to(x.dtype)
            flat = x.reshape(n, 3, h * w)
            flat = cm[:, :3, :3] @ flat + cm[:, :3, 3:]
            x = flat.reshape(n, 3, h, w)
        return x


def _rotate_about_luma(theta: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """N x 4 x 4 rotations by ``theta`` about the unit 3-vector ``axis`` (Rodrigues)."""
    n = theta.shape[0]
    k = torch.zeros(3, 3, device=theta.device)
    k[0, 1], k[0, 2], k[1, 0] = -axis[2], axis[1], axis[2]
    k[1, 2], k[2, 0], k[2, 1] = -axis[0], -axis[1], axis[0]
    s, c = torch.sin(theta)[:, None, None], torch.cos(theta)[:, None, None]
    r = torch.eye(3, device=theta.device) + s * k + (1 - c) * (k @ k)
    out = torch.eye(4, device=theta.device).repeat(n, 1, 1)
    out[:, :3, :3] = r
    return out


def adjust_p(p: float, rt: float, target: float, nimg: int, speed_kimg: float = 500.0) -> float:
    """ADA's update of ``p``: move by ``sign(rt - target) * nimg / (speed_kimg * 1000)``.

    Args:
        p: current probability; rt: mean sign of D(real) over the last interval;
        target: the r_t to hold; nimg: images seen since the last update;
        speed_kimg: images (in thousands) for p to go from 0 to 1.
    Returns the new p clipped to [0, 1].
    """
    step = math.copysign(1.0, rt - target) if rt != target else 0.0
    return float(min(max(p + step * nimg / (speed_kimg * 1000.0), 0.0), 1.0))
