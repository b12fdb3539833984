"""MONAI residual U-Net segmenter: foreground, boundary and distance maps -> watershed instances.

Default network: ``monai.networks.nets.UNet(spatial_dims=2, in_channels, out_channels=3,
channels=(16, 32, 64, 128, 256, 512), strides=(2, 2, 2, 2, 2), num_res_units=3)``, the 6-level,
3-residual-unit setting that did best on LIVECell in the LIVECell semantic-segmentation study.
``unet_channels``, ``strides`` and ``num_res_units`` are options (smaller for tests).
"""

from __future__ import annotations

from cellsynth.benchmark.segmenters._torchutil import DenseSegmenter
from cellsynth.benchmark.segmenters.base import register
from cellsynth.errors import CellsynthError


@register
class UNetSegmenter(DenseSegmenter):
    """MONAI UNet (3 outputs: foreground, inner boundary, normalised distance) + watershed.

    Options (besides :class:`DenseSegmenter`'s): ``unet_channels``, ``strides`` (one fewer than
    ``unet_channels``), ``num_res_units``.
    """

    name = "unet"
    requires = "monai (pip install 'cellsynth[benchmark]')"
    trainable = True
    outputs = ("fg", "boundary", "distance")
    EXTRA = {
        "unet_channels": [16, 32, 64, 128, 256, 512],
        "strides": [2, 2, 2, 2, 2],
        "num_res_units": 3,
        # batch norm: MONAI's default instance norm rescales each tile on its own, which on
        # sparse fluorescence tiles turns background noise into foreground-like features
        "norm": "batch",
    }

    def _multiple(self) -> int:
        chans, strides = list(self.options["unet_channels"]), list(self.options["strides"])
        if len(chans) < 2 or len(strides) != len(chans) - 1:
            raise CellsynthError(
                f"unet: strides must have one entry fewer than unet_channels, got "
                f"{len(strides)} strides for {len(chans)} levels"
            )
        m = 1
        for s in strides:
            m *= int(s)
        return max(m, 1)

    def _build(self, in_channels: int):
        try:
            from monai.networks.nets import UNet
        except ImportError as exc:
            raise CellsynthError(
                f"unet needs monai ({exc}); install it: pip install 'cellsynth[benchmark]'"
            ) from None
        o = self.options
        return UNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=len(self.outputs),
            channels=tuple(int(c) for c in o["unet_channels"]),
            strides=tuple(int(s) for s in o["strides"]),
            num_res_units=int(o["num_res_units"]),
            norm=str(o["norm"]),
        )
