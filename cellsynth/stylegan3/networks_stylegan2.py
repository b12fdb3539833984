"""StyleGAN2 building blocks, the StyleGAN2 synthesis network and the residual discriminator.

Shared with StyleGAN3: the equalized-learning-rate fully connected layer, the mapping network
(z, c -> w with a tracked average w for truncation) and the modulated convolution.
The StyleGAN2 generator starts from a learned 4x4 constant, doubles the resolution per block
(modulated 3x3 convolutions with weight demodulation, per-pixel noise) and sums toRGB outputs
(skip architecture). The discriminator is the StyleGAN2 residual network with minibatch
standard deviation and projection conditioning.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from cellsynth.errors import CellsynthError
from cellsynth.stylegan3.ops import ACTIVATIONS, bias_act, conv2d_resample, upfirdn2d

NOISE_MODES = ("const", "random", "none")


def check_resolution(img_resolution: int, img_channels: int) -> None:
    """Raise CellsynthError unless the resolution is a power of two >= 16 and channels >= 1."""
    r = int(img_resolution)
    if r < 16 or r & (r - 1) != 0:
        raise CellsynthError(f"image resolution must be a power of two >= 16, got {img_resolution}")
    if int(img_channels) < 1:
        raise CellsynthError(f"image channels must be >= 1, got {img_channels}")


def synthesis_fused_modconv(net: nn.Module, ws: torch.Tensor, noise_mode: str) -> bool:
    """Check a synthesis network's ``forward`` arguments (``noise_mode`` one of NOISE_MODES, ``ws``
    [N, net.num_ws, net.w_dim]) and say whether its layers use the fused modulated conv:
    ``net.fused_modconv`` when set, else one grouped conv for CUDA inference and the shared conv
    when training and on the CPU (faster there)."""
    if noise_mode not in NOISE_MODES:
        raise CellsynthError(f"unknown noise_mode {noise_mode!r}; use one of {NOISE_MODES}")
    if ws.ndim != 3 or ws.shape[1:] != (net.num_ws, net.w_dim):
        raise CellsynthError(f"ws must be [N, {net.num_ws}, {net.w_dim}], got {tuple(ws.shape)}")
    if net.fused_modconv is not None:
        return net.fused_modconv
    return not torch.is_grad_enabled() and ws.is_cuda


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale x so that the mean of its squares along ``dim`` is 1."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def modulated_conv2d(
    x,
    weight,
    styles,
    noise=None,
    up=1,
    padding=0,
    resample_filter=None,
    demodulate=True,
    input_gain=None,
    fused=True,
    flip_weight=True,
):
    """Convolution whose weights are scaled per sample by ``styles`` (StyleGAN2 modulation).

    For sample n: w'[o, i] = weight[o, i] * styles[n, i], then, when ``demodulate``, divided
    by sqrt(sum_{i,k} w'[o, i, k]^2 + 1e-8) for each output channel o, then times input_gain.

    Args:
        x: input [N, I, H, W]; weight: [O, I, kh, kw]; styles: [N, I].
        noise: tensor broadcastable to the output, added after the convolution, or None.
        up: upsampling factor (with ``resample_filter``); padding: convolution padding.
        demodulate: normalise each output channel's weights (per sample).
        input_gain: scalar tensor multiplied into the weights, or None.
        fused: True = one grouped convolution with per-sample weights; False = scale the
            activations instead (x * s, shared conv, * demodulation coefficients); same maths.
        flip_weight: passed to conv2d_resample.

    Returns:
        tensor [N, O, H', W'].
    """
    n = x.shape[0]
    out_c, in_c, kh, kw = weight.shape
    if styles.shape != (n, in_c):
        raise CellsynthError(f"styles shape {tuple(styles.shape)} != {(n, in_c)}")
    if demodulate:
        # Pre-normalise to keep the products in range (matters for fp16; exact in maths).
        weight = weight * weight.square().mean([1, 2, 3], keepdim=True).rsqrt()
        styles = styles * styles.square().mean().rsqrt()
    dcoefs = None
    if demodulate:
        w = weight.unsqueeze(0) * styles.reshape(n, 1, in_c, 1, 1)
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [N, O]
    if input_gain is not None:  # applied after demodulation, so it is not normalised away
        styles = styles * input_gain
    if not fused:
        x = x * styles.to(x.dtype).reshape(n, -1, 1, 1)
        x = conv2d_resample(
            x,
            weight.to(x.dtype),
            f=resample_filter,
            up=up,
            padding=padding,
            flip_weight=flip_weight,
        )
        if dcoefs is not None:
            x = x * dcoefs.to(x.dtype).reshape(n, -1, 1, 1)
        if noise is not None:
            x = x + noise.to(x.dtype)
        return x
    w = weight.unsqueeze(0) * styles.reshape(n, 1, in_c, 1, 1)
    if dcoefs is not None:
        w = w * dcoefs.reshape(n, out_c, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_c, kh, kw)
    x = conv2d_resample(
        x,
        w.to(x.dtype),
        f=resample_filter,
        up=up,
        padding=padding,
        groups=n,
        flip_weight=flip_weight,
    )
    x = x.reshape(n, -1, *x.shape[2:])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


class FullyConnectedLayer(nn.Module):
    """Dense layer with equalized learning rate: y = act(x @ (W * g).T + b * lr_multiplier)."""

    def __init__(
        self,
        in_features,
        out_features,
        bias=True,
        activation="linear",
        lr_multiplier=1.0,
        weight_init=1.0,
        bias_init=0.0,
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(
            torch.randn([out_features, in_features]) * (weight_init / lr_multiplier)
        )
        bias_init = np.broadcast_to(np.asarray(bias_init, dtype=np.float32), [out_features])
        self.bias = nn.Parameter(torch.from_numpy(bias_init / lr_multiplier)) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        x = x.matmul(w.t())
        return bias_act(x, b, act=self.activation)

    def extra_repr(self):
        return f"in={self.in_features}, out={self.out_features}, act={self.activation}"


class MappingNetwork(nn.Module):
    """z (and class c) -> w, broadcast to ``num_ws`` copies, with truncation.

    z is normalised to unit second moment, c is embedded by a dense layer and normalised, both
    are concatenated and passed through ``num_layers`` lrelu dense layers (lr multiplier 0.01).
    ``w_avg`` tracks the mean w (when ``update_emas``) for the truncation trick.
    """

    def __init__(
        self,
        z_dim,
        c_dim,
        w_dim,
        num_ws,
        num_layers=2,
        lr_multiplier=0.01,
        w_avg_beta=0.998,
        layer_features=None,
    ):
        super().__init__()
        if z_dim <= 0 and c_dim <= 0:
            raise CellsynthError("mapping network needs z_dim > 0 or c_dim > 0")
        if num_layers < 1:
            raise CellsynthError(f"mapping network needs at least one layer, got {num_layers}")
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.num_ws, self.num_layers, self.w_avg_beta = num_ws, num_layers, w_avg_beta
        layer_features = layer_features or w_dim
        self.embed = FullyConnectedLayer(c_dim, w_dim) if c_dim > 0 else None
        features = (
            [z_dim + (w_dim if c_dim > 0 else 0)] + [layer_features] * (num_layers - 1) + [w_dim]
        )
        self.layers = nn.ModuleList(
            FullyConnectedLayer(a, b, activation="lrelu", lr_multiplier=lr_multiplier)
            for a, b in zip(features[:-1], features[1:])
        )
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z, c=None, truncation_psi=1, truncation_cutoff=None, update_emas=False):
        """Map z [N, z_dim] and c [N, c_dim] to ws [N, num_ws, w_dim] (or w [N, w_dim])."""
        parts = []
        if self.z_dim > 0:
            if z is None or z.ndim != 2 or z.shape[1] != self.z_dim:
                raise CellsynthError(
                    f"z must be [N, {self.z_dim}], got {getattr(z, 'shape', None)}"
                )
            parts.append(normalize_2nd_moment(z.to(torch.float32)))
        if self.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
                raise CellsynthError(
                    f"c must be [N, {self.c_dim}], got {getattr(c, 'shape', None)}"
                )
            parts.append(normalize_2nd_moment(self.embed(c.to(torch.float32))))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        for layer in self.layers:
            x = layer(x)
        if update_emas and hasattr(self, "w_avg"):
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is None:
            return x
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else int(truncation_cutoff)
            head = self.w_avg.lerp(x[:, :cutoff], truncation_psi)
            x = torch.cat([head, x[:, cutoff:]], dim=1)
        return x


class Conv2dLayer(nn.Module):
    """Equalized-learning-rate convolution with optional FIR up/down, bias, activation, clamp."""

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        bias=True,
        activation="linear",
        up=1,
        down=1,
        resample_filter=(1, 3, 3, 1),
        conv_clamp=None,
    ):
        super().__init__()
        self.activation, self.up, self.down, self.conv_clamp = activation, up, down, conv_clamp
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.act_gain = ACTIVATIONS[activation].def_gain
        self.weight = nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size])
        )
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x, gain=1):
        w = self.weight * self.weight_gain
        b = self.bias.to(x.dtype) if self.bias is not None else None
        x = conv2d_resample(
            x,
            w.to(x.dtype),
            f=self.resample_filter,
            up=self.up,
            down=self.down,
            padding=self.padding,
        )
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=clamp)


# ------------------------------------------------------------------------------------------------
# Mixed precision: which dtype a block marked ``use_fp16`` runs in

NET_PRECISIONS = ("default", "mixed", "fp32")


def layer_dtype(block: nn.Module, x: torch.Tensor) -> torch.dtype:
    """The activation dtype of ``block`` for input ``x``.

    Blocks that the original would run in fp16 (``use_fp16``, the highest resolutions, chosen by
    ``num_fp16_res``) run in fp16 on CUDA and, once :func:`set_precision` has set "mixed", in
    bfloat16 on the CPU; "fp32" (``--fp32``) keeps every block in float32; "default" (a freshly
    built network) is the original's behaviour: fp16 on CUDA, float32 on the CPU. Every other
    block, the mapping network, the losses and the optimizer state stay float32."""
    if not getattr(block, "use_fp16", False):
        return torch.float32
    mode = getattr(block, "precision", "default")
    if mode == "fp32":
        return torch.float32
    if x.is_cuda:
        return torch.float16
    return torch.bfloat16 if mode == "mixed" else torch.float32


def set_precision(net: nn.Module, mode: str) -> nn.Module:
    """Set the mixed-precision mode ("default", "mixed" or "fp32"; see :func:`layer_dtype`) of
    every block of ``net``; a plain attribute, so snapshots and state dicts are unchanged."""
    if mode not in NET_PRECISIONS:
        raise CellsynthError(f"unknown precision {mode!r}; use one of {', '.join(NET_PRECISIONS)}")
    for m in net.modules():
        if hasattr(m, "use_fp16"):
            m.precision = mode
    return net


def use_mixed_precision(net: nn.Module, device, fp32: bool = False) -> str:
    """Set ``net``'s precision for running on ``device``: its ``use_fp16`` blocks in fp16 on CUDA,
    in bf16 on a CPU with native bf16, float32 with ``fp32`` or elsewhere. Returns what runs:
    "fp16", "bf16" or "fp32"."""
    from cellsynth.precision import low_precision_dtype

    dtype = low_precision_dtype(torch.device(device), not fp32)
    set_precision(net, "fp32" if dtype is None else "mixed")
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")


# ------------------------------------------------------------------------------------------------
# StyleGAN2 synthesis


class SynthesisLayer2(nn.Module):
    """Modulated 3x3 convolution (optionally upsampling x2) + noise + bias + lrelu."""

    def __init__(
        self,
        in_channels,
        out_channels,
        w_dim,
        resolution,
        kernel_size=3,
        up=1,
        use_noise=True,
        resample_filter=(1, 3, 3, 1),
        conv_clamp=None,
    ):
        super().__init__()
        self.resolution, self.up, self.use_noise, self.conv_clamp = (
            resolution,
            up,
            use_noise,
            conv_clamp,
        )
        self.padding = kernel_size // 2
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(list(resample_filter)))
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size])
        )
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))

    def forward(self, x, w, noise_mode="random", fused_modconv=True, gain=1):
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = (
                torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
                * self.noise_strength
            )
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(
            x,
            self.weight,
            styles,
            noise=noise,
            up=self.up,
            padding=self.padding,
            resample_filter=self.resample_filter,
            fused=fused_modconv,
        )
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(
            x, self.bias.to(x.dtype), act="lrelu", gain=math.sqrt(2) * gain, clamp=clamp
        )


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution without demodulation, + bias (and clamp)."""

    def __init__(self, in_channels, out_channels, w_dim, conv_clamp=None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 1, 1]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x, w, fused_modconv=True):
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused_modconv)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


class SynthesisBlock2(nn.Module):
    """One resolution of the StyleGAN2 generator (skip architecture)."""

    def __init__(
        self,
        in_channels,
        out_channels,
        w_dim,
        resolution,
        img_channels,
        use_fp16=False,
        conv_clamp=None,
        resample_filter=(1, 3, 3, 1),
    ):
        super().__init__()
        self.in_channels, self.resolution, self.use_fp16 = in_channels, resolution, use_fp16
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(list(resample_filter)))
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
            self.conv0 = None
        else:
            self.conv0 = SynthesisLayer2(
                in_channels,
                out_channels,
                w_dim,
                resolution,
                up=2,
                resample_filter=resample_filter,
                conv_clamp=conv_clamp,
            )
        self.conv1 = SynthesisLayer2(
            out_channels,
            out_channels,
            w_dim,
            resolution,
            resample_filter=resample_filter,
            conv_clamp=conv_clamp,
        )
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1

    def forward(self, x, img, ws, noise_mode="random", fused_modconv=True):
        w_iter = iter(ws.unbind(dim=1))
        n = ws.shape[0]
        dtype = layer_dtype(self, ws)
        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).repeat([n, 1, 1, 1])
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
        else:
            x = x.to(dtype)
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
        if img is not None:
            img = upfirdn2d.upsample2d(img, self.resample_filter)
        y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv).to(torch.float32)
        img = y if img is None else img + y
        return x, img


class SynthesisNetwork2(nn.Module):
    """StyleGAN2 synthesis: 4x4 constant -> blocks up to img_resolution, summed toRGB outputs."""

    def __init__(
        self,
        w_dim,
        img_resolution,
        img_channels,
        channel_base=32768,
        channel_max=512,
        num_fp16_res=0,
        conv_clamp=None,
        fused_modconv=None,
    ):
        super().__init__()
        check_resolution(img_resolution, img_channels)
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.fused_modconv = fused_modconv
        log2 = int(np.log2(img_resolution))
        self.block_resolutions = [2**i for i in range(2, log2 + 1)]
        channels = {r: max(1, min(channel_base // r, channel_max)) for r in self.block_resolutions}
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        self.num_ws = 0
        self.blocks = nn.ModuleList()
        for res in self.block_resolutions:
            block = SynthesisBlock2(
                channels[res // 2] if res > 4 else 0,
                channels[res],
                w_dim,
                res,
                img_channels,
                use_fp16=res >= fp16_resolution,
                conv_clamp=conv_clamp,
            )
            self.num_ws += block.num_conv
            self.blocks.append(block)
        self.num_ws += 1  # the last toRGB layer

    def forward(self, ws, noise_mode="const", update_emas=False):
        """ws [N, num_ws, w_dim] -> images [N, img_channels, R, R] (float32)."""
        fused = synthesis_fused_modconv(self, ws, noise_mode)
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for block in self.blocks:
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            x, img = block(x, img, block_ws, noise_mode=noise_mode, fused_modconv=fused)
            w_idx += block.num_conv
        return img

    def set_input_transform(self, translate=(0.0, 0.0), rotate=0.0):
        """StyleGAN2 has no Fourier-feature input: translation/rotation are unsupported."""
        raise CellsynthError(
            "translate/rotate need a stylegan3-t or stylegan3-r generator; this one is stylegan2"
        )


# ------------------------------------------------------------------------------------------------
# Discriminator


class MinibatchStdLayer(nn.Module):
    """Append the standard deviation over groups of samples as extra feature maps."""

    def __init__(self, group_size, num_channels=1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x):
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size is not None else n
        if n % g != 0:
            raise CellsynthError(
                f"batch size {n} is not divisible by the minibatch-std group size {g}; "
                "use a batch size that is a multiple of --mbstd-group"
            )
        f = self.num_channels
        if c % f != 0:
            raise CellsynthError(f"{c} channels not divisible by mbstd_num_channels {f}")
        y = x.reshape(g, -1, f, c // f, h, w)  # [G, M, F, c, H, W]; M = N / G groups
        y = y - y.mean(dim=0)
        y = (y.square().mean(dim=0) + 1e-8).sqrt()  # std over each group
        y = y.mean(dim=[2, 3, 4])  # [M, F]
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)  # sample i gets group i % M
        return torch.cat([x, y], dim=1)


class DiscriminatorBlock(nn.Module):
    """Residual block: (fromRGB) -> conv 3x3 -> conv 3x3 down x2, plus a 1x1 down skip."""

    def __init__(
        self,
        in_channels,
        tmp_channels,
        out_channels,
        img_channels,
        use_fp16=False,
        conv_clamp=None,
        resample_filter=(1, 3, 3, 1),
    ):
        super().__init__()
        self.in_channels, self.use_fp16 = in_channels, use_fp16
        kw = dict(resample_filter=resample_filter, conv_clamp=conv_clamp)
        self.fromrgb = (
            Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", **kw)
            if in_channels == 0
            else None
        )
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", **kw)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2, **kw)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2, **kw)

    def forward(self, x, img):
        dtype = layer_dtype(self, img)
        if self.in_channels == 0:
            x = self.fromrgb(img.to(dtype))
        else:
            x = x.to(dtype)
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv0(x)
        x = self.conv1(x, gain=math.sqrt(0.5))
        return y + x


class DiscriminatorEpilogue(nn.Module):
    """4x4 head: minibatch std -> conv -> dense -> output (projection with the class map)."""

    def __init__(
        self, in_channels, cmap_dim, mbstd_group_size=4, mbstd_num_channels=1, conv_clamp=None
    ):
        super().__init__()
        self.cmap_dim = cmap_dim
        self.mbstd = (
            MinibatchStdLayer(mbstd_group_size, mbstd_num_channels)
            if mbstd_num_channels > 0
            else None
        )
        self.conv = Conv2dLayer(
            in_channels + mbstd_num_channels,
            in_channels,
            3,
            activation="lrelu",
            conv_clamp=conv_clamp,
        )
        self.fc = FullyConnectedLayer(in_channels * 16, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x, cmap):
        x = x.to(torch.float32)
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x)
        if self.cmap_dim > 0:
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator with minibatch std and projection conditioning.

    Args:
        c_dim: conditioning size (0 = unconditional); img_resolution, img_channels: input size.
        cbase, cmax: channels at resolution r are min(cbase // r, cmax).
        mbstd_group_size, mbstd_num_channels: minibatch standard deviation layer.
        num_fp16_res: the highest resolutions that run in fp16 (CUDA only).
        conv_clamp: clamp conv outputs (None = off).
        cmap_dim: size of the class projection (default: channels at 4x4).
        map_depth: layers of the class-embedding mapping network.
    """

    def __init__(
        self,
        c_dim,
        img_resolution,
        img_channels,
        cbase=32768,
        cmax=512,
        mbstd_group_size=4,
        mbstd_num_channels=1,
        num_fp16_res=0,
        conv_clamp=None,
        cmap_dim=None,
        map_depth=8,
    ):
        super().__init__()
        check_resolution(img_resolution, img_channels)
        self.init_kwargs = dict(
            c_dim=int(c_dim),
            img_resolution=int(img_resolution),
            img_channels=int(img_channels),
            cbase=int(cbase),
            cmax=int(cmax),
            mbstd_group_size=None if mbstd_group_size is None else int(mbstd_group_size),
            mbstd_num_channels=int(mbstd_num_channels),
            num_fp16_res=int(num_fp16_res),
            conv_clamp=None if conv_clamp is None else float(conv_clamp),
            cmap_dim=None if cmap_dim is None else int(cmap_dim),
            map_depth=int(map_depth),
        )
        self.c_dim, self.img_resolution, self.img_channels = c_dim, img_resolution, img_channels
        log2 = int(np.log2(img_resolution))
        self.block_resolutions = [2**i for i in range(log2, 2, -1)]
        channels = {r: max(1, min(cbase // r, cmax)) for r in self.block_resolutions + [4]}
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        if cmap_dim is None:
            cmap_dim = channels[4]
        if c_dim == 0:
            cmap_dim = 0
        self.blocks = nn.ModuleList()
        for res in self.block_resolutions:
            in_c = channels[res] if res < img_resolution else 0
            self.blocks.append(
                DiscriminatorBlock(
                    in_c,
                    channels[res],
                    channels[res // 2],
                    img_channels,
                    use_fp16=res >= fp16_resolution,
                    conv_clamp=conv_clamp,
                )
            )
        self.mapping = (
            MappingNetwork(0, c_dim, cmap_dim, num_ws=None, w_avg_beta=None, num_layers=map_depth)
            if c_dim > 0
            else None
        )
        self.b4 = DiscriminatorEpilogue(
            channels[4],
            cmap_dim,
            mbstd_group_size=mbstd_group_size,
            mbstd_num_channels=mbstd_num_channels,
            conv_clamp=conv_clamp,
        )

    def forward(self, img, c=None, update_emas=False):
        """img [N, C, R, R] in [-1, 1], c [N, c_dim] -> logits [N, 1]."""
        want = (self.img_channels, self.img_resolution, self.img_resolution)
        if img.ndim != 4 or tuple(img.shape[1:]) != want:
            raise CellsynthError(
                f"discriminator expects images [N, {', '.join(map(str, want))}], got {tuple(img.shape)}"
            )
        x = None
        for block in self.blocks:
            x = block(x, img)
        cmap = self.mapping(None, c) if self.mapping is not None else None
        return self.b4(x, cmap)
