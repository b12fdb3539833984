"""StyleGAN3 ops: reference and fast CPU implementations against slow, obvious numpy
compositions (explicit zero insertion, explicit tap loops), gradients and double backward."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from conftest import np_act, np_upfirdn, rand_filter, random_flrelu_cases, random_upfirdn_cases

from cellsynth.errors import CellsynthError
from cellsynth.stylegan3.ops import (
    ACTIVATIONS,
    bias_act,
    conv2d_resample,
    filtered_lrelu,
    resolve_impl,
    upfirdn2d,
)
from cellsynth.stylegan3.ops.filtered_lrelu import output_size

IMPLS = ["ref", "cpu"]


# ------------------------------------------------------------------------------------------------
# slow references (numpy, float64)


def np_conv(x, w, groups=1):
    """Valid cross-correlation with explicit loops over taps and groups."""
    n, cin, h, wd = x.shape
    cout, cpg, kh, kw = w.shape
    opg = cout // groups
    out = np.zeros((n, cout, h - kh + 1, wd - kw + 1))
    for g in range(groups):
        xs = x[:, g * cpg : (g + 1) * cpg]
        for o in range(opg):
            for a in range(kh):
                for b in range(kw):
                    patch = xs[:, :, a : a + out.shape[2], b : b + out.shape[3]]
                    out[:, g * opg + o] += np.einsum("nchw,c->nhw", patch, w[g * opg + o, :, a, b])
    return out


# ------------------------------------------------------------------------------------------------
# impl switch


def test_resolve_impl(monkeypatch):
    x = torch.zeros(1)
    monkeypatch.delenv("CELLSYNTH_OPS_IMPL", raising=False)
    assert resolve_impl("auto", x) == "cpu"
    assert resolve_impl(None, x) == "cpu"
    assert resolve_impl("ref", x) == "ref"
    monkeypatch.setenv("CELLSYNTH_OPS_IMPL", "ref")
    assert resolve_impl("auto", x) == "ref"
    assert resolve_impl("cpu", x) == "cpu"
    monkeypatch.setenv("CELLSYNTH_OPS_IMPL", "fastest")
    with pytest.raises(CellsynthError, match="CELLSYNTH_OPS_IMPL"):
        resolve_impl("auto", x)
    monkeypatch.delenv("CELLSYNTH_OPS_IMPL")
    with pytest.raises(CellsynthError, match="needs CUDA tensors"):
        resolve_impl("cuda", x)
    with pytest.raises(CellsynthError, match="unknown ops impl"):
        bias_act(x, impl="gpu")


# ------------------------------------------------------------------------------------------------
# bias_act


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_bias_act_matches_formula(act, impl):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 5, 4, 2)) * 2
    b = rng.normal(size=5)
    spec = ACTIVATIONS[act]
    for alpha, gain, clamp in [(None, None, None), (0.3, 1.7, 0.8)]:
        y = bias_act(
            torch.as_tensor(x),
            torch.as_tensor(b),
            act=act,
            alpha=alpha,
            gain=gain,
            clamp=clamp,
            impl=impl,
        )
        a = spec.def_alpha if alpha is None else alpha
        g = spec.def_gain if gain is None else gain
        want = np_act(x + b.reshape(1, 5, 1, 1), act, a, g, clamp)
        np.testing.assert_allclose(y.numpy(), want, rtol=1e-10, atol=1e-10)
    # bias along another dim, no bias
    y = bias_act(torch.as_tensor(x), torch.as_tensor(rng.normal(size=4)), dim=2, act=act, impl=impl)
    assert y.shape == x.shape
    y = bias_act(torch.as_tensor(x), act=act, impl=impl)
    np.testing.assert_allclose(
        y.numpy(), np_act(x, act, spec.def_alpha, spec.def_gain, None), rtol=1e-10
    )


def test_bias_act_defaults():
    assert ACTIVATIONS["lrelu"].def_alpha == 0.2
    for act in ("relu", "lrelu", "swish"):
        assert ACTIVATIONS[act].def_gain == pytest.approx(math.sqrt(2))
    for act in ("linear", "tanh", "sigmoid", "elu", "selu", "softplus"):
        assert ACTIVATIONS[act].def_gain == 1


@pytest.mark.parametrize("impl", IMPLS)
def test_bias_act_grad_and_double_grad(impl):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, generator=gen, requires_grad=True)
    for act in ("lrelu", "tanh", "swish", "softplus"):
        fn = lambda x, b, act=act: bias_act(x, b, act=act, clamp=1.5, impl=impl)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, b))
        assert torch.autograd.gradgradcheck(fn, (x, b))


def test_bias_act_errors():
    x = torch.zeros(2, 3, 4)
    with pytest.raises(CellsynthError, match="activation"):
        bias_act(x, act="gelu2")
    with pytest.raises(CellsynthError, match="bias"):
        bias_act(x, torch.zeros(4), dim=1)
    with pytest.raises(CellsynthError, match="Tensor"):
        bias_act(np.zeros(3))


# ------------------------------------------------------------------------------------------------
# upfirdn2d


@pytest.mark.parametrize("impl", IMPLS)
def test_upfirdn2d_against_loops(impl):
    gen = torch.Generator().manual_seed(0)
    for f, up, down, pad, h, w, flip, gain in random_upfirdn_cases(60, seed=1):
        x = torch.randn(2, 3, h, w, generator=gen)
        y = upfirdn2d.upfirdn2d(
            x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain, impl=impl
        )
        want = np_upfirdn(x.numpy(), f.numpy(), up, down, pad, flip, gain)
        assert y.shape == want.shape, (f.shape, up, down, pad)
        assert y.dtype == torch.float32
        np.testing.assert_allclose(y.numpy(), want, rtol=1e-4, atol=1e-5)


def test_upfirdn2d_fast_matches_ref_forward_backward():
    gen = torch.Generator().manual_seed(1)
    for f, up, down, pad, h, w, flip, gain in random_upfirdn_cases(40, seed=2):
        x = torch.randn(2, 2, h, w, generator=gen, requires_grad=True)
        kw = dict(up=up, down=down, padding=pad, flip_filter=flip, gain=gain)
        y_ref = upfirdn2d.upfirdn2d(x, f, impl="ref", **kw)
        y_cpu = upfirdn2d.upfirdn2d(x, f, impl="cpu", **kw)
        torch.testing.assert_close(y_cpu, y_ref, rtol=1e-5, atol=1e-5)
        dy = torch.randn(y_ref.shape, generator=gen)
        (g_ref,) = torch.autograd.grad(y_ref, x, dy, create_graph=True)
        (g_cpu,) = torch.autograd.grad(y_cpu, x, dy, create_graph=True)
        torch.testing.assert_close(g_cpu, g_ref, rtol=1e-5, atol=1e-5)
        # double backward (R1): gradient of |grad|^2 with respect to x is zero for a linear op,
        # so use the gradient with respect to dy instead
        dy.requires_grad_(True)
        (g_ref,) = torch.autograd.grad(y_ref, x, dy, create_graph=True)
        (g_cpu,) = torch.autograd.grad(y_cpu, x, dy, create_graph=True)
        (gg_ref,) = torch.autograd.grad(g_ref.square().sum(), dy)
        (gg_cpu,) = torch.autograd.grad(g_cpu.square().sum(), dy)
        torch.testing.assert_close(gg_cpu, gg_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_upfirdn2d_gradcheck(impl):
    gen = torch.Generator().manual_seed(2)
    for f, up, down, pad, h, w, flip, gain in random_upfirdn_cases(6, seed=3):
        x = torch.randn(1, 2, h, w, dtype=torch.float64, generator=gen, requires_grad=True)

        def fn(x, f=f, up=up, down=down, pad=pad, flip=flip, gain=gain):
            y = upfirdn2d.upfirdn2d(
                x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain, impl=impl
            )
            return y * y  # nonlinear so the double backward is not trivially zero

        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("impl", IMPLS)
def test_resampling_helpers(impl):
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4) and float(f.sum()) == pytest.approx(1)
    x = torch.full((1, 2, 8, 8), 3.0)
    up = upfirdn2d.upsample2d(x, f, impl=impl)
    assert up.shape == (1, 2, 16, 16)
    torch.testing.assert_close(up[:, :, 2:-2, 2:-2], torch.full((1, 2, 12, 12), 3.0))  # mean kept
    down = upfirdn2d.downsample2d(x, f, impl=impl)
    assert down.shape == (1, 2, 4, 4)
    torch.testing.assert_close(down[:, :, 1:-1, 1:-1], torch.full((1, 2, 2, 2), 3.0))
    filt = upfirdn2d.filter2d(x, f, impl=impl)
    assert filt.shape == x.shape
    torch.testing.assert_close(filt[:, :, 2:-2, 2:-2], x[:, :, 2:-2, 2:-2])
    # odd sizes and separable long filters
    f12 = upfirdn2d.setup_filter(np.hanning(14)[1:-1])
    assert f12.ndim == 1 and float(f12.sum()) == pytest.approx(1)
    y = torch.randn(1, 1, 7, 9)
    assert upfirdn2d.upsample2d(y, f12, up=4, impl=impl).shape == (1, 1, 28, 36)
    assert upfirdn2d.downsample2d(y, f12, down=2, impl=impl).shape == (1, 1, 3, 4)
    # an impulse through upfirdn2d reproduces the (true-convolution) filter
    imp = torch.zeros(1, 1, 5, 5)
    imp[0, 0, 2, 2] = 1
    g = upfirdn2d.setup_filter(torch.arange(1.0, 7.0).reshape(2, 3), normalize=False)
    out = upfirdn2d.upfirdn2d(imp, g, impl=impl)
    assert out.shape == (1, 1, 4, 3)
    torch.testing.assert_close(out[0, 0, 1:3, 0:3], g)
    assert float(out.abs().sum()) == pytest.approx(float(g.sum()))


def test_setup_filter_options():
    f = upfirdn2d.setup_filter([1, 2, 3], normalize=False, flip_filter=True, gain=4)
    want = np.outer([3, 2, 1], [3, 2, 1]) * 4.0
    np.testing.assert_allclose(f.numpy(), want)
    f = upfirdn2d.setup_filter(list(range(1, 9)), gain=4)
    assert f.ndim == 1 and float(f.sum()) == pytest.approx(2)  # sqrt(gain) per pass
    assert upfirdn2d.setup_filter(None).shape == (1, 1)
    with pytest.raises(CellsynthError, match="sum to zero"):
        upfirdn2d.setup_filter([1, -1])
    with pytest.raises(CellsynthError, match="dimensions"):
        upfirdn2d.setup_filter(np.zeros((2, 2, 2)))


def test_upfirdn2d_errors():
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    with pytest.raises(CellsynthError, match="4-D"):
        upfirdn2d.upfirdn2d(torch.zeros(3, 4, 4), f)
    with pytest.raises(CellsynthError, match="empty"):
        upfirdn2d.upfirdn2d(torch.zeros(1, 1, 2, 2), f)
    with pytest.raises(CellsynthError, match="factor"):
        upfirdn2d.upfirdn2d(torch.zeros(1, 1, 8, 8), f, up=0)
    with pytest.raises(CellsynthError, match="padding"):
        upfirdn2d.upfirdn2d(torch.zeros(1, 1, 8, 8), f, padding=[1, 2, 3])
    with pytest.raises(CellsynthError, match="float32"):
        upfirdn2d.upfirdn2d(torch.zeros(1, 1, 8, 8), f.double())


# ------------------------------------------------------------------------------------------------
# filtered_lrelu


@pytest.mark.parametrize("impl", IMPLS)
def test_filtered_lrelu_against_composition(impl):
    gen = torch.Generator().manual_seed(3)
    for fu, fd, up, down, pad, h, w, gain, slope, clamp, flip in random_flrelu_cases(25, seed=4):
        x = torch.randn(2, 3, h, w, generator=gen)
        b = torch.randn(3, generator=gen)
        y = filtered_lrelu(x, fu, fd, b, up, down, pad, gain, slope, clamp, flip, impl=impl)
        v = np_upfirdn(
            x.numpy() + b.numpy().reshape(1, 3, 1, 1), fu.numpy(), up, 1, pad, flip, up**2
        )
        v = np_act(v, "lrelu", slope, gain, clamp)
        want = np_upfirdn(v, fd.numpy(), 1, down, [0, 0, 0, 0], flip, 1)
        assert y.shape == want.shape == (2, 3, *output_size((h, w), fu, fd, up, down, pad))
        np.testing.assert_allclose(y.numpy(), want, rtol=1e-4, atol=1e-4)


def test_filtered_lrelu_fast_matches_ref_grads():
    gen = torch.Generator().manual_seed(4)
    for fu, fd, up, down, pad, h, w, gain, slope, clamp, flip in random_flrelu_cases(15, seed=5):
        x = torch.randn(2, 3, h, w, generator=gen, requires_grad=True)
        b = torch.randn(3, generator=gen, requires_grad=True)
        outs = {}
        for impl in IMPLS:
            y = filtered_lrelu(x, fu, fd, b, up, down, pad, gain, slope, clamp, flip, impl=impl)
            gx, gb = torch.autograd.grad(y.square().sum(), (x, b), create_graph=True)
            (ggx,) = torch.autograd.grad(
                gx.square().sum() + gb.sum(), x
            )  # R1-style double backward
            outs[impl] = (y, gx, gb, ggx)
        for a, c in zip(outs["ref"], outs["cpu"]):
            torch.testing.assert_close(
                c, a, rtol=1e-4, atol=1e-4 * (1 + float(a.detach().abs().max()))
            )


@pytest.mark.parametrize("impl", IMPLS)
def test_filtered_lrelu_gradcheck(impl):
    gen = torch.Generator().manual_seed(5)
    fu = upfirdn2d.setup_filter(np.hanning(14)[1:-1])
    fd = upfirdn2d.setup_filter(np.hanning(14)[1:-1])
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, generator=gen, requires_grad=True)
    fn = lambda x, b: filtered_lrelu(x, fu, fd, b, up=2, down=2, padding=10, clamp=5.0, impl=impl)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))


def test_filtered_lrelu_errors():
    with pytest.raises(CellsynthError, match="4-D"):
        filtered_lrelu(torch.zeros(2, 4, 4))
    with pytest.raises(CellsynthError, match="empty"):
        filtered_lrelu(torch.zeros(1, 1, 4, 4), upfirdn2d.setup_filter(np.ones(12)), padding=-3)


# ------------------------------------------------------------------------------------------------
# conv2d_resample


def _np_conv2d_resample(x, w, f, up, down, pad, groups, flip_weight, flip_filter):
    fw, fh = upfirdn2d.get_filter_size(f)
    px0, px1, py0, py1 = pad
    if up > 1:
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    ff = f.numpy() if (f is not None and up > 1) else np.ones((1, 1))
    v = np_upfirdn(x, ff, up, 1, [px0, px1, py0, py1], flip_filter, up**2)
    wn = w if flip_weight else w[:, :, ::-1, ::-1]
    v = np_conv(v, wn, groups)
    if down > 1:
        v = np_upfirdn(v, f.numpy(), 1, down, [0, 0, 0, 0], flip_filter, 1)
    return v


def _random_conv_cases(n, seed):
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < n:
        up, down = [(1, 1), (2, 1), (4, 1), (1, 2), (1, 4)][int(rng.integers(5))]
        k = int(rng.integers(1, 5))
        groups = int(rng.choice([1, 2]))
        f = rand_filter(rng, int(rng.choice([2, 3, 4, 8])), bool(rng.random() < 0.4))
        pad = [int(p) for p in rng.integers(0, 3, size=4)]
        h, w = int(rng.integers(6, 11)), int(rng.integers(6, 11))
        cases.append(
            (up, down, k, groups, f, pad, h, w, bool(rng.random() < 0.5), bool(rng.random() < 0.5))
        )
    return cases


@pytest.mark.parametrize("impl", IMPLS)
def test_conv2d_resample_against_loops(impl):
    gen = torch.Generator().manual_seed(6)
    for up, down, k, groups, f, pad, h, w, flip_w, flip_f in _random_conv_cases(30, seed=7):
        x = torch.randn(2, 2 * groups, h, w, generator=gen)
        wt = torch.randn(3 * groups, 2, k, k, generator=gen)
        y = conv2d_resample(x, wt, f, up, down, pad, groups, flip_w, flip_f, impl=impl)
        want = _np_conv2d_resample(x.numpy(), wt.numpy(), f, up, down, pad, groups, flip_w, flip_f)
        assert y.shape == want.shape, (up, down, k, pad)
        np.testing.assert_allclose(y.numpy(), want, rtol=1e-4, atol=1e-4)


def test_conv2d_resample_fast_matches_ref_grads():
    gen = torch.Generator().manual_seed(7)
    for up, down, k, groups, f, pad, h, w, flip_w, flip_f in _random_conv_cases(20, seed=8):
        x = torch.randn(2, 2 * groups, h, w, generator=gen, requires_grad=True)
        wt = torch.randn(3 * groups, 2, k, k, generator=gen, requires_grad=True)
        outs = {}
        for impl in IMPLS:
            y = conv2d_resample(x, wt, f, up, down, pad, groups, flip_w, flip_f, impl=impl)
            gx, gw = torch.autograd.grad(y.square().sum(), (x, wt), create_graph=True)
            (ggw,) = torch.autograd.grad(gx.square().sum(), wt)
            outs[impl] = (y, gx, gw, ggw)
        for a, c in zip(outs["ref"], outs["cpu"]):
            torch.testing.assert_close(
                c, a, rtol=1e-4, atol=1e-4 * (1 + float(a.detach().abs().max()))
            )


def test_conv2d_resample_gradcheck():
    gen = torch.Generator().manual_seed(8)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    for impl in IMPLS:
        for up, down in [(2, 1), (1, 2)]:
            x = torch.randn(1, 2, 5, 5, dtype=torch.float64, generator=gen, requires_grad=True)
            w = torch.randn(2, 2, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
            fn = lambda x, w, u=up, d=down, i=impl: conv2d_resample(x, w, f, u, d, 1, impl=i)  # noqa: E731
            assert torch.autograd.gradcheck(fn, (x, w))


def test_conv2d_resample_errors():
    x = torch.zeros(1, 4, 8, 8)
    with pytest.raises(CellsynthError, match="input channels"):
        conv2d_resample(x, torch.zeros(2, 3, 3, 3))
    with pytest.raises(CellsynthError, match="both"):
        conv2d_resample(x, torch.zeros(2, 4, 3, 3), upfirdn2d.setup_filter([1, 1]), up=2, down=2)
    with pytest.raises(CellsynthError, match="w must be"):
        conv2d_resample(x, torch.zeros(2, 4, 3))


def test_random_shapes_smoke_all_ops_agree():
    """Random layer-like shapes (odd sizes, factors 1/2/4): every op, both impls agree."""
    rng = random.Random(0)
    gen = torch.Generator().manual_seed(9)
    for _ in range(10):
        c, h, w = rng.randint(1, 5), rng.randint(5, 17), rng.randint(5, 17)
        x = torch.randn(2, c, h, w, generator=gen)
        up = rng.choice([1, 2, 4])
        fu = upfirdn2d.setup_filter(np.hanning(6 * up + 2)[1:-1]) if up > 1 else None
        fd = upfirdn2d.setup_filter(np.hanning(14)[1:-1])
        pad = rng.randint(8, 12)
        bias = torch.randn(c, generator=gen)
        a = filtered_lrelu(x, fu, fd, bias, up, 2, pad, clamp=2.0, impl="ref")
        b = filtered_lrelu(x, fu, fd, bias, up, 2, pad, clamp=2.0, impl="cpu")
        assert a.shape == b.shape == (2, c, *output_size((h, w), fu, fd, up, 2, [pad] * 4))
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_filtered_lrelu_inference_path_leaves_input_alone():
    """Without autograd the fast path works in place on its temporaries only."""
    gen = torch.Generator().manual_seed(10)
    fd = upfirdn2d.setup_filter(np.hanning(14)[1:-1])
    for fu, b, up in [(None, None, 1), (fd, torch.randn(3, generator=gen), 2)]:
        x = torch.randn(2, 3, 16, 16, generator=gen) * 3
        keep = x.clone()
        with torch.no_grad():
            y = filtered_lrelu(x, fu, None, b, up=up, padding=0, clamp=1.0, impl="cpu")
        torch.testing.assert_close(x, keep, rtol=0, atol=0)
        want = filtered_lrelu(
            x.requires_grad_(True), fu, None, b, up=up, padding=0, clamp=1.0, impl="ref"
        )
        torch.testing.assert_close(y, want.detach(), rtol=1e-5, atol=1e-5)
