"""The Swin transformer + FPN backbone of Mask R-CNN's ``arch="swin_t_fpn"`` (see
:mod:`cellsynth.benchmark.segmenters.swin`, whose ``swin`` segmenter uses it; kept apart so that
``maskrcnn`` can build it without importing the segmenter that subclasses it)."""

from __future__ import annotations

import math
from collections import OrderedDict

from torch import nn

from cellsynth.errors import CellsynthError

try:
    from torchvision.models.swin_transformer import SwinTransformer
    from torchvision.ops import FeaturePyramidNetwork
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"swin needs torchvision ({_exc}); pip install 'cellsynth[benchmark]'"
    ) from None

PATCH = 4
BACKBONE_DEFAULTS = {
    "swin_embed_dim": 96,  # swin_t: 96; 48 is about 4x cheaper
    "swin_depths": [2, 2, 6, 2],  # blocks per stage (swin_t)
    "swin_heads": None,  # None: about one head per 32 channels (swin_t: 3, 6, 12, 24)
    "swin_window": 7,
    "swin_drop_path": 0.1,  # stochastic depth at the last block (swin_t on ImageNet: 0.2)
    "fpn_channels": 256,
}


# ------------------------------------------------------------------------------------
def swin_heads(embed_dim: int, heads=None) -> list[int]:
    """Attention heads per stage: ``heads`` when given (checked), else about one per 32 channels
    of the first stage (at least 1, a divisor of ``embed_dim``), doubling at each stage."""
    if heads is None:
        h = max(1, round(embed_dim / 32))
        while embed_dim % h:
            h -= 1
        heads = [h * 2**i for i in range(4)]
    heads = [int(h) for h in heads]
    if len(heads) != 4 or min(heads) < 1:
        raise CellsynthError(f"swin: swin_heads needs 4 counts >= 1, got {heads}")
    for i, h in enumerate(heads):
        if (embed_dim * 2**i) % h:
            raise CellsynthError(
                f"swin: stage {i + 1} has {embed_dim * 2**i} channels, not divisible by {h} heads"
            )
    return heads


class SwinBody(nn.Module):
    """The four stages of a torchvision Swin transformer (no classifier) with one LayerNorm per
    stage output: B x 3 x H x W (H, W multiples of 32) -> 4 maps B x C_i x H/s_i x W/s_i."""

    def __init__(self, embed_dim, depths, heads, window, drop_path):
        super().__init__()
        swin = SwinTransformer(
            patch_size=[PATCH, PATCH],
            embed_dim=embed_dim,
            depths=list(depths),
            num_heads=list(heads),
            window_size=[window, window],
            stochastic_depth_prob=drop_path,
        )
        # features: patch embedding, stage 1, merging, stage 2, merging, stage 3, merging, stage 4
        # (the keys of torchvision's swin_t state_dict, so ImageNet weights load by name)
        self.features = swin.features
        self.channels = [embed_dim * 2**i for i in range(len(depths))]
        self.norms = nn.ModuleList(nn.LayerNorm(c) for c in self.channels)
        self.stage_index = [1 + 2 * i for i in range(len(depths))]

    def forward(self, x):
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)  # B x H x W x C (channels last, as torchvision's blocks take them)
            if i in self.stage_index:
                k = self.stage_index.index(i)
                outs.append(self.norms[k](x).permute(0, 3, 1, 2).contiguous())
        return outs


class SwinFPN(nn.Module):
    """Swin stages -> FPN: OrderedDict of 5 maps (``0``..``3`` at strides 4..32, ``pool`` at 64)
    with ``out_channels`` channels each; any input size (padded to 32 inside, cropped back)."""

    def __init__(
        self, embed_dim=96, depths=(2, 2, 6, 2), heads=None, window=7, drop_path=0.1, channels=256
    ):
        super().__init__()
        depths = [int(d) for d in depths]
        if len(depths) != 4 or min(depths) < 1:
            raise CellsynthError(f"swin: swin_depths needs 4 block counts >= 1, got {depths}")
        if int(embed_dim) < 1 or int(window) < 1 or int(channels) < 1:
            raise CellsynthError("swin: swin_embed_dim, swin_window and fpn_channels must be >= 1")
        if not 0.0 <= float(drop_path) < 1.0:
            raise CellsynthError(f"swin: swin_drop_path must be in [0, 1), got {drop_path}")
        heads = swin_heads(int(embed_dim), heads)
        self.body = SwinBody(int(embed_dim), depths, heads, int(window), float(drop_path))
        self.fpn = FeaturePyramidNetwork(
            self.body.channels, int(channels), extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = int(channels)
        self.strides = [PATCH * 2**i for i in range(4)]
        self.multiple = self.strides[-1]

    def forward(self, x):
        h, w = x.shape[-2:]
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = nn.functional.pad(x, (0, pw, 0, ph))
        feats = self.body(x)
        feats = [
            f[..., : math.ceil(h / s), : math.ceil(w / s)]
            for f, s in zip(feats, self.strides, strict=True)
        ]
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def swin_fpn_backbone(options: dict) -> SwinFPN:
    """The backbone of ``arch="swin_t_fpn"`` from a segmenter's options (missing swin options:
    the swin_t defaults, so that the plain ``maskrcnn`` segmenter can take this arch too)."""
    o = {**BACKBONE_DEFAULTS, **options}
    return SwinFPN(
        embed_dim=o["swin_embed_dim"],
        depths=o["swin_depths"],
        heads=o["swin_heads"],
        window=o["swin_window"],
        drop_path=o["swin_drop_path"],
        channels=o["fpn_channels"],
    )
