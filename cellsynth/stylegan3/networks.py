"""Generator / Discriminator classes and ``build_networks``, the factory used by training.

``Generator(z_dim, c_dim, w_dim, img_resolution, img_channels, cfg=...)`` combines the mapping
network with the synthesis network of the chosen config ("stylegan3-t", "stylegan3-r",
"stylegan2"). Both classes keep ``init_kwargs`` (a JSON-able dict) so a checkpoint needs only
that dict and the state_dict: ``G2 = Generator(**G.init_kwargs); G2.load_state_dict(sd)``.
"""

from __future__ import annotations

import torch
from torch import nn

from cellsynth.errors import CellsynthError
from cellsynth.options import refuse_unknown
from cellsynth.stylegan3.configs import ARCH_DEFAULTS, CONFIGS
from cellsynth.stylegan3.networks_stylegan2 import Discriminator, MappingNetwork, SynthesisNetwork2
from cellsynth.stylegan3.networks_stylegan3 import SynthesisNetwork3

__all__ = ["CONFIGS", "Discriminator", "Generator", "build_networks"]


def _jsonable(value):
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


class Generator(nn.Module):
    """Mapping network + synthesis network.

    Args:
        z_dim: latent size (512 in the paper); c_dim: conditioning size (0 = unconditional).
        w_dim: intermediate latent size; img_resolution: power of two >= 16;
        img_channels: 1 or 3 (any >= 1 works).
        cfg: "stylegan3-t", "stylegan3-r" or "stylegan2" (the synthesis architecture).
        cbase, cmax: channel budget (channel_base / channel_max); used as given here (the
            factory ``build_networks`` doubles them for stylegan3-r, as the paper's config).
        map_depth: mapping layers (default 2 for stylegan3, 8 for stylegan2).
        **kw: synthesis options: num_fp16_res, conv_clamp, fused_modconv; for stylegan3 also
            num_layers, num_critical, margin_size, output_scale, conv_kernel,
            use_radial_filters, filter_size, first_cutoff, ...; mapping options
            w_avg_beta and mapping_lr_multiplier.
    """

    def __init__(
        self,
        z_dim=512,
        c_dim=0,
        w_dim=512,
        img_resolution=256,
        img_channels=1,
        cfg="stylegan3-t",
        cbase=32768,
        cmax=512,
        map_depth=None,
        **kw,
    ):
        super().__init__()
        if cfg not in CONFIGS:
            raise CellsynthError(
                f"unknown generator config {cfg!r}; use one of {', '.join(CONFIGS)}"
            )
        if int(z_dim) < 1 or int(w_dim) < 1 or int(c_dim) < 0:
            raise CellsynthError(f"bad latent sizes z_dim={z_dim}, w_dim={w_dim}, c_dim={c_dim}")
        if map_depth is None:
            map_depth = 8 if cfg == "stylegan2" else 2
        self.init_kwargs = dict(
            z_dim=int(z_dim),
            c_dim=int(c_dim),
            w_dim=int(w_dim),
            img_resolution=int(img_resolution),
            img_channels=int(img_channels),
            cfg=cfg,
            cbase=int(cbase),
            cmax=int(cmax),
            map_depth=int(map_depth),
            **{k: _jsonable(v) for k, v in kw.items()},
        )
        self.z_dim, self.c_dim, self.w_dim = int(z_dim), int(c_dim), int(w_dim)
        self.img_resolution, self.img_channels, self.cfg = (
            int(img_resolution),
            int(img_channels),
            cfg,
        )
        kw = dict(kw)
        w_avg_beta = kw.pop("w_avg_beta", 0.998)
        map_lr = kw.pop("mapping_lr_multiplier", 0.01)
        shape = (self.w_dim, self.img_resolution, self.img_channels)
        channels = dict(channel_base=cbase, channel_max=cmax)
        if cfg == "stylegan2":
            for key in kw:
                if key not in ("num_fp16_res", "conv_clamp", "fused_modconv"):
                    raise CellsynthError(f"unknown stylegan2 generator option {key!r}")
            self.synthesis = SynthesisNetwork2(*shape, **channels, **kw)
        else:
            kw.setdefault("conv_kernel", 1 if cfg == "stylegan3-r" else 3)
            kw.setdefault("use_radial_filters", cfg == "stylegan3-r")
            try:
                self.synthesis = SynthesisNetwork3(*shape, **channels, **kw)
            except TypeError as exc:
                raise CellsynthError(f"bad stylegan3 generator option: {exc}") from None
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(
            self.z_dim,
            self.c_dim,
            self.w_dim,
            num_ws=self.num_ws,
            num_layers=int(map_depth),
            lr_multiplier=map_lr,
            w_avg_beta=w_avg_beta,
        )

    def forward(
        self,
        z,
        c=None,
        truncation_psi=1,
        truncation_cutoff=None,
        noise_mode="const",
        update_emas=False,
    ):
        """z [N, z_dim], c [N, c_dim] -> images [N, img_channels, R, R] (about [-1, 1])."""
        ws = self.mapping(
            z,
            c,
            truncation_psi=truncation_psi,
            truncation_cutoff=truncation_cutoff,
            update_emas=update_emas,
        )
        return self.synthesis(ws, noise_mode=noise_mode, update_emas=update_emas)

    def set_input_transform(self, translate=(0.0, 0.0), rotate=0.0):
        """Translate (fractions of the image) / rotate (degrees) a stylegan3 generator's output."""
        self.synthesis.set_input_transform(translate=translate, rotate=rotate)


def build_networks(
    cfg="stylegan3-t",
    img_resolution=256,
    img_channels=1,
    c_dim=0,
    *,
    seed=None,
    g_kwargs=None,
    d_kwargs=None,
    **arch,
):
    """Build a generator and a discriminator with the usual per-config defaults.

    Defaults as in the StyleGAN3 training configs: stylegan3-r doubles the generator's cbase
    and cmax (and uses 1x1 convs with radial filters); map_depth is 2 for stylegan3 and 8 for
    stylegan2; the discriminator uses cbase/cmax as given. fp16 layers (num_fp16_res) only run
    in fp16 on CUDA; conv_clamp is applied everywhere.

    Args:
        cfg: "stylegan3-t", "stylegan3-r" or "stylegan2".
        img_resolution, img_channels, c_dim: data shape and conditioning size.
        **arch: the keys of ``ARCH_DEFAULTS``: cbase, cmax (channel budget); map_depth
            (mapping layers, None = per-config default); z_dim, w_dim (latent sizes);
            mbstd_group_size (discriminator minibatch-std group); num_fp16_res, conv_clamp
            (mixed precision).
        seed: if given, the initial weights come from torch.manual_seed(seed) (global RNG kept).
        g_kwargs, d_kwargs: extra options for Generator / Discriminator.

    Returns:
        (G, D): Generator and Discriminator modules (float32, CPU, train mode).
    """
    if cfg not in CONFIGS:
        raise CellsynthError(f"unknown config {cfg!r}; use one of {', '.join(CONFIGS)}")
    refuse_unknown("build_networks", arch, ARCH_DEFAULTS)
    a = {**ARCH_DEFAULTS, **arch}
    cbase, cmax, map_depth, z_dim, w_dim = (
        a[k] for k in ("cbase", "cmax", "map_depth", "z_dim", "w_dim")
    )
    g_cbase, g_cmax = (cbase * 2, cmax * 2) if cfg == "stylegan3-r" else (cbase, cmax)
    precision = {"num_fp16_res": a["num_fp16_res"], "conv_clamp": a["conv_clamp"]}
    g_kw = {**precision, **(g_kwargs or {})}
    d_kw = {"mbstd_group_size": a["mbstd_group_size"], **precision, **(d_kwargs or {})}

    def make():
        G = Generator(
            z_dim,
            c_dim,
            w_dim,
            img_resolution,
            img_channels,
            cfg=cfg,
            cbase=g_cbase,
            cmax=g_cmax,
            map_depth=map_depth,
            **g_kw,
        )
        D = Discriminator(c_dim, img_resolution, img_channels, cbase=cbase, cmax=cmax, **d_kw)
        return G, D

    if seed is None:
        return make()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return make()
