"""Custom CUDA ops (bias_act, upfirdn2d, filtered_lrelu): builder, compile test, GPU parity.

Tolerances (stated once, used everywhere): results are compared as
``|cuda - ref| <= ATOL * max|ref| + RTOL * |ref|`` with
fp32: RTOL = ATOL = 1e-5; fp16: RTOL = ATOL = 1e-2. The fp16 CUDA kernels accumulate in fp32,
so their reference is the fp32 reference on the same (fp16-rounded) inputs.

- builder tests (no GPU, some need nvcc): cache folder naming, file lock, error reporting;
- compile test (``slow``; needs nvcc and a CUDA build of torch, not a GPU): each extension is
  built once per session (module fixture) into the normal cache and reused;
- parity tests (``gpu``; skipped without CUDA): forward, gradients and double backward against
  the pure-PyTorch reference, and a few StyleGAN3 training steps with ``cuda`` against ``ref``.
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from cellsynth.errors import CellsynthError
from cellsynth.stylegan3.ops import common, cuda_build, cuda_ops
from cellsynth.stylegan3.ops.bias_act import bias_act
from cellsynth.stylegan3.ops.filtered_lrelu import filtered_lrelu
from cellsynth.stylegan3.ops.upfirdn2d import setup_filter, upfirdn2d

TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-2, 1e-2)}
HAS_CUDA = torch.cuda.is_available()
HAS_NVCC = torch.version.cuda is not None and cuda_build.find_cuda_home() is not None
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
gpu = [pytest.mark.gpu, needs_gpu]


def assert_close(got, ref, dtype, what=""):
    """|got - ref| <= atol * max|ref| + rtol * |ref| (tolerances of ``dtype``)."""
    rtol, atol = TOL[dtype]
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    err = (got - ref).abs() - rtol * ref.abs()
    worst = float(err.max()) if err.numel() else 0.0
    assert worst <= atol * max(scale, 1e-12), f"{what}: error {worst:.3g} vs max|ref| {scale:.3g}"


# ------------------------------------------------------------------------------------------------
# Builder (no GPU needed)


def test_cache_dir_names_hash_and_arch(monkeypatch, tmp_path):
    monkeypatch.setenv(cuda_build.CACHE_ENV, str(tmp_path / "c"))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cuda_build.cache_root() == tmp_path / "c"
    d = cuda_build.build_dir("upfirdn2d")
    name, h, arch = d.name.split("-", 2)
    assert d.parent == tmp_path / "c" and name == "upfirdn2d" and arch == "sm80-sm90"
    assert len(h) == 12 and h == cuda_build.source_hash("upfirdn2d")
    # Different sources -> different hash.
    assert cuda_build.source_hash("bias_act") != h
    monkeypatch.delenv(cuda_build.CACHE_ENV)
    assert cuda_build.cache_root().parts[-3:] == (".cache", "cellsynth", "ops")


def test_unknown_op_and_cpu_tensor_errors():
    with pytest.raises(CellsynthError, match="unknown CUDA op"):
        cuda_build.build("nope")
    with pytest.raises(CellsynthError, match="unknown CUDA op"):
        cuda_ops.cuda_ops_available("nope")
    x = torch.zeros(1, 2, 4, 4)
    with pytest.raises(CellsynthError, match="CUDA tensor"):
        cuda_ops.bias_act_cuda(x)
    with pytest.raises(CellsynthError, match="CUDA tensor"):
        cuda_ops.upfirdn2d_cuda(x, None)
    with pytest.raises(CellsynthError, match="4-D"):
        cuda_ops.filtered_lrelu_cuda(x[0])
    if not HAS_CUDA:
        assert cuda_ops.cuda_ops_available("bias_act") is False


def test_file_lock_serialises(tmp_path):
    lock = tmp_path / "x.lock"
    events = []

    def hold():
        with common.file_lock(lock):
            events.append(("a-in", time.monotonic()))
            time.sleep(0.3)
            events.append(("a-out", time.monotonic()))

    t = threading.Thread(target=hold)
    t.start()
    while not events:
        time.sleep(0.01)
    with common.file_lock(lock):
        events.append(("b-in", time.monotonic()))
    t.join()
    assert [e[0] for e in events] == ["a-in", "a-out", "b-in"]


def test_missing_toolkit_message(monkeypatch, tmp_path):
    monkeypatch.setenv(cuda_build.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(cuda_build, "find_cuda_home", lambda: None)
    monkeypatch.setattr(cuda_build, "_MODULES", {})
    monkeypatch.setattr(cuda_build, "_FAILURES", {})
    if torch.version.cuda is None:
        with pytest.raises(CellsynthError, match="no CUDA support"):
            cuda_build.build("bias_act")
        return
    with pytest.raises(CellsynthError) as e:
        cuda_build.build("bias_act")
    msg = str(e.value)
    assert "no CUDA toolkit found" in msg and torch.__version__ in msg and "impl='ref'" in msg
    with pytest.warns(RuntimeWarning, match="falling back"):
        assert cuda_build.try_build("bias_act") is None
    # One warning only.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cuda_build.try_build("bias_act") is None


@pytest.mark.skipif(not HAS_NVCC, reason="needs nvcc and a CUDA build of torch")
def test_compile_error_reports_log_tail(monkeypatch, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "broken.cpp").write_text('#error "cellsynth-test-broken-source"\n')
    (src / "broken.cu").write_text("// empty\n")
    monkeypatch.setenv(cuda_build.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(cuda_build, "SOURCE_DIR", src)
    monkeypatch.setattr(cuda_build, "SOURCES", {"broken": (["broken.cpp", "broken.cu"], [])})
    monkeypatch.setattr(cuda_build, "_MODULES", {})
    monkeypatch.setattr(cuda_build, "_FAILURES", {})
    with pytest.raises(CellsynthError) as e:
        cuda_build.build("broken")
    msg = str(e.value)
    assert "cellsynth-test-broken-source" in msg  # the compiler's own words
    assert "nvcc" in msg and "host compiler" in msg and torch.version.cuda in msg
    assert "what to try" in msg
    assert (cuda_build.build_dir("broken") / "build.log").is_file()


def test_adjoint_padding_gives_the_gradient():
    """The padding rule used by the CUDA backward, checked on the CPU reference."""
    rng = np.random.default_rng(0)
    cases = [
        ((6, 7), 4, (2, 1), (1, 2), (3, 2, 1, 0)),
        ((9, 5), 5, (1, 3), (2, 1), (-1, 2, 4, -2)),
        ((6, 6), 1, (2, 2), (2, 2), (0, 0, 0, 0)),
        ((5, 8), 6, (4, 1), (1, 4), (5, 6, 2, 3)),
    ]
    for (h, w), taps, up, down, pad in cases:
        for separable in (True, False):
            f = setup_filter(rng.random(taps) + 0.1, separable=separable)
            x = torch.randn(1, 2, h, w, requires_grad=True)
            y = upfirdn2d(x, f, up=up, down=down, padding=pad, gain=3, impl="ref")
            dy = torch.randn_like(y)
            (dx,) = torch.autograd.grad(y, x, dy)
            p = cuda_ops._adjoint_padding((h, w), y.shape[2:], f, up, down, pad)
            dx2 = upfirdn2d(
                dy, f, up=down, down=up, padding=p, flip_filter=True, gain=3, impl="ref"
            )
            torch.testing.assert_close(dx2, dx, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Compile test (nvcc + CUDA torch; no GPU needed)

BUILD_TIMES: dict = {}


@pytest.fixture(scope="module")
def built():
    """Build every extension once per session (reusing the cache); name -> module."""
    if not HAS_NVCC:
        pytest.skip("needs nvcc and a CUDA build of torch")
    mods = {}
    for name in cuda_build.SOURCES:
        t0 = time.perf_counter()
        mods[name] = cuda_build.build(name)
        BUILD_TIMES[name] = time.perf_counter() - t0
    print(f"\nCUDA op build times (s, cached builds are fast): {BUILD_TIMES}")
    return mods


@pytest.mark.slow
def test_extensions_compile(built):
    assert hasattr(built["bias_act"], "bias_act")
    assert hasattr(built["upfirdn2d"], "upfirdn2d")
    assert hasattr(built["filtered_lrelu"], "forward")
    assert hasattr(built["filtered_lrelu"], "backward")
    for name in built:
        d = cuda_build.build_dir(name)
        assert d.is_dir() and list(d.glob("*.so")), f"no shared library in {d}"


@pytest.mark.slow
def test_concurrent_processes_share_the_build(built):
    """Two processes that load an extension at once (as --gpus 2 does) both get the cached one."""
    code = (
        "from cellsynth.stylegan3.ops import cuda_build; "
        "print(cuda_build.build('bias_act').__file__)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    files = {o[0].strip().splitlines()[-1] for o in outs}
    assert files == {built["bias_act"].__file__}


# ------------------------------------------------------------------------------------------------
# GPU parity

ACTS = ["linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish"]
DTYPES = [torch.float32, torch.float16]


def _inputs(shape, dtype, seed=0, scale=1.0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = (torch.randn(shape, generator=g) * scale).to(dtype).cuda()
    return x


def _second_order(loss, inputs):
    """Gradients of ``loss`` (a function of first-order gradients) for ``inputs``; None for each
    when the first-order gradients do not depend on them (a linear act has none: zero)."""
    if not loss.requires_grad:
        return [None] * len(inputs)
    return torch.autograd.grad(loss, inputs, allow_unused=True)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape,dim,gain,clamp,alpha",
    [
        ((4, 5, 7, 3), 1, None, None, None),
        ((3, 9), 1, 0.7, 0.5, 0.1),
        ((2, 3, 11), 2, 2.0, 1.0, None),
    ],
)
@pytest.mark.gpu
@needs_gpu
def test_bias_act_parity(act, dtype, shape, dim, gain, clamp, alpha):
    x = _inputs(shape, dtype, seed=1, scale=2.0)
    b = _inputs((shape[dim],), torch.float32, seed=2)
    kw = dict(dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
    xr, br = x.float().requires_grad_(), b.clone().requires_grad_()
    xc, bc = x.clone().requires_grad_(), b.clone().requires_grad_()
    yr = bias_act(xr, br, impl="ref", **kw)
    yc = cuda_ops.bias_act_cuda(xc, bc, **kw)
    assert yc.dtype == dtype
    assert_close(yc, yr, dtype, f"bias_act {act} forward")
    # First-order gradients.
    dy = _inputs(shape, torch.float32, seed=3)
    gxr, gbr = torch.autograd.grad(yr, [xr, br], dy, create_graph=True)
    gxc, gbc = torch.autograd.grad(yc, [xc, bc], dy.to(dtype), create_graph=True)
    assert_close(gxc, gxr, dtype, f"bias_act {act} dx")
    assert_close(gbc, gbr, dtype, f"bias_act {act} db")
    # Double backward (R1-like: gradient of a function of the gradient).
    lr_ = (gxr.square().sum() + gbr.square().sum()) / 2
    lc = (gxc.float().square().sum() + gbc.float().square().sum()) / 2
    ggr, ggc = _second_order(lr_, [xr, br]), _second_order(lc, [xc, bc])
    for name, a, r in zip(("x", "b"), ggc, ggr):
        r = torch.zeros_like(xr if name == "x" else br) if r is None else r
        a = torch.zeros_like(r) if a is None else a
        assert_close(a, r, dtype, f"bias_act {act} double backward d{name}")


@pytest.mark.gpu
@needs_gpu
def test_bias_act_no_bias_and_third_order_error():
    x = _inputs((2, 3, 4), torch.float32).requires_grad_()
    y = cuda_ops.bias_act_cuda(x, act="tanh")
    assert_close(y, bias_act(x, act="tanh", impl="ref"), torch.float32, "no bias")
    v = _inputs((5,), torch.float32)
    assert_close(
        cuda_ops.bias_act_cuda(v, act="relu"),
        bias_act(v, act="relu", impl="ref"),
        torch.float32,
        "1-D, no bias",
    )
    assert cuda_ops.bias_act_cuda(torch.zeros(0, 3, device="cuda"), torch.zeros(3)).shape == (0, 3)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x, create_graph=True)
    with pytest.raises(CellsynthError, match="order 3"):
        torch.autograd.grad(gg.sum(), x)


UPFIRDN_CASES = [
    # shape, taps, separable, up, down, padding, flip, gain
    ((2, 3, 16, 16), 4, False, 2, 1, (2, 1, 2, 1), False, 4.0),
    ((1, 2, 17, 13), 5, True, 1, 2, (2, 2, 1, 3), False, 1.0),
    ((2, 2, 12, 10), 32, True, 2, 1, (16, 15, 16, 15), True, 4.0),
    ((1, 2, 9, 11), 32, False, 4, 4, (20, 13, 17, 16), False, 1.0),
    ((1, 3, 15, 14), 6, False, (2, 1), (1, 2), (-1, 3, 4, -2), True, 2.0),
    ((2, 1, 8, 8), 1, False, 2, 2, 0, False, 1.0),
    ((1, 4, 33, 31), 12, True, 4, 2, (5, 6, 7, 8), False, 16.0),
    ((1, 2, 10, 10), "2d", False, 1, 1, 2, False, 1.0),  # non-separable random 5x5
]


def _filter(taps, separable, seed=0):
    rng = np.random.default_rng(seed)
    if taps == "2d":
        return setup_filter(rng.random((5, 5)) + 0.1)
    return setup_filter(rng.random(taps) + 0.1, separable=separable)


@pytest.mark.parametrize("case", UPFIRDN_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.gpu
@needs_gpu
def test_upfirdn2d_parity(case, dtype):
    shape, taps, separable, up, down, padding, flip, gain = case
    f = _filter(taps, separable).cuda()
    x = _inputs(shape, dtype, seed=4)
    kw = dict(up=up, down=down, padding=padding, flip_filter=flip, gain=gain)
    xr = x.float().requires_grad_()
    xc = x.clone().requires_grad_()
    yr = upfirdn2d(xr, f, impl="ref", **kw)
    yc = cuda_ops.upfirdn2d_cuda(xc, f, **kw)
    assert yc.dtype == dtype
    assert_close(yc, yr, dtype, "upfirdn2d forward")
    # Gradient and double backward: g = A^T w; d/dw |g|^2 / 2 = A A^T w.
    w = _inputs(yr.shape, torch.float32, seed=5)
    wr, wc = w.clone().requires_grad_(), w.to(dtype).requires_grad_()
    (gr,) = torch.autograd.grad(yr, xr, wr, create_graph=True)
    (gc,) = torch.autograd.grad(yc, xc, wc, create_graph=True)
    assert_close(gc, gr, dtype, "upfirdn2d dx")
    (ggr,) = torch.autograd.grad(gr.square().sum() / 2, wr)
    (ggc,) = torch.autograd.grad(gc.float().square().sum() / 2, wc)
    assert_close(ggc, ggr, dtype, "upfirdn2d double backward")


FLRELU_CASES = [
    # shape, fu (taps, separable), fd, up, down, padding, gain, slope, clamp, bias, flip
    (
        (2, 3, 16, 16),
        (12, True),
        (12, True),
        2,
        2,
        (10, 10, 10, 10),
        math.sqrt(2),
        0.2,
        None,
        True,
        False,
    ),
    ((1, 4, 13, 17), (4, False), (6, False), 2, 1, (3, 2, 1, 4), 1.0, 0.1, 0.5, True, False),
    (
        (2, 2, 9, 9),
        (32, True),
        (32, True),
        4,
        4,
        (30, 31, 30, 31),
        math.sqrt(2),
        0.2,
        1.0,
        True,
        True,
    ),
    (
        (1, 2, 20, 18),
        (1, False),
        (8, True),
        1,
        2,
        (2, 3, 4, 1),
        math.sqrt(2),
        0.2,
        256.0,
        False,
        False,
    ),
    ((1, 3, 11, 12), (8, True), (1, False), 2, 1, (0, 0, 0, 0), 2.0, 0.3, None, True, False),
    ((1, 2, 10, 10), (1, False), (1, False), 1, 1, (0, 0, 0, 0), 1.0, 1.0, None, True, False),
    (
        (1, 2, 14, 15),
        (6, True),
        ("2d", False),
        4,
        2,
        (6, 5, 4, 7),
        math.sqrt(2),
        0.2,
        0.8,
        True,
        False,
    ),
]


@pytest.mark.parametrize("case", FLRELU_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.gpu
@needs_gpu
def test_filtered_lrelu_parity(case, dtype):
    shape, fu_spec, fd_spec, up, down, padding, gain, slope, clamp, use_bias, flip = case
    fu = _filter(*fu_spec, seed=1).cuda() if fu_spec[0] != 1 else None
    fd = _filter(*fd_spec, seed=2).cuda() if fd_spec[0] != 1 else None
    x = _inputs(shape, dtype, seed=6)
    b = _inputs((shape[1],), torch.float32, seed=7) if use_bias else None
    kw = dict(
        up=up, down=down, padding=padding, gain=gain, slope=slope, clamp=clamp, flip_filter=flip
    )
    xr, xc = x.float().requires_grad_(), x.clone().requires_grad_()
    br = b.clone().requires_grad_() if use_bias else None
    bc = b.clone().requires_grad_() if use_bias else None
    yr = filtered_lrelu(xr, fu, fd, br, impl="ref", **kw)
    yc = cuda_ops.filtered_lrelu_cuda(xc, fu, fd, bc, **kw)
    assert yc.dtype == dtype
    assert_close(yc, yr, dtype, "filtered_lrelu forward")
    dy = _inputs(yr.shape, torch.float32, seed=8)
    inputs_r = [xr] + ([br] if use_bias else [])
    inputs_c = [xc] + ([bc] if use_bias else [])
    gr = torch.autograd.grad(yr, inputs_r, dy)
    gc = torch.autograd.grad(yc, inputs_c, dy.to(dtype))
    for name, a, r in zip(("x", "b"), gc, gr):
        assert_close(a, r, dtype, f"filtered_lrelu d{name}")


@pytest.mark.gpu
@needs_gpu
def test_filtered_lrelu_keeps_only_sign_bits():
    """What the forward saves for backward: the filters and 2 bits per upsampled sample."""
    x = _inputs((2, 4, 16, 16), torch.float32).requires_grad_()
    fu = _filter(12, True).cuda()
    y = cuda_ops.filtered_lrelu_cuda(x, fu, fu, up=2, down=2, padding=10)
    saved = y.grad_fn.saved_tensors
    signs = [t for t in saved if t.dtype == torch.int32]
    assert len(signs) == 1
    mid = 2 * 4 * (16 * 2 + 20 - 11) ** 2  # N * C * upsampled samples
    assert signs[0].numel() == 2 * math.ceil(mid / 32)
    assert all(t.numel() < mid for t in saved)


def _wired():
    """True once the public ops dispatch impl='cuda' to these kernels (lead's patch)."""
    try:
        x = torch.zeros(1, 1, 4, 4, device="cuda")
        from cellsynth.stylegan3.ops._impl import resolve_impl

        return resolve_impl("cuda", x) == "cuda"
    except Exception:
        return False


@pytest.mark.gpu
@needs_gpu
def test_auto_uses_cuda_and_falls_back_with_one_warning(monkeypatch, tmp_path):
    if not _wired():
        pytest.skip("public ops not yet wired to impl='cuda'")
    from cellsynth.stylegan3.ops._impl import resolve_impl

    x = torch.zeros(1, 2, 4, 4, device="cuda")
    monkeypatch.delenv("CELLSYNTH_OPS_IMPL", raising=False)
    assert resolve_impl("auto", x, "bias_act") == "cuda"
    y = bias_act(x, torch.ones(2, device="cuda"), act="lrelu", impl="cuda")
    assert_close(y, torch.full_like(x, math.sqrt(2)), torch.float32, "public op, impl=cuda")
    # A failed build: one warning with the reason, then the reference.
    monkeypatch.setenv(cuda_build.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(cuda_build, "find_cuda_home", lambda: None)
    monkeypatch.setattr(cuda_build, "_MODULES", {})
    monkeypatch.setattr(cuda_build, "_FAILURES", {})
    with pytest.warns(RuntimeWarning, match="no CUDA toolkit found"):
        assert resolve_impl("auto", x, "upfirdn2d") == "ref"
    assert resolve_impl("auto", x, "upfirdn2d") == "ref"
    with pytest.raises(CellsynthError, match="no CUDA toolkit found"):
        upfirdn2d(x, None, impl="cuda")


@pytest.mark.gpu
@needs_gpu
def test_stylegan3_training_steps_cuda_match_ref(monkeypatch):
    networks = pytest.importorskip("cellsynth.stylegan3.networks")
    loss_mod = pytest.importorskip("cellsynth.stylegan3.loss")
    if not _wired():
        pytest.skip("public ops not yet wired to impl='cuda'")
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    G0, D0 = networks.build_networks(
        "stylegan3-t",
        img_resolution=32,
        img_channels=1,
        cbase=512,
        cmax=16,
        map_depth=1,
        num_fp16_res=0,
        seed=0,
    )
    g = torch.Generator().manual_seed(0)
    reals = [torch.randn(4, 1, 32, 32, generator=g).cuda() for _ in range(3)]
    zs = [torch.randn(4, G0.z_dim, generator=g).cuda() for _ in range(3)]
    c = torch.zeros(4, 0).cuda()
    results = {}
    for impl in ("ref", "cuda"):
        monkeypatch.setenv("CELLSYNTH_OPS_IMPL", impl)
        G, D = copy.deepcopy(G0).cuda(), copy.deepcopy(D0).cuda()
        loss = loss_mod.StyleGANLoss(G, D, r1_gamma=1.0)
        opt_g = torch.optim.SGD(G.parameters(), lr=1e-3)
        opt_d = torch.optim.SGD(D.parameters(), lr=1e-3)
        stats = []
        for step in range(3):
            for phase, opt in (("Gmain", opt_g), ("Dmain", opt_d), ("Dreg", opt_d)):
                opt.zero_grad(set_to_none=True)
                s = loss.accumulate_gradients(phase, reals[step], c, zs[step], c, 1.0, 0)
                stats.append(s)
                opt.step()
        params = {f"G.{k}": v.detach().cpu() for k, v in G.named_parameters()}
        params.update({f"D.{k}": v.detach().cpu() for k, v in D.named_parameters()})
        results[impl] = (stats, params)
    (s_ref, p_ref), (s_cuda, p_cuda) = results["ref"], results["cuda"]
    for a, r in zip(s_cuda, s_ref):
        for k in r:
            assert abs(a[k] - r[k]) <= 1e-3 * max(abs(r[k]), 1e-3), (k, a[k], r[k])
    init = {f"G.{k}": v for k, v in G0.named_parameters()}
    init.update({f"D.{k}": v for k, v in D0.named_parameters()})
    for k in p_ref:
        delta_r, delta_c = p_ref[k] - init[k].detach(), p_cuda[k] - init[k].detach()
        scale = float(delta_r.abs().max())
        assert float((delta_c - delta_r).abs().max()) <= 1e-2 * scale + 1e-7, k
