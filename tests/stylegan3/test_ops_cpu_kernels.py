"""The compiled CPU FIR kernels (ops/cpu/fir.c via ctypes): build, cache, fallback, and the
numbers they give against the explicit-loop numpy references (conftest) and the reference ops.

test_ops.py already runs every op with impl="cpu", which uses these kernels wherever they build;
here: the pure-PyTorch fallback of the same impl, memory layouts, threads, float64 to tight
tolerances, the fused no-autograd path, and the build machinery itself.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from conftest import np_act, np_upfirdn, random_flrelu_cases, random_upfirdn_cases

from cellsynth.errors import CellsynthError
from cellsynth.stylegan3.ops import cpu_kernels, filtered_lrelu, upfirdn2d

needs_cc = pytest.mark.skipif(
    cpu_kernels._compiler() is None, reason="no C compiler on this machine"
)


@pytest.fixture(params=["kernels", "torch"])
def backend(request, monkeypatch):
    """Run a test with the compiled kernels and again with the pure-PyTorch fallback."""
    if request.param == "torch":
        monkeypatch.setenv(cpu_kernels.DISABLE_ENV, "0")
    elif cpu_kernels._compiler() is None:
        pytest.skip("no C compiler")
    return request.param


@pytest.fixture
def no_kernels(monkeypatch):
    monkeypatch.setenv(cpu_kernels.DISABLE_ENV, "0")
    assert not cpu_kernels.available()


@needs_cc
def test_kernels_build_and_are_used():
    x = torch.randn(1, 4, 9, 9)
    assert cpu_kernels.available()
    assert cpu_kernels.supports(x)
    assert cpu_kernels.supports(x.double())
    assert not cpu_kernels.supports(x.half())
    assert not cpu_kernels.supports(x[0])  # 3-D


@needs_cc
def test_fresh_build_in_empty_cache_then_reuse(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLSYNTH_OPS_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_kernels, "_STATE", {})
    lib = cpu_kernels.build()
    builds = list(tmp_path.glob("cpu-fir-*/fir.so"))
    assert len(builds) == 1 and lib.cellsynth_fir_version() == cpu_kernels.ABI_VERSION
    mtime = builds[0].stat().st_mtime_ns
    monkeypatch.setattr(cpu_kernels, "_STATE", {})
    cpu_kernels.build()  # a second process: loads the cached library, no rebuild
    assert builds[0].stat().st_mtime_ns == mtime
    assert not list(tmp_path.glob("cpu-fir-*/.fir.*"))  # no temporary left behind


def test_no_compiler_warns_once_and_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLSYNTH_OPS_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_kernels, "_STATE", {})
    monkeypatch.setattr(cpu_kernels, "_compiler", lambda: None)
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        assert not cpu_kernels.available()
    assert not cpu_kernels.available()  # no second warning (pytest would not fail on it, so:)
    assert cpu_kernels._STATE["warned"]
    with pytest.raises(CellsynthError, match="no C compiler"):
        cpu_kernels.build()
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x = torch.randn(2, 3, 8, 8)
    y = upfirdn2d.upfirdn2d(x, f, up=2, padding=2, impl="cpu")
    torch.testing.assert_close(y, upfirdn2d.upfirdn2d(x, f, up=2, padding=2, impl="ref"))


def test_compile_error_carries_the_log(tmp_path, monkeypatch):
    bad = tmp_path / "fir.c"
    bad.write_text("this is not C;\n")
    monkeypatch.setenv("CELLSYNTH_OPS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cpu_kernels, "_STATE", {})
    monkeypatch.setattr(cpu_kernels, "SOURCE", bad)
    if cpu_kernels._compiler() is None:
        pytest.skip("no C compiler")
    with pytest.raises(CellsynthError, match="compiling the CPU kernels failed") as err:
        cpu_kernels.build()
    assert "error" in str(err.value)
    assert list((tmp_path / "cache").glob("cpu-fir-*/build.log"))
    assert not list((tmp_path / "cache").glob("cpu-fir-*/fir.so"))


def test_upfirdn2d_fast_both_backends_against_loops(backend):
    gen = torch.Generator().manual_seed(7)
    for f, up, down, pad, h, w, flip, gain in random_upfirdn_cases(40, seed=11):
        x = torch.randn(2, 5, h, w, generator=gen, dtype=torch.float64)
        y = upfirdn2d.upfirdn2d(
            x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain, impl="cpu"
        )
        want = np_upfirdn(x.numpy(), f.numpy(), up, down, pad, flip, gain)
        assert y.shape == want.shape and y.dtype == torch.float64
        # float64 data with float32 taps: the taps' rounding is shared, so agreement is tight
        np.testing.assert_allclose(y.numpy(), want, rtol=1e-6, atol=1e-6)


@needs_cc
@pytest.mark.parametrize(
    "layout", ["contiguous", "channels_last", "strided"], ids=lambda s: s.replace("_", "-")
)
def test_any_memory_layout_gives_the_same_numbers(layout):
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(2, 6, 15, 26, generator=gen)
    x = {
        "contiguous": base,
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "strided": base[:, ::2, :, ::2],
    }[layout]
    f = upfirdn2d.setup_filter(np.hanning(10)[1:-1])
    kw = dict(up=2, down=1, padding=[3, 4, 2, 5])
    y = upfirdn2d.upfirdn2d(x, f, impl="cpu", **kw)
    torch.testing.assert_close(y, upfirdn2d.upfirdn2d(x.contiguous(), f, impl="ref", **kw))
    assert y.is_contiguous(memory_format=torch.channels_last) or y.shape[1] == 1


@needs_cc
def test_results_do_not_depend_on_the_thread_count():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(3, 16, 21, 21, generator=gen)
    b = torch.randn(16, generator=gen)
    fu = upfirdn2d.setup_filter(np.hanning(14)[1:-1])
    fd = torch.rand(12, 12, generator=gen) + 0.1
    fd = fd / fd.sum()
    old = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            with torch.no_grad():
                outs.append(filtered_lrelu(x, fu, fd, b, up=2, down=2, padding=9, clamp=0.8))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_filtered_lrelu_float64_against_composition_and_ref_grads(backend):
    # the kernels scale by the lrelu gain in float64; the fallback folds it into float32 taps
    tol = 1e-9 if backend == "kernels" else 1e-6
    gen = torch.Generator().manual_seed(5)
    cases = random_flrelu_cases(20, seed=21)
    for fu, fd, up, down, pad, h, w, gain, slope, clamp, flip in cases:
        x = torch.randn(2, 4, h, w, generator=gen, dtype=torch.float64, requires_grad=True)
        b = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
        args = (fu, fd, b, up, down, pad, gain, slope, clamp, flip)
        y = filtered_lrelu(x, *args, impl="cpu")
        v = np_upfirdn(
            x.detach().numpy() + b.detach().numpy().reshape(1, 4, 1, 1),
            fu.numpy(),
            up,
            1,
            pad,
            flip,
            up**2,
        )
        want = np_upfirdn(
            np_act(v, "lrelu", slope, gain, clamp), fd.numpy(), 1, down, [0] * 4, flip, 1
        )
        np.testing.assert_allclose(y.detach().numpy(), want, rtol=tol, atol=tol)
        with torch.no_grad():  # the fused inference path
            np.testing.assert_allclose(
                filtered_lrelu(x, *args, impl="cpu").numpy(), want, rtol=tol, atol=tol
            )
        y_ref = filtered_lrelu(x, *args, impl="ref")
        dy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
        got = torch.autograd.grad(y, (x, b), dy)
        ref = torch.autograd.grad(y_ref, (x, b), dy)
        for g, r in zip(got, ref):
            torch.testing.assert_close(g, r, rtol=tol, atol=tol)


@needs_cc
def test_filtered_lrelu_kernels_gradcheck_and_double_backward():
    gen = torch.Generator().manual_seed(6)
    fu = upfirdn2d.setup_filter(np.hanning(10)[1:-1])
    fd = torch.rand(8, 8, generator=gen) + 0.1
    x = torch.randn(1, 3, 7, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, generator=gen, requires_grad=True)

    def fn(x, b):
        return filtered_lrelu(x, fu, fd, b, up=2, down=2, padding=7, clamp=3.0, impl="cpu")

    assert torch.autograd.gradcheck(fn, (x, b))
    # the leaky ReLU is piecewise linear: second derivatives vanish almost everywhere, and the
    # double backward must still run (it rebuilds the passes with autograd)
    assert torch.autograd.gradgradcheck(fn, (x, b))


@needs_cc
def test_upfirdn2d_kernels_gradgradcheck_2d_filter():
    gen = torch.Generator().manual_seed(8)
    f = torch.rand(3, 4, generator=gen) + 0.2
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, generator=gen, requires_grad=True)

    def fn(x):
        y = upfirdn2d.upfirdn2d(x, f, up=2, down=3, padding=[2, 1, 0, 3], impl="cpu")
        return y * y

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@needs_cc
def test_filtered_lrelu_never_writes_its_input():
    x = torch.randn(2, 3, 10, 10)
    keep = x.clone()
    fu = upfirdn2d.setup_filter(np.hanning(10)[1:-1])
    with torch.no_grad():
        filtered_lrelu(x, fu, fu, torch.randn(3), up=2, down=2, padding=8, clamp=0.1)
        filtered_lrelu(x, None, None, None, clamp=0.1, slope=1, gain=1)
    assert torch.equal(x, keep)


def test_allocator_tuning_is_idempotent_and_can_be_turned_off(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_STATE", {})
    monkeypatch.setenv(cpu_kernels.MALLOC_ENV, "0")
    assert cpu_kernels.tune_allocator() is False
    monkeypatch.setattr(cpu_kernels, "_STATE", {})
    monkeypatch.delenv(cpu_kernels.MALLOC_ENV)
    import platform

    first = cpu_kernels.tune_allocator()
    assert first == (platform.libc_ver()[0] == "glibc")
    assert cpu_kernels.tune_allocator() == first


@pytest.mark.skipif(shutil.which("cc") is None, reason="no cc")
def test_disable_env_turns_kernels_off(no_kernels):
    assert not cpu_kernels.supports(torch.randn(1, 1, 4, 4))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("kernel", [(3, 3), (3, 1), (2, 4)])
def test_fast_conv_backward_matches_torch(layout, kernel):
    from cellsynth.stylegan3.ops import cpu_fast

    gen = torch.Generator().manual_seed(sum(kernel))
    kh, kw = kernel
    x = torch.randn(3, 5, 9, 11, generator=gen)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    w = torch.randn(7, 5, kh, kw, generator=gen, requires_grad=True)
    pad = (kh - 1, kw - 1)
    y = cpu_fast.conv2d(x, w, pad)
    assert type(y.grad_fn).__name__ == "_Conv2dBackward"
    y_ref = torch.nn.functional.conv2d(x, w, padding=pad)
    torch.testing.assert_close(y, y_ref)
    dy = torch.randn(y.shape, generator=gen, requires_grad=True)
    got = torch.autograd.grad(y, (x, w), dy, create_graph=True)
    ref = torch.autograd.grad(y_ref, (x, w), dy, create_graph=True)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # second order (what R1 needs if a discriminator ever used it): d/d(dy, x, w) of |grads|^2
    loss_got = sum((g * g).sum() for g in got)
    loss_ref = sum((g * g).sum() for g in ref)
    got2 = torch.autograd.grad(loss_got, (dy, w))
    ref2 = torch.autograd.grad(loss_ref, (dy, w))
    for a, b in zip(got2, ref2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


def test_fast_conv_only_takes_the_full_padding_case():
    from cellsynth.stylegan3.ops import cpu_fast

    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, requires_grad=True)
    assert type(cpu_fast.conv2d(x, w, (1, 1)).grad_fn).__name__ != "_Conv2dBackward"
    assert type(cpu_fast.conv2d(x, w[:, :, :1, :1], (0, 0)).grad_fn).__name__ != "_Conv2dBackward"
    assert type(cpu_fast.conv2d(x.double(), w.double(), (2, 2)).grad_fn).__name__ != (
        "_Conv2dBackward"
    )
    with torch.no_grad():
        torch.testing.assert_close(
            cpu_fast.conv2d(x, w, (2, 2)), torch.nn.functional.conv2d(x, w, padding=2)
        )
