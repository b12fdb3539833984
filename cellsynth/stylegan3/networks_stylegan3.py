"""StyleGAN3 synthesis network (alias-free generator, configs "t" and "r").

The image is built as a continuous signal: a Fourier-feature input (sinusoids of bounded
frequency, rotated/translated per sample by w and by a user transform) is passed through
``num_layers`` layers, each a modulated convolution followed by a filtered leaky ReLU
(upsample -> low-pass -> lrelu -> low-pass -> downsample). The low-pass cutoff grows
geometrically from ``first_cutoff`` to half the output resolution; the last ``num_critical``
layers are critically sampled; a margin of ``margin_size`` samples around the image absorbs
border effects. Config "t" uses 3x3 convolutions and separable Kaiser-windowed sinc filters;
config "r" uses 1x1 convolutions and radially symmetric (jinc) down filters, for rotation
equivariance.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.signal
import scipy.special
import torch
from torch import nn

from cellsynth.errors import CellsynthError
from cellsynth.stylegan3.networks_stylegan2 import (
    FullyConnectedLayer,
    check_resolution,
    layer_dtype,
    modulated_conv2d,
    synthesis_fused_modconv,
)
from cellsynth.stylegan3.ops import filtered_lrelu


def design_lowpass_filter(numtaps, cutoff, width, fs, radial=False):
    """Kaiser-windowed low-pass FIR filter.

    Args:
        numtaps: number of taps (1 = no filter, returns None).
        cutoff: cutoff frequency; width: transition band width; fs: sampling rate.
        radial: False = 1-D sinc filter (used separably); True = 2-D jinc filter with a
            separable Kaiser window (radially symmetric frequency response).

    Returns:
        float32 tensor [numtaps] or [numtaps, numtaps] summing to 1, or None.
    """
    if numtaps == 1:
        return None
    if not radial:
        f = scipy.signal.firwin(numtaps=numtaps, cutoff=cutoff, width=width, fs=fs)
        return torch.as_tensor(f, dtype=torch.float32)
    pos = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = np.hypot(pos[None, :], pos[:, None])
    safe = np.where(r == 0, 1.0, r)
    # jinc: J1(2 pi fc r) / (pi r), whose limit at r = 0 is fc
    f = np.where(r == 0, cutoff, scipy.special.j1(2 * cutoff * np.pi * safe) / (np.pi * safe))
    beta = scipy.signal.kaiser_beta(scipy.signal.kaiser_atten(numtaps, width / (fs / 2)))
    window = np.kaiser(numtaps, beta)
    f = f * np.outer(window, window)
    f = f / np.sum(f)
    return torch.as_tensor(f, dtype=torch.float32)


def make_transform(translate=(0.0, 0.0), rotate=0.0):
    """3x3 matrix that rotates by ``rotate`` degrees and translates by ``translate``."""
    m = np.eye(3)
    s = math.sin(rotate / 360.0 * 2 * math.pi)
    c = math.cos(rotate / 360.0 * 2 * math.pi)
    m[0] = [c, s, translate[0]]
    m[1] = [-s, c, translate[1]]
    return m


class SynthesisInput(nn.Module):
    """Fourier features: sin(2 pi (f . T(p) + phase)) for random frequencies inside a disc.

    ``transform`` (3x3 buffer) maps output coordinates to input coordinates; the per-sample
    affine layer (from w) adds a rotation and a translation. Coordinates are in units of the
    image: a translation of 1 / img_resolution moves the output by one pixel.
    """

    def __init__(self, w_dim, channels, size, sampling_rate, bandwidth):
        super().__init__()
        self.w_dim, self.channels = w_dim, channels
        self.size = int(size)
        self.sampling_rate, self.bandwidth = float(sampling_rate), float(bandwidth)
        freqs = torch.randn([channels, 2])
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs = freqs / (radii * radii.square().exp().pow(0.25))  # inside the unit disc
        freqs = freqs * bandwidth
        phases = torch.rand([channels]) - 0.5
        self.weight = nn.Parameter(torch.randn([channels, channels]))
        self.affine = FullyConnectedLayer(w_dim, 4, weight_init=0, bias_init=[1, 0, 0, 0])
        self.register_buffer("transform", torch.eye(3, 3))
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", phases)

    def forward(self, w):
        n = w.shape[0]
        t = self.affine(w)  # [N, 4]: rotation (cos, sin) and translation (x, y)
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        eye = torch.eye(3, device=w.device).unsqueeze(0).repeat([n, 1, 1])
        m_r = eye.clone()
        m_r[:, 0, 0], m_r[:, 0, 1] = t[:, 0], -t[:, 1]
        m_r[:, 1, 0], m_r[:, 1, 1] = t[:, 1], t[:, 0]
        m_t = eye.clone()
        m_t[:, 0, 2], m_t[:, 1, 2] = -t[:, 2], -t[:, 3]
        transforms = m_r @ m_t @ self.transform.unsqueeze(0)  # [N, 3, 3]
        phases = self.phases.unsqueeze(0) + (
            self.freqs.unsqueeze(0) @ transforms[:, :2, 2:]
        ).squeeze(2)
        freqs = self.freqs.unsqueeze(0) @ transforms[:, :2, :2]  # [N, C, 2]
        # fade out frequencies that the transform pushed beyond the band limit
        amplitudes = (
            1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)
        ).clamp(0, 1)
        coords = torch.arange(self.size, device=w.device, dtype=torch.float32) + 0.5 - self.size / 2
        coords = coords / self.sampling_rate
        gy, gx = torch.meshgrid(coords, coords, indexing="ij")
        grid = torch.stack([gx, gy], dim=-1).reshape(1, -1, 2)  # [1, S*S, 2] as (x, y)
        x = grid @ freqs.transpose(1, 2) + phases.unsqueeze(1)  # [N, S*S, C]
        x = torch.sin(x * (2 * math.pi)) * amplitudes.unsqueeze(1)
        x = x @ (self.weight / math.sqrt(self.channels)).t()
        return x.reshape(n, self.size, self.size, self.channels).permute(0, 3, 1, 2)

    def extra_repr(self):
        return f"channels={self.channels}, size={self.size}, sampling_rate={self.sampling_rate:g}, bandwidth={self.bandwidth:g}"


class SynthesisLayer3(nn.Module):
    """Modulated conv + filtered leaky ReLU between two sampling grids (or the toRGB layer)."""

    def __init__(
        self,
        w_dim,
        is_torgb,
        is_critically_sampled,
        use_fp16,
        in_channels,
        out_channels,
        in_size,
        out_size,
        in_sampling_rate,
        out_sampling_rate,
        in_cutoff,
        out_cutoff,
        in_half_width,
        out_half_width,
        conv_kernel=3,
        filter_size=6,
        lrelu_upsampling=2,
        use_radial_filters=False,
        conv_clamp=256,
        magnitude_ema_beta=0.999,
    ):
        super().__init__()
        self.is_torgb, self.use_fp16 = is_torgb, use_fp16
        self.in_channels, self.out_channels = in_channels, out_channels
        self.in_size, self.out_size = int(in_size), int(out_size)
        self.conv_clamp, self.magnitude_ema_beta = conv_clamp, magnitude_ema_beta
        self.conv_kernel = 1 if is_torgb else conv_kernel
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(
            torch.randn([out_channels, in_channels, self.conv_kernel, self.conv_kernel])
        )
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer("magnitude_ema", torch.ones([]))

        # Intermediate sampling rate: 2x the finer grid (1x for toRGB, which is linear).
        tmp_rate = max(in_sampling_rate, out_sampling_rate) * (1 if is_torgb else lrelu_upsampling)
        self.up_factor = int(round(tmp_rate / in_sampling_rate))
        self.down_factor = int(round(tmp_rate / out_sampling_rate))
        up_taps = filter_size * self.up_factor if self.up_factor > 1 and not is_torgb else 1
        down_taps = filter_size * self.down_factor if self.down_factor > 1 and not is_torgb else 1
        self.down_radial = bool(use_radial_filters and not is_critically_sampled)
        self.register_buffer(
            "up_filter", design_lowpass_filter(up_taps, in_cutoff, in_half_width * 2, tmp_rate)
        )
        self.register_buffer(
            "down_filter",
            design_lowpass_filter(
                down_taps, out_cutoff, out_half_width * 2, tmp_rate, radial=self.down_radial
            ),
        )
        # Padding so that the output has out_size samples, centred (half-sample convention).
        pad_total = (self.out_size - 1) * self.down_factor + 1
        pad_total -= (self.in_size + self.conv_kernel - 1) * self.up_factor
        pad_total += up_taps + down_taps - 2
        pad_lo = (pad_total + self.up_factor) // 2
        pad_hi = pad_total - pad_lo
        self.padding = [int(pad_lo), int(pad_hi), int(pad_lo), int(pad_hi)]
        self.gain = 1.0 if is_torgb else math.sqrt(2)
        self.slope = 1.0 if is_torgb else 0.2

    def forward(self, x, w, update_emas=False, fused_modconv=True):
        if update_emas:
            mag = x.detach().to(torch.float32).square().mean()
            self.magnitude_ema.copy_(mag.lerp(self.magnitude_ema, self.magnitude_ema_beta))
        input_gain = self.magnitude_ema.rsqrt()
        styles = self.affine(w)
        if self.is_torgb:
            styles = styles * (1 / math.sqrt(self.in_channels * self.conv_kernel**2))
        dtype = layer_dtype(self, x)
        x = modulated_conv2d(
            x.to(dtype),
            self.weight,
            styles,
            padding=self.conv_kernel - 1,
            demodulate=not self.is_torgb,
            input_gain=input_gain,
            fused=fused_modconv,
        )
        return filtered_lrelu(x, b=self.bias.to(x.dtype), **self.filtered_lrelu_kwargs())

    def filtered_lrelu_kwargs(self) -> dict:
        """The keyword arguments of this layer's :func:`filtered_lrelu` besides ``x`` and
        ``b``: its up/down filters and factors, padding, gain, slope and clamp."""
        return dict(
            fu=self.up_filter,
            fd=self.down_filter,
            up=self.up_factor,
            down=self.down_factor,
            padding=self.padding,
            gain=self.gain,
            slope=self.slope,
            clamp=self.conv_clamp,
        )

    def extra_repr(self):
        return (
            f"in={self.in_channels}x{self.in_size}, out={self.out_channels}x{self.out_size}, "
            f"up={self.up_factor}, down={self.down_factor}, torgb={self.is_torgb}, "
            f"radial={self.down_radial}"
        )


class SynthesisNetwork3(nn.Module):
    """StyleGAN3 synthesis network: ws [N, num_layers + 2, w_dim] -> images [N, C, R, R].

    Args:
        w_dim, img_resolution, img_channels: latent size and output image shape.
        channel_base, channel_max: channels = min(channel_base / 2 / cutoff, channel_max).
        num_layers: layers after the input (14); num_critical: critically sampled last layers.
        first_cutoff, first_stopband, last_stopband_rel: the filter schedule.
        margin_size: extra samples around the image in the intermediate layers.
        output_scale: scale of the final image.
        num_fp16_res: layers whose sampling rate * 2**num_fp16_res > R run in fp16 (CUDA only).
        conv_kernel, use_radial_filters, conv_clamp, filter_size, lrelu_upsampling: per layer.
        fused_modconv: grouped per-sample conv (True) or shared conv with activation scaling
            (False); None = fused for CUDA inference, shared when training and on the CPU.
    """

    def __init__(
        self,
        w_dim,
        img_resolution,
        img_channels,
        channel_base=32768,
        channel_max=512,
        num_layers=14,
        num_critical=2,
        first_cutoff=2,
        first_stopband=2**2.1,
        last_stopband_rel=2**0.3,
        margin_size=10,
        output_scale=0.25,
        num_fp16_res=0,
        fused_modconv=None,
        **layer_kwargs,
    ):
        super().__init__()
        check_resolution(img_resolution, img_channels)
        if num_layers <= num_critical:
            raise CellsynthError(
                f"num_layers ({num_layers}) must exceed num_critical ({num_critical})"
            )
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.num_ws = num_layers + 2
        self.num_layers, self.num_critical = num_layers, num_critical
        self.output_scale, self.fused_modconv = output_scale, fused_modconv

        last_cutoff = img_resolution / 2
        last_stopband = last_cutoff * last_stopband_rel
        exponents = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
        cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
        stopbands = first_stopband * (last_stopband / first_stopband) ** exponents
        sampling_rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, img_resolution))))
        half_widths = np.maximum(stopbands, sampling_rates / 2) - cutoffs
        sizes = sampling_rates + margin_size * 2
        sizes[-2:] = img_resolution
        channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
        channels = np.maximum(channels, 1)
        channels[-1] = img_channels
        self.schedule = dict(
            cutoffs=cutoffs.tolist(),
            stopbands=stopbands.tolist(),
            sampling_rates=sampling_rates.tolist(),
            half_widths=half_widths.tolist(),
            sizes=sizes.tolist(),
            channels=channels.tolist(),
        )

        self.input = SynthesisInput(
            w_dim,
            channels=int(channels[0]),
            size=int(sizes[0]),
            sampling_rate=sampling_rates[0],
            bandwidth=cutoffs[0],
        )
        self.layers = nn.ModuleList()
        for idx in range(num_layers + 1):
            prev = max(idx - 1, 0)
            self.layers.append(
                SynthesisLayer3(
                    w_dim,
                    is_torgb=idx == num_layers,
                    is_critically_sampled=idx >= num_layers - num_critical,
                    use_fp16=bool(sampling_rates[idx] * (2**num_fp16_res) > img_resolution),
                    in_channels=int(channels[prev]),
                    out_channels=int(channels[idx]),
                    in_size=int(sizes[prev]),
                    out_size=int(sizes[idx]),
                    in_sampling_rate=int(sampling_rates[prev]),
                    out_sampling_rate=int(sampling_rates[idx]),
                    in_cutoff=cutoffs[prev],
                    out_cutoff=cutoffs[idx],
                    in_half_width=half_widths[prev],
                    out_half_width=half_widths[idx],
                    **layer_kwargs,
                )
            )

    def forward(self, ws, noise_mode="const", update_emas=False):
        """ws [N, num_ws, w_dim] -> images [N, img_channels, R, R] (float32)."""
        fused = synthesis_fused_modconv(self, ws, noise_mode)
        ws = ws.to(torch.float32).unbind(dim=1)
        x = self.input(ws[0])
        for layer, w in zip(self.layers, ws[1:]):
            x = layer(x, w, update_emas=update_emas, fused_modconv=fused)
        if self.output_scale != 1:
            x = x * self.output_scale
        return x.to(torch.float32)

    def set_input_transform(self, translate=(0.0, 0.0), rotate=0.0):
        """Move the output image by ``translate`` (fractions of its size) and rotate it.

        Args:
            translate: (x, y); (1 / img_resolution, 0) shifts the image one pixel right.
            rotate: rotation angle in degrees.
        """
        m = np.linalg.inv(make_transform(translate, rotate))
        self.input.transform.copy_(torch.as_tensor(m, dtype=torch.float32))
