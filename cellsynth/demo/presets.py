"""Sizes of everything in the demo, per preset.

"laptop" is the README's demo (under 10 minutes on 2 CPU cores, plus the install); "tiny" runs
the same code paths in about a minute (tests, CI). The shipped models do the heavy lifting: the
demo synthesises with them, fine-tunes them briefly to show that training works, and benchmarks
the shipped segmenters; ``minutes`` is the budget of that fine-tuning (and of any segmenter the
user names that has no shipped model and so trains on the synthetic set).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from cellsynth.errors import CellsynthError

# Share of the training budget per stage (everything else is inference).
BUDGET_SHARES = {"finetune-masks": 0.5, "finetune-images": 0.5}
SHIPPED = "dsb2018-nuclei"  # the shipped models the demo uses


@dataclass(frozen=True)
class Preset:
    """Data, network and budget sizes (defaults: the laptop preset)."""

    synth_train: int = 200  # synthetic pairs (128 x 128 at full scale)
    synth_test: int = 100
    spots: float = 3.0  # mean puncta per cell
    max_real_test: int | None = None  # images of the real test split used (None: all)
    max_train_images: int | None = None  # real training images the GANs are fine-tuned on
    sg3_batch: int = 8  # fine-tuning
    p2p_crop: int = 128
    segmenters: str = "classical,stardist,cellpose,unet,u2net,dwt,embedseg"
    seg_options: dict = field(default_factory=dict)  # for segmenters trained in the demo
    n_boot: int = 1000
    minutes: float = 2.0  # fine-tuning budget of both GANs together

    def budget(self) -> dict[str, float]:
        """Training minutes per stage."""
        return {k: self.minutes * share for k, share in BUDGET_SHARES.items()}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS = {
    "laptop": Preset(),
    "tiny": Preset(
        synth_train=6,
        synth_test=4,
        spots=2.0,
        max_real_test=4,
        max_train_images=2,
        sg3_batch=4,
        p2p_crop=64,
        segmenters="classical,unet,u2net",
        n_boot=200,
        minutes=0.4,
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
