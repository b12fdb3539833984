"""Pix2PixHD networks (Wang et al. 2018): the global generator, the local enhancer, the
multiscale PatchGAN discriminator and the instance-wise feature encoder.

Every network takes any number of input and output channels, so single-channel microscopy
needs no fake RGB. Shapes: inputs N x C x H x W with H, W multiples of
``2 ** total_downsampling`` (see :attr:`Options.size_multiple`).
"""

from __future__ import annotations

import torch
from torch import nn


def make_norm(kind: str, channels: int) -> nn.Module:
    """Normalisation layer: ``instance`` (no affine, the Pix2PixHD default) or ``batch``."""
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=True)
    raise ValueError(f"unknown norm {kind!r}")


def _conv_block(cin: int, cout: int, kernel: int, stride: int, norm: str) -> list[nn.Module]:
    """(reflection pad for odd 'same' kernels) conv -> norm -> ReLU."""
    if stride == 1:
        pad = kernel // 2
        return [
            nn.ReflectionPad2d(pad),
            nn.Conv2d(cin, cout, kernel),
            make_norm(norm, cout),
            nn.ReLU(True),
        ]
    return [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2),
        make_norm(norm, cout),
        nn.ReLU(True),
    ]


def _up_block(cin: int, cout: int, norm: str) -> list[nn.Module]:
    """Transposed 3x3 convolution doubling the size -> norm -> ReLU."""
    return [
        nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1),
        make_norm(norm, cout),
        nn.ReLU(True),
    ]


def _to_image(cin: int, cout: int) -> list[nn.Module]:
    return [nn.ReflectionPad2d(3), nn.Conv2d(cin, cout, 7), nn.Tanh()]


class ResnetBlock(nn.Module):
    """x + (pad, conv3x3, norm, ReLU, pad, conv3x3, norm)(x)."""

    def __init__(self, dim: int, norm: str = "instance"):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3),
            make_norm(norm, dim),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3),
            make_norm(norm, dim),
        )

    def forward(self, x):
        return x + self.body(x)


class GlobalGenerator(nn.Module):
    """G1: 7x7 conv, ``n_downsampling`` strided convs, residual blocks, as many transposed
    convs, 7x7 conv to ``output_nc`` channels, tanh.

    ``with_output=False`` drops the last 7x7 conv and tanh (the local enhancer uses the
    features before them).
    """

    def __init__(
        self,
        input_nc: int,
        output_nc: int,
        ngf: int = 64,
        n_downsampling: int = 4,
        n_blocks: int = 9,
        norm: str = "instance",
        with_output: bool = True,
    ):
        super().__init__()
        layers = _conv_block(input_nc, ngf, 7, 1, norm)
        for i in range(n_downsampling):
            layers += _conv_block(ngf * 2**i, ngf * 2 ** (i + 1), 3, 2, norm)
        width = ngf * 2**n_downsampling
        layers += [ResnetBlock(width, norm) for _ in range(n_blocks)]
        for i in range(n_downsampling, 0, -1):
            layers += _up_block(ngf * 2**i, ngf * 2 ** (i - 1), norm)
        if with_output:
            layers += _to_image(ngf, output_nc)
        self.model = nn.Sequential(*layers)
        self.out_channels = output_nc if with_output else ngf

    def forward(self, x):
        return self.model(x)


def downsample(x: torch.Tensor) -> torch.Tensor:
    """Halve the size with a 3x3 average (stride 2, padding 1, padding not counted)."""
    return nn.functional.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)


class LocalEnhancer(nn.Module):
    """G = {G1, G2, ...}: a global generator at 1/2**n resolution wrapped by ``n_local_enhancers``
    enhancers, each a front end (7x7 conv + one strided conv) whose output is added to the
    coarser result, then residual blocks and a transposed conv (the finest ends in 7x7 + tanh).

    ``self.global_net`` is the part held fixed for ``niter_fix_global`` epochs.
    """

    def __init__(
        self,
        input_nc: int,
        output_nc: int,
        ngf: int = 32,
        n_downsample_global: int = 4,
        n_blocks_global: int = 9,
        n_local_enhancers: int = 1,
        n_blocks_local: int = 3,
        norm: str = "instance",
    ):
        super().__init__()
        self.n_local_enhancers = n_local_enhancers
        self.global_net = GlobalGenerator(
            input_nc,
            output_nc,
            ngf * 2**n_local_enhancers,
            n_downsample_global,
            n_blocks_global,
            norm,
            with_output=False,
        )
        self.front = nn.ModuleList()
        self.back = nn.ModuleList()
        for level in range(1, n_local_enhancers + 1):
            width = ngf * 2 ** (n_local_enhancers - level)
            self.front.append(
                nn.Sequential(
                    *_conv_block(input_nc, width, 7, 1, norm),
                    *_conv_block(width, width * 2, 3, 2, norm),
                )
            )
            back = [ResnetBlock(width * 2, norm) for _ in range(n_blocks_local)]
            back += _up_block(width * 2, width, norm)
            if level == n_local_enhancers:
                back += _to_image(width, output_nc)
            self.back.append(nn.Sequential(*back))

    def forward(self, x):
        pyramid = [x]
        for _ in range(self.n_local_enhancers):
            pyramid.append(downsample(pyramid[-1]))
        out = self.global_net(pyramid[-1])
        for level in range(1, self.n_local_enhancers + 1):
            finer = pyramid[self.n_local_enhancers - level]
            out = self.back[level - 1](self.front[level - 1](finer) + out)
        return out


def region_mean(features: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Replace every pixel's features by the mean over its region (instance-wise average
    pooling).

    Args: ``features`` N x C x H x W; ``regions`` N x H x W integer ids (0 is a region too).
    Returns: N x C x H x W, constant within each region of each image.
    """
    if regions.shape != (features.shape[0], *features.shape[2:]):
        raise ValueError(f"regions {tuple(regions.shape)} do not match {tuple(features.shape)}")
    out = torch.empty_like(features)
    c = features.shape[1]
    for b in range(features.shape[0]):
        ids, inverse = torch.unique(regions[b].reshape(-1), return_inverse=True)
        flat = features[b].reshape(c, -1)
        sums = flat.new_zeros(c, ids.numel()).index_add_(1, inverse, flat)
        counts = torch.bincount(inverse, minlength=ids.numel()).to(flat.dtype)
        out[b] = (sums / counts)[:, inverse].reshape(features[b].shape)
    return out


class Encoder(nn.Module):
    """E: an encoder-decoder (7x7 conv, strided convs, transposed convs, 7x7 conv, tanh) whose
    output is averaged within each instance, giving one ``feat_num``-vector per object."""

    def __init__(
        self,
        input_nc: int,
        feat_num: int = 3,
        nef: int = 16,
        n_downsampling: int = 4,
        norm: str = "instance",
    ):
        super().__init__()
        layers = _conv_block(input_nc, nef, 7, 1, norm)
        for i in range(n_downsampling):
            layers += _conv_block(nef * 2**i, nef * 2 ** (i + 1), 3, 2, norm)
        for i in range(n_downsampling, 0, -1):
            layers += _up_block(nef * 2**i, nef * 2 ** (i - 1), norm)
        layers += _to_image(nef, feat_num)
        self.model = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        return region_mean(self.model(image), regions)


class NLayerDiscriminator(nn.Module):
    """PatchGAN: 4x4 convs (stride 2 ``n_layers`` times, then stride 1 twice), LeakyReLU(0.2),
    norm on all but the first; returns the output of every block (the last is the score map)."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3, norm: str = "instance"):
        super().__init__()
        pad = 2
        blocks = [nn.Sequential(nn.Conv2d(input_nc, ndf, 4, 2, pad), nn.LeakyReLU(0.2, True))]
        width = ndf
        for i in range(1, n_layers + 1):
            prev, width = width, min(width * 2, 512)
            stride = 2 if i < n_layers else 1
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(prev, width, 4, stride, pad),
                    make_norm(norm, width),
                    nn.LeakyReLU(0.2, True),
                )
            )
        blocks.append(nn.Sequential(nn.Conv2d(width, 1, 4, 1, pad)))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x) -> list[torch.Tensor]:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats


class MultiscaleDiscriminator(nn.Module):
    """``num_D`` PatchGANs on the input at 1, 1/2, 1/4, ... resolution (average pooling).

    Returns a list (one per scale, finest first) of lists of block outputs.
    """

    def __init__(
        self,
        input_nc: int,
        ndf: int = 64,
        n_layers: int = 3,
        num_D: int = 2,
        norm: str = "instance",
    ):
        super().__init__()
        self.scales = nn.ModuleList(
            NLayerDiscriminator(input_nc, ndf, n_layers, norm) for _ in range(num_D)
        )

    def forward(self, x) -> list[list[torch.Tensor]]:
        results = []
        for i, d in enumerate(self.scales):
            if i:
                x = downsample(x)
            results.append(d(x))
        return results


def build_generator(opt) -> nn.Module:
    """The generator an :class:`~cellsynth.pix2pixhd.options.Options` asks for."""
    if opt.netG == "global":
        return GlobalGenerator(
            opt.input_nc_G, opt.output_nc, opt.ngf, opt.n_downsample_global, opt.n_blocks_global
        )
    return LocalEnhancer(
        opt.input_nc_G,
        opt.output_nc,
        opt.ngf,
        opt.n_downsample_global,
        opt.n_blocks_global,
        opt.n_local_enhancers,
        opt.n_blocks_local,
    )


def build_discriminator(opt) -> MultiscaleDiscriminator:
    return MultiscaleDiscriminator(opt.input_nc_D, opt.ndf, opt.n_layers_D, opt.num_D)


def build_encoder(opt) -> Encoder | None:
    """The feature encoder (image -> per-region features), or None without features."""
    if not opt.use_features:
        return None
    return Encoder(opt.output_nc, opt.feat_num, opt.nef, opt.n_downsample_E)


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """Convolutions ~ N(0, 0.02), batch-norm scales ~ N(1, 0.02), biases 0 (uses torch's RNG)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
