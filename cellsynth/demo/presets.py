"""Sizes of everything in the demo, per preset.

"laptop" is the README's demo (about 10 minutes on 2 CPU cores plus the install); "tiny" runs
the same code paths in about a minute (tests, CI).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from cellsynth.errors import CellsynthError

# Share of the training budget per stage (the rest of the pipeline is fast).
BUDGET_SHARES = {"stylegan3": 0.30, "pix2pixhd": 0.22, "benchmark": 0.48}


@dataclass(frozen=True)
class Preset:
    """Data, network and budget sizes (defaults: the laptop preset)."""

    n_train: int = 48  # simulated data
    n_test: int = 12
    size: int = 128
    density: float = 0.55
    mean_radius: float = 10.0
    mask_res: int = 64  # StyleGAN
    sg3_cfg: str = "stylegan2"
    sg3_cbase: int = 4096
    sg3_cmax: int = 128
    sg3_batch: int = 8
    p2p_ngf: int = 16  # Pix2PixHD
    p2p_ndf: int = 16
    p2p_down: int = 3
    p2p_blocks: int = 3
    synth_train: int = 48  # synthetic pairs
    synth_test: int = 12
    spots: float = 3.0
    segmenters: str = "classical,cellpose,u2net,maskrcnn"
    seg_options: dict = field(
        default_factory=lambda: {
            "u2net": {"variant": "small"},
            "maskrcnn": {"arch": "resnet18_fpn"},
        }
    )
    minutes: float = 8.0  # training budget of the GANs and segmenters together

    def budget(self) -> dict[str, float]:
        """Training minutes per stage."""
        return {k: self.minutes * share for k, share in BUDGET_SHARES.items()}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS = {
    "laptop": Preset(),
    "tiny": Preset(
        n_train=8,
        n_test=3,
        size=64,
        density=0.5,
        mean_radius=8.0,
        mask_res=32,
        sg3_cbase=1024,
        sg3_cmax=32,
        sg3_batch=4,
        p2p_ngf=8,
        p2p_ndf=8,
        p2p_down=2,
        p2p_blocks=1,
        synth_train=6,
        synth_test=3,
        spots=2.0,
        segmenters="classical,u2net",
        seg_options={"u2net": {"variant": "small"}},
        minutes=1.0,
    ),
}


def preset(name: str, minutes: float | None = None, segmenters: str | None = None) -> Preset:
    """The preset ``name`` with the user's budget and segmenters (CellsynthError if unknown)."""
    if name not in PRESETS:
        raise CellsynthError(f"unknown demo preset {name!r}; use {', '.join(PRESETS)}")
    cfg = PRESETS[name]
    if minutes is not None:
        if minutes <= 0:
            raise CellsynthError("--minutes must be positive")
        cfg = dataclasses.replace(cfg, minutes=float(minutes))
    if segmenters:
        cfg = dataclasses.replace(cfg, segmenters=segmenters)
    return cfg
