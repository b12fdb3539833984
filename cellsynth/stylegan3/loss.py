"""The StyleGAN2/3 losses: non-saturating logistic loss, lazy R1, path-length regularisation,
style mixing and the discriminator blur of stylegan3-r.

:class:`StyleGANLoss` accumulates the gradients of one training *phase* (``Gmain``, ``Greg``,
``Gboth``, ``Dmain``, ``Dreg``, ``Dboth``) for one round of images; the training loop scales
lazy regularisers by their interval through ``gain``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def blur_images(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of N x C x H x W images with standard deviation ``sigma`` pixels (zero pad).

    Returns ``images`` unchanged when ``sigma`` is 0.
    """
    if sigma <= 0:
        return images
    radius = int(np.ceil(sigma * 3))
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    ch = images.shape[1]
    kx = k.view(1, 1, 1, -1).repeat(ch, 1, 1, 1)
    ky = k.view(1, 1, -1, 1).repeat(ch, 1, 1, 1)
    out = F.conv2d(images, kx, padding=(0, radius), groups=ch)
    return F.conv2d(out, ky, padding=(radius, 0), groups=ch)


class StyleGANLoss:
    """Loss of one generator/discriminator pair.

    Args:
        G, D: the networks (G with ``.mapping`` and ``.synthesis``; D with ``forward(img, c)``).
        augment_pipe: module applied to every image D sees (or None).
        r1_gamma: R1 weight; style_mixing_prob: probability of mixing two latents;
        pl_weight: path-length weight (0 turns it off); pl_batch_shrink, pl_decay: its batch
        divisor and moving-average decay; blur_init_sigma, blur_fade_kimg: the D blur schedule.
    """

    def __init__(
        self,
        G,
        D,
        augment_pipe=None,
        r1_gamma: float = 10.0,
        style_mixing_prob: float = 0.0,
        pl_weight: float = 0.0,
        pl_batch_shrink: int = 2,
        pl_decay: float = 0.01,
        blur_init_sigma: float = 0.0,
        blur_fade_kimg: float = 0.0,
    ):
        self.G, self.D, self.augment_pipe = G, D, augment_pipe
        self.r1_gamma = float(r1_gamma)
        self.style_mixing_prob = float(style_mixing_prob)
        self.pl_weight = float(pl_weight)
        self.pl_batch_shrink = int(pl_batch_shrink)
        self.pl_decay = float(pl_decay)
        self.pl_mean = torch.zeros([])
        self.blur_init_sigma = float(blur_init_sigma)
        self.blur_fade_kimg = float(blur_fade_kimg)

    def blur_sigma(self, cur_nimg: int) -> float:
        """The D blur at ``cur_nimg``: ``blur_init_sigma`` fading linearly to 0."""
        if self.blur_fade_kimg <= 0:
            return 0.0
        return max(1.0 - cur_nimg / (self.blur_fade_kimg * 1e3), 0.0) * self.blur_init_sigma

    def run_G(self, z, c, update_emas=False):
        """Generate images (and return the ws), mixing styles with ``style_mixing_prob``."""
        ws = self.G.mapping(z, c, update_emas=update_emas)
        if self.style_mixing_prob > 0:
            num_ws = ws.shape[1]
            cutoff = torch.randint(1, num_ws, [], device=ws.device)
            use = torch.rand([], device=ws.device) < self.style_mixing_prob
            cutoff = torch.where(use, cutoff, torch.full_like(cutoff, num_ws))
            ws2 = self.G.mapping(torch.randn_like(z), c, update_emas=False)
            mix = torch.arange(num_ws, device=ws.device)[None, :, None] >= cutoff
            ws = torch.where(mix, ws2, ws)
        img = self.G.synthesis(ws, update_emas=update_emas)
        return img, ws

    def run_D(self, img, c, blur_sigma=0.0):
        """Blur, augment and discriminate ``img``; returns the logits."""
        img = blur_images(img, blur_sigma)
        if self.augment_pipe is not None:
            img = self.augment_pipe(img)
        return self.D(img, c)

    def accumulate_gradients(self, phase, real_img, real_c, gen_z, gen_c, gain, cur_nimg):
        """Back-propagate the loss of ``phase`` for one round; returns a dict of float stats.

        ``gain`` multiplies the loss (the lazy-regularisation interval for ``*reg`` phases).
        """
        assert phase in ("Gmain", "Greg", "Gboth", "Dmain", "Dreg", "Dboth")
        if self.pl_weight == 0:
            phase = {"Greg": "none", "Gboth": "Gmain"}.get(phase, phase)
        if self.r1_gamma == 0:
            phase = {"Dreg": "none", "Dboth": "Dmain"}.get(phase, phase)
        sigma = self.blur_sigma(cur_nimg)
        stats = {}

        if phase in ("Gmain", "Gboth"):
            gen_img, _ = self.run_G(gen_z, gen_c)
            logits = self.run_D(gen_img, gen_c, blur_sigma=sigma)
            loss = F.softplus(-logits).mean()
            stats["Loss/G/loss"] = loss.item()
            stats["Loss/scores/fake"] = logits.mean().item()
            (loss * gain).backward()

        if phase in ("Greg", "Gboth"):
            n = max(gen_z.shape[0] // self.pl_batch_shrink, 1)
            gen_img, ws = self.run_G(gen_z[:n], gen_c[:n])
            noise = torch.randn_like(gen_img) / math.sqrt(gen_img.shape[2] * gen_img.shape[3])
            (grads,) = torch.autograd.grad(
                (gen_img * noise).sum(), ws, create_graph=True, only_inputs=True
            )
            lengths = grads.square().sum(2).mean(1).sqrt()
            self.pl_mean = self.pl_mean.to(lengths.device)
            pl_mean = self.pl_mean.lerp(lengths.mean().detach(), self.pl_decay)
            self.pl_mean.copy_(pl_mean)
            penalty = (lengths - pl_mean).square()
            loss = penalty.mean() * self.pl_weight
            stats["Loss/pl_penalty"] = penalty.mean().item()
            (loss * gain).backward()

        if phase in ("Dmain", "Dboth"):
            with torch.no_grad():
                gen_img, _ = self.run_G(gen_z, gen_c, update_emas=True)
            logits = self.run_D(gen_img, gen_c, blur_sigma=sigma)
            loss_gen = F.softplus(logits).mean()
            stats["Loss/scores/fake"] = logits.mean().item()
            (loss_gen * gain).backward()

        if phase in ("Dmain", "Dreg", "Dboth"):
            do_main = phase in ("Dmain", "Dboth")
            do_r1 = phase in ("Dreg", "Dboth")
            real = real_img.detach().requires_grad_(do_r1)
            logits = self.run_D(real, real_c, blur_sigma=sigma)
            loss = torch.zeros([], device=real.device)
            if do_main:
                loss_real = F.softplus(-logits).mean()
                stats["Loss/scores/real"] = logits.mean().item()
                stats["Loss/signs/real"] = logits.sign().mean().item()
                stats["Loss/D/loss"] = loss_real.item() + loss_gen.item()
                loss = loss + loss_real
            if do_r1:
                (grads,) = torch.autograd.grad(
                    logits.sum(), real, create_graph=True, only_inputs=True
                )
                penalty = grads.square().sum([1, 2, 3])
                stats["Loss/r1_penalty"] = penalty.mean().item()
                loss = loss + penalty.mean() * (self.r1_gamma / 2)
            (loss * gain).backward()
        return stats
