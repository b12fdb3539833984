"""U^2-Net segmenter (Qin et al. 2020, "U^2-Net: Going deeper with nested U-structure for
salient object detection"), written here from the paper's description.

The network is a two-level nested U: each stage is a residual U-block (RSU-L, a small U-Net of
height L whose output is added to its input convolution; RSU-4F replaces pooling by dilated
convolutions). Six encoder stages (RSU-7, 6, 5, 4, 4F, 4F) and five decoder stages; every decoder
stage and the last encoder stage give a side output (3x3 conv, upsampled to the input size), and a
1x1 conv fuses the six. Training uses deep supervision: binary cross-entropy on the fused and all
six side outputs. Variants: ``full`` (U^2-Net, ~44 M parameters, 176.3 MB) and ``small``
(U^2-Net-dagger, in/mid/out = 64/16/64 everywhere, ~1.1 M parameters, 4.7 MB).

For instance segmentation the net predicts foreground and, with ``boundary=True`` (default), the
objects' inner boundaries as a second channel (a boundary-aware head); instances come from a
watershed (:func:`cellsynth.benchmark.segmenters._instances.maps_to_instances`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cellsynth.benchmark.segmenters._torchutil import DenseSegmenter
from cellsynth.benchmark.segmenters.base import register
from cellsynth.errors import CellsynthError

# (height, dilated, in, mid, out) for En_1..En_6 and De_5..De_1 (paper, Table 1 / Fig. 5)
FULL = {
    "encoder": [
        (7, False, None, 32, 64),
        (6, False, 64, 32, 128),
        (5, False, 128, 64, 256),
        (4, False, 256, 128, 512),
        (4, True, 512, 256, 512),
        (4, True, 512, 256, 512),
    ],
    "decoder": [
        (4, True, 1024, 256, 512),
        (4, False, 1024, 128, 256),
        (5, False, 512, 64, 128),
        (6, False, 256, 32, 64),
        (7, False, 128, 16, 64),
    ],
}
SMALL = {
    "encoder": [(7, False, None, 16, 64)]
    + [(h, d, 64, 16, 64) for h, d in ((6, False), (5, False), (4, False), (4, True), (4, True))],
    "decoder": [(h, d, 128, 16, 64) for h, d in ((4, True), (4, False), (5, False), (6, False))]
    + [(7, False, 128, 16, 64)],
}
VARIANTS = {"full": FULL, "small": SMALL}


class ConvBNReLU(nn.Sequential):
    """3x3 convolution (dilation d, same size) + batch norm + ReLU."""

    def __init__(self, cin: int, cout: int, dilation: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


def _upsample_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


class RSU(nn.Module):
    """Residual U-block RSU-L (``dilated=False``: max-pool down, bilinear up, dilation 2 at the
    bottom) or RSU-LF (``dilated=True``: no resampling; dilations 1, 2, 4, ... instead).

    Args:
        height: L, the number of encoder levels including the bottom one.
        cin, mid, cout: input, inner and output channels.
    """

    def __init__(self, height: int, cin: int, mid: int, cout: int, dilated: bool = False):
        super().__init__()
        if height < 2:
            raise ValueError("RSU height must be >= 2")
        self.dilated = dilated
        self.conv_in = ConvBNReLU(cin, cout)
        levels = height - 1
        dil = [2**i if dilated else 1 for i in range(levels)]
        bottom = 2**levels if dilated else 2
        self.encoder = nn.ModuleList(
            [ConvBNReLU(cout if i == 0 else mid, mid, dil[i]) for i in range(levels)]
        )
        self.bottom = ConvBNReLU(mid, mid, bottom)
        self.decoder = nn.ModuleList(
            [
                ConvBNReLU(2 * mid, cout if i == levels - 1 else mid, dil[levels - 1 - i])
                for i in range(levels)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hin = self.conv_in(x)
        h, skips = hin, []
        for i, conv in enumerate(self.encoder):
            if i > 0 and not self.dilated:
                h = F.max_pool2d(h, 2, stride=2, ceil_mode=True)
            h = conv(h)
            skips.append(h)
        d = self.bottom(h)
        for conv, skip in zip(self.decoder, reversed(skips)):
            d = conv(torch.cat([_upsample_like(d, skip), skip], dim=1))
        return d + hin


class U2Net(nn.Module):
    """U^2-Net: returns [fused, side1, ..., side6] logits, each N x out_ch x H x W.

    Args:
        in_ch: input channels; out_ch: output maps; variant: "full" or "small".
    """

    def __init__(self, in_ch: int = 3, out_ch: int = 1, variant: str = "full"):
        super().__init__()
        if variant not in VARIANTS:
            raise CellsynthError(
                f"unknown U2-Net variant {variant!r}; choose {', '.join(VARIANTS)}"
            )
        cfg = VARIANTS[variant]
        self.encoder = nn.ModuleList(
            RSU(h, in_ch if cin is None else cin, mid, cout, dilated=d)
            for h, d, cin, mid, cout in cfg["encoder"]
        )
        self.decoder = nn.ModuleList(
            RSU(h, cin, mid, cout, dilated=d) for h, d, cin, mid, cout in cfg["decoder"]
        )
        # side outputs from De_1..De_5 and En_6
        side_ch = [c[4] for c in reversed(cfg["decoder"])] + [cfg["encoder"][-1][4]]
        self.side = nn.ModuleList(nn.Conv2d(c, out_ch, 3, padding=1) for c in side_ch)
        self.fuse = nn.Conv2d(6 * out_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats, h = [], x
        for i, stage in enumerate(self.encoder):
            if i > 0:
                h = F.max_pool2d(h, 2, stride=2, ceil_mode=True)
            h = stage(h)
            feats.append(h)
        d, decoded = feats[-1], []
        for stage, skip in zip(self.decoder, reversed(feats[:-1])):
            d = stage(torch.cat([_upsample_like(d, skip), skip], dim=1))
            decoded.append(d)
        # decoded = [De_5, De_4, De_3, De_2, De_1]; sides in order De_1..De_5, En_6
        maps = list(reversed(decoded)) + [feats[-1]]
        sides = [_upsample_like(conv(m), x) for conv, m in zip(self.side, maps)]
        return [self.fuse(torch.cat(sides, dim=1)), *sides]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@register
class U2NetSegmenter(DenseSegmenter):
    """U^2-Net foreground (+ boundary) maps -> watershed instances.

    Options (besides :class:`DenseSegmenter`'s): ``variant`` "full" (default) | "small",
    ``boundary`` (True: 2nd output channel with inner boundaries, used as watershed seeds).
    """

    name = "u2net"
    requires = "torch"
    trainable = True
    EXTRA = {"variant": "full", "boundary": True}

    def __init__(self, **options):
        super().__init__(**options)
        self.check_choice("variant", VARIANTS)
        self.outputs = ("fg", "boundary") if self.options["boundary"] else ("fg",)

    def _build(self, in_channels: int):
        return U2Net(in_channels, len(self.outputs), self.options["variant"])
