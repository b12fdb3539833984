"""Mixed precision on the CPU (bf16): detection, the switches, the compiled kernels' bf16 path,
and whole StyleGAN G and D steps in bf16 against float32.

PyTorch computes bf16 on every CPU (emulated where the CPU lacks it), so the numerical tests run
everywhere; the tests of what ``auto`` picks skip where the CPU has no native bf16.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import (
    make_masks_zip,
    np_upfirdn,
    random_flrelu_cases,
    random_upfirdn_cases,
    sg3_options,
)

from cellsynth import precision as prec
from cellsynth.errors import CellsynthError
from cellsynth.stylegan3.networks import build_networks
from cellsynth.stylegan3.networks_stylegan2 import layer_dtype, set_precision
from cellsynth.stylegan3.ops import cpu_kernels, filtered_lrelu, upfirdn2d

needs_cc = pytest.mark.skipif(cpu_kernels._compiler() is None, reason="no C compiler")
native_bf16 = pytest.mark.skipif(
    not prec.cpu_has_bf16(), reason="this CPU has no native bf16 (avx512_bf16 / amx_bf16)"
)
HALF_ULP = 2.0**-8  # bf16 keeps 8 significant bits: rounding to nearest errs by <= 2^-8 |v|


# ---- detection and the switches -------------------------------------------------------------
def test_detection_and_resolution(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(prec, "cpu_has_bf16", lambda: False)
    assert prec.low_precision_dtype(cpu) is None
    assert prec.resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(prec, "cpu_has_bf16", lambda: True)
    assert prec.low_precision_dtype(cpu) is torch.bfloat16
    assert prec.low_precision_dtype(cpu, enabled=False) is None
    assert prec.resolve_precision("auto", cpu) == "bf16"
    assert "bf16" in prec.cpu_kind() or "no bf16" in prec.cpu_kind()


def test_training_precision_follows_cpu_and_fp32(monkeypatch, tmp_path):
    from cellsynth.stylegan3.training_loop import training_precision

    data = make_masks_zip(tmp_path / "m.zip")
    monkeypatch.setattr(prec, "cpu_has_bf16", lambda: True)
    opts = sg3_options(data, tmp_path, cfg="stylegan2")
    assert opts["precision"] == "bf16" and opts["cpu"]
    assert sg3_options(data, tmp_path, cfg="stylegan2", fp32=True)["precision"] == "fp32"
    monkeypatch.setattr(prec, "cpu_has_bf16", lambda: False)
    assert training_precision({"device": "cpu"}) == "fp32"


def test_layer_dtypes_follow_the_mode():
    G, D = build_networks("stylegan2", 32, 3, cbase=256, cmax=16, z_dim=8, w_dim=8, seed=0)
    x = torch.zeros(1)
    blocks = list(G.synthesis.blocks)
    hi = [b for b in blocks if b.use_fp16]
    lo = [b for b in blocks if not b.use_fp16]
    assert hi and lo  # num_fp16_res=4 at 32 px: 8..32 are mixed, 4 stays float32
    assert all(layer_dtype(b, x) is torch.float32 for b in blocks)  # default on the CPU
    set_precision(G, "mixed")
    assert all(layer_dtype(b, x) is torch.bfloat16 for b in hi)
    assert all(layer_dtype(b, x) is torch.float32 for b in lo)
    set_precision(G, "fp32")
    assert all(layer_dtype(b, x) is torch.float32 for b in blocks)
    with pytest.raises(CellsynthError, match="unknown precision"):
        set_precision(G, "half")
    # a state dict carries no precision: the same weights load whatever the mode
    set_precision(G, "mixed")
    assert all("precision" not in k for k in G.state_dict())


# ---- the compiled kernels' bf16 path --------------------------------------------------------
@needs_cc
def test_upfirdn2d_bf16_kernel_rounds_once_against_float64_loops():
    assert cpu_kernels.supports(torch.zeros(1, 1, 2, 2, dtype=torch.bfloat16))
    gen = torch.Generator().manual_seed(4)
    for f, up, down, pad, h, w, flip, gain in random_upfirdn_cases(30, seed=5):
        x = torch.randn(2, 19, h, w, generator=gen).bfloat16()
        y = upfirdn2d.upfirdn2d(
            x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain, impl="cpu"
        )
        assert y.dtype == torch.bfloat16
        want = np_upfirdn(x.double().numpy(), f.numpy(), up, down, pad, flip, gain)
        got = y.double().numpy()
        assert got.shape == want.shape
        # bf16 input is exact, sums in float32, one rounding to nearest per stored value; a
        # separable filter stores once between its W and H passes, and that rounding (at most
        # HALF_ULP of each intermediate) is filtered by the H pass: bounded by the same filter
        # with absolute taps applied to |x|
        bound = HALF_ULP * np.abs(want) + 1e-5 * np.abs(want).max()
        if f.ndim == 1:
            absf = np.abs(f.numpy())
            bound += HALF_ULP * np_upfirdn(
                np.abs(x.double().numpy()), absf, up, down, pad, flip, gain
            )
        assert np.all(np.abs(got - want) <= bound)


@needs_cc
def test_bf16_store_rounds_to_nearest_even_and_keeps_nan_inf():
    # taps (0.5, 0.5) on bf16 values: the float32 sums are exact, so the only rounding is the
    # store, which must equal torch's own float32 -> bf16 conversion (nearest, ties to even)
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(1, 40, 1, 64, generator=gen) * 3).bfloat16()
    x[0, 0, 0, 5] = float("nan")
    x[0, 1, 0, 9] = float("inf")
    f = torch.tensor([0.5, 0.5])
    y = upfirdn2d.upfirdn2d(x, f[None, :], impl="cpu")  # 2-D taps [1, 2]: a W pass only
    exact = 0.5 * x[..., :-1].float() + 0.5 * x[..., 1:].float()
    want = exact.bfloat16()
    same = torch.isnan(y) == torch.isnan(want)
    assert bool(same.all())
    mask = ~torch.isnan(want)
    assert torch.equal(y[mask], want[mask])
    assert bool(torch.isinf(y[0, 1, 0, 8]))
    # and an identity pass gives back the very same bits
    one = torch.ones(1, 1)
    assert torch.equal(
        upfirdn2d.upfirdn2d(x, one, impl="cpu").view(torch.int16), x.view(torch.int16)
    )


@needs_cc
def test_filtered_lrelu_bf16_against_float32_reference_with_grads():
    # (the double backward of R1 is checked through the whole discriminator step below)
    gen = torch.Generator().manual_seed(8)
    for fu, fd, up, down, pad, h, w, gain, slope, clamp, flip in random_flrelu_cases(12, seed=3):
        x32 = torch.randn(2, 18, h, w, generator=gen).bfloat16().float()
        b32 = torch.randn(18, generator=gen).bfloat16().float()
        args = (fu, fd, None, up, down, pad, gain, slope, clamp, flip)
        xb = x32.bfloat16().requires_grad_(True)
        xr = x32.clone().requires_grad_(True)
        yb = filtered_lrelu(xb, fu, fd, b32.bfloat16(), *args[3:], impl="cpu")
        yr = filtered_lrelu(xr, fu, fd, b32, *args[3:], impl="ref")
        assert yb.dtype == torch.bfloat16 and yb.shape == yr.shape
        # two roundings (after the up pass and at the end) plus the lrelu of a rounded value
        err = (yb.float() - yr).abs().max() / yr.abs().max().clamp_min(1e-6)
        assert err < 4 * HALF_ULP, err
        dy = torch.randn(yr.shape, generator=gen)
        (gb,) = torch.autograd.grad(yb, xb, dy.bfloat16())
        (gr,) = torch.autograd.grad(yr, xr, dy)
        assert gb.dtype == torch.bfloat16
        # elementwise, a pre-activation that rounds across 0 or across the clamp bound takes
        # the other slope (measured up to 10 % of the largest gradient on single elements), so
        # the gradient is compared as a whole: measured <= 2.5 %
        gerr = (gb.float() - gr).norm() / gr.norm()
        assert gerr < 0.05, gerr


# ---- whole steps -----------------------------------------------------------------------------
def _grads(trainer, phase, real, z):
    module = trainer.G if phase.startswith("G") else trainer.D
    for p in module.parameters():
        p.grad = None
    module.requires_grad_(True)
    torch.manual_seed(123)
    trainer.loss.accumulate_gradients(phase, real, None, z, None, gain=1, cur_nimg=0)
    module.requires_grad_(False)
    return torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
            for p in module.parameters()
        ]
    )


@pytest.mark.parametrize("cfg", ["stylegan2", "stylegan3-t"])
def test_g_and_d_steps_in_bf16_track_float32(tmp_path, cfg):
    """Tolerances: bf16 keeps ~3 significant digits and gradients pass through every mixed
    layer. Measured at these tiny sizes (relative norm of the difference, cosine): Gmain 0.077 /
    0.997, Dmain 0.04-0.06 / 0.998, Dreg (R1, double backward) 0.03 / 0.9996. Bounds: 0.2 and
    0.99."""
    from cellsynth.stylegan3.training_loop import Trainer

    data = make_masks_zip(tmp_path / "m.zip")
    trainers = {}
    for mode in ("fp32", "bf16"):
        opts = sg3_options(data, tmp_path, cfg=cfg, aug="noaug", fp32=mode == "fp32")
        opts["precision"] = mode  # bf16 runs (emulated) on any CPU
        trainers[mode] = Trainer(opts)
    t32, t16 = trainers["fp32"], trainers["bf16"]
    assert t16.precision == "bf16" and t32.precision == "fp32"
    for a, b in zip(t32.G.parameters(), t16.G.parameters()):
        assert torch.equal(a, b)  # same seed, same weights
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(4, 3, 32, 32, generator=gen) * 2 - 1
    z = torch.randn(4, t32.G.z_dim, generator=gen)
    with torch.no_grad():
        i32 = t32.G(z, None, noise_mode="const")
        i16 = t16.G(z, None, noise_mode="const")
    assert i16.dtype == torch.float32 and torch.isfinite(i16).all()
    assert float((i16 - i32).norm() / i32.norm()) < 0.05
    for phase in ("Gmain", "Dmain", "Dreg"):
        g32 = _grads(t32, phase, real, z)
        g16 = _grads(t16, phase, real, z)
        assert torch.isfinite(g16).all(), phase
        rel = float((g16 - g32).norm() / g32.norm())
        cos = float(torch.nn.functional.cosine_similarity(g16, g32, dim=0))
        assert rel < 0.2 and cos > 0.99, (phase, rel, cos)


def test_bf16_training_is_deterministic_and_resumes_from_fp32(tmp_path):
    from cellsynth.stylegan3.training_loop import Trainer

    data = make_masks_zip(tmp_path / "m.zip")
    runs = []
    for _ in range(2):
        opts = sg3_options(data, tmp_path, cfg="stylegan2")
        opts["precision"] = "bf16"
        tr = Trainer(opts)
        for _ in range(3):
            tr.step()
        runs.append([p.detach().clone() for p in tr.G.parameters()])
        assert all(torch.isfinite(p).all() for p in tr.G.parameters())
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    # a float32 snapshot resumes in bf16 (precision decides the compute type, never the weights)
    snap = tr.save_snapshot(tmp_path / "s.pt")
    opts = sg3_options(data, tmp_path, cfg="stylegan2", fp32=True, resume=str(snap))
    tr32 = Trainer(opts)
    for a, b in zip(tr.G.parameters(), tr32.G.parameters()):
        assert torch.equal(a, b)


def test_generate_fp32_switch(tmp_path, monkeypatch):
    from conftest import sg3_snapshot

    from cellsynth.stylegan3.generate import MaskGenerator

    snap = sg3_snapshot(tmp_path, "stylegan2")
    monkeypatch.setattr(prec, "cpu_has_bf16", lambda: True)
    mixed = MaskGenerator.load(snap)
    plain = MaskGenerator.load(snap, fp32=True)
    assert mixed.config["precision"] == "bf16" and plain.config["precision"] == "fp32"
    a = mixed.generate([0, 1], batch=2)
    b = plain.generate([0, 1], batch=2)
    assert np.isfinite(a).all() and a.shape == b.shape
    assert np.abs(a - b).max() < 0.1  # same network, the top layers rounded to bf16
    assert np.array_equal(a, MaskGenerator.load(snap).generate([0, 1], batch=2))
    monkeypatch.setattr(prec, "cpu_has_bf16", lambda: False)
    assert MaskGenerator.load(snap).config["precision"] == "fp32"


@native_bf16
def test_auto_picks_bf16_on_this_cpu(tmp_path):
    data = make_masks_zip(tmp_path / "m.zip")
    assert sg3_options(data, tmp_path, cfg="stylegan2")["precision"] == "bf16"


# ---- Pix2PixHD --fp16 ------------------------------------------------------------------------
def test_pix2pixhd_fp16_means_bf16_on_a_bf16_cpu(monkeypatch):
    from cellsynth.pix2pixhd.options import Options
    from cellsynth.pix2pixhd.training_loop import Pix2PixHDModel

    monkeypatch.setattr(prec, "cpu_has_bf16", lambda: True)
    opt = Options(ngf=4, ndf=4, n_blocks_global=1, label_nc=2, output_nc=1, no_vgg_loss=True)
    opt.fp16 = True
    opt = opt.check()
    torch.manual_seed(0)
    model = Pix2PixHDModel(opt, torch.device("cpu"))
    assert model.amp_dtype is torch.bfloat16 and not model.scaler.is_enabled()
    inst = torch.zeros(1, 32, 32, dtype=torch.long)
    inst[:, 8:20, 8:20] = 1
    batch = {"label": (inst > 0).long(), "inst": inst, "image": torch.rand(1, 1, 32, 32) * 2 - 1}
    seen = []
    hook = model.G.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    losses, fake = model.step(batch)
    hook.remove()
    assert seen == [torch.bfloat16]  # the generator ran under bf16 autocast
    assert all(np.isfinite(v) for v in losses.values())
    assert all(p.dtype == torch.float32 for p in model.G.parameters())  # weights stay fp32
