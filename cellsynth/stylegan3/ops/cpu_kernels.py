"""Compiled CPU kernels of the FIR ops (``ops/cpu/fir.c``), built at first use and called with ctypes.

The C file has no Python or torch dependency, so it builds with the system C compiler in about a
second (``cc -O3 -march=native``), into ``CACHE/cpu-fir-<hash>/`` where CACHE is
``$CELLSYNTH_OPS_CACHE`` or ``~/.cache/cellsynth/ops`` and the hash covers the source, the
compiler's version and this CPU's instruction-set flags (a shared home folder on machines of
different kinds gets one build per kind). A file lock keeps processes that start together from
building at the same time. ``available()`` is False, after one warning, when no compiler works;
the fast ops then fall back to their pure-PyTorch formulation.

``fir2d`` is one polyphase pass (any up/down/padding on each axis, separable or 2-D taps) on
channels-last float32/float64/bfloat16 tensors (bf16 is summed in float32); its backward is the same pass with flipped taps and
swapped factors, so gradients of any order work. ``up_lrelu`` fuses a pass with the clamped
leaky ReLU and keeps one byte per sample for the backward.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import torch

from cellsynth.errors import CellsynthError
from cellsynth.stylegan3.ops.common import cache_root, file_lock, log_tail

SOURCE = Path(__file__).resolve().parent / "cpu" / "fir.c"
DISABLE_ENV = "CELLSYNTH_CPU_KERNELS"  # "0" turns the compiled kernels off
MALLOC_ENV = "CELLSYNTH_MALLOC_TUNE"  # "0" leaves glibc's allocator settings alone
# glibc mallopt parameters; see tune_allocator
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_ALLOC_LIMIT = 1 << 30
ABI_VERSION = 3
_STATE: dict = {}
_DTYPES = {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16"}


def _compiler() -> str | None:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


def _cpu_flags() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    import platform

    return platform.processor() + platform.machine()


def _build_key(cc: str) -> str:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(version.encode())
    h.update(_cpu_flags().encode())
    return h.hexdigest()[:12]


def build() -> ctypes.CDLL:
    """Compile (once per source, compiler and CPU kind) and load the kernels.

    Raises:
        CellsynthError: no C compiler, or the compile failed (with the log's last lines).
    """
    if "lib" in _STATE:
        return _STATE["lib"]
    if "error" in _STATE:
        raise CellsynthError(_STATE["error"])
    cc = _compiler()
    try:
        if cc is None:
            raise CellsynthError("no C compiler found (looked for $CC, cc, gcc, clang)")
        where = cache_root() / f"cpu-fir-{_build_key(cc)}"
        lib_path = where / "fir.so"
        with file_lock(where.parent / f"{where.name}.lock"):
            if not lib_path.is_file():
                where.mkdir(parents=True, exist_ok=True)
                tmp = where / f".fir.{os.getpid()}.so"
                cmd = [cc, "-O3", "-march=native", "-fPIC", "-shared", "-pthread"]
                cmd += [str(SOURCE), "-o", str(tmp)]
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
                if proc.returncode != 0:
                    (where / "build.log").write_text(" ".join(cmd) + "\n" + proc.stderr)
                    raise CellsynthError(
                        f"compiling the CPU kernels failed ({' '.join(cmd)}):\n"
                        + log_tail(proc.stderr)
                    )
                os.replace(tmp, lib_path)
        lib = ctypes.CDLL(str(lib_path))
        if lib.cellsynth_fir_version() != ABI_VERSION:
            raise CellsynthError(f"stale CPU kernel build in {where}; delete it to rebuild")
    except (OSError, subprocess.SubprocessError, CellsynthError) as e:
        _STATE["error"] = f"cannot build the CPU FIR kernels: {e}"
        raise CellsynthError(_STATE["error"]) from e
    p, i, d, lng = ctypes.c_void_p, ctypes.c_int, ctypes.c_double, ctypes.c_long
    for sfx in _DTYPES.values():
        fn = getattr(lib, f"fir2d_{sfx}")
        fn.argtypes = [p, p, p, p, p, lng, lng, p, p, i, i, i, d, d, d, i]
        fn.restype = i
        fn2 = getattr(lib, f"apply_code_{sfx}")
        fn2.argtypes = [p, p, p, lng, d, d, d, i]
        fn2.restype = None
    _STATE["lib"] = lib
    return lib


def tune_allocator() -> bool:
    """Keep large freed blocks in the heap instead of returning them to the kernel (glibc only).

    By default glibc serves every allocation over 32 MiB with a fresh ``mmap`` and unmaps it on
    free, so each large activation of a StyleGAN3 layer (hundreds of MiB at batch 8) is
    page-faulted in again on every pass: on the 2-core test machine that made a G forward 1.6x
    slower. Raising the mmap and trim thresholds to 1 GiB lets freed blocks be reused; the cost
    is that the process keeps up to that much freed memory. Done once, when the fast CPU ops
    first run; set ``CELLSYNTH_MALLOC_TUNE=0`` to opt out. Returns True when the setting took.
    """
    if "malloc" in _STATE:
        return _STATE["malloc"]
    ok = False
    if os.environ.get(MALLOC_ENV, "1").strip() != "0":
        import platform

        if platform.libc_ver()[0] == "glibc":
            with contextlib.suppress(OSError, AttributeError):
                libc = ctypes.CDLL(None)
                ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, _ALLOC_LIMIT))
                ok = bool(libc.mallopt(_M_TRIM_THRESHOLD, _ALLOC_LIMIT)) and ok
    _STATE["malloc"] = ok
    return ok


def available() -> bool:
    """True when the kernels are built (or build now); False, after one warning, otherwise."""
    if os.environ.get(DISABLE_ENV, "1").strip() == "0":
        return False
    if "lib" in _STATE:
        return True
    try:
        build()
        tune_allocator()
        return True
    except CellsynthError as e:
        if not _STATE.get("warned"):
            _STATE["warned"] = True
            warnings.warn(
                f"cellsynth: {e}; using the slower pure-PyTorch CPU ops", RuntimeWarning, 2
            )
        return False


def supports(x: torch.Tensor) -> bool:
    """Whether ``fir2d`` can run on ``x`` (a 4-D float32/float64/bfloat16 CPU tensor, kernels
    built)."""
    return x.device.type == "cpu" and x.ndim == 4 and x.dtype in _DTYPES and available()


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """x [N, C, H, W] as a contiguous [N, H, W, C] view (copying only if x is not channels-last)."""
    return x.permute(0, 2, 3, 1).contiguous()


def _ptr(t: torch.Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _axis(length, up, down, pad0, out_len, taps):
    return (ctypes.c_int * 6)(up, down, pad0, length, out_len, taps)


def _run(x, g, geom, bias=None, lrelu=None, want_code=False):
    """One pass: x [N, C, H, W] -> y [N, C, Ho, Wo] channels-last (plus the code bytes).

    geom = ((upy, downy, py0, Ho), (upx, downx, px0, Wo)); g [KH, KW] correlation taps;
    lrelu = (lo, hi, slope) with None for a missing bound.
    """
    lib = build()
    n, c, h, w = x.shape
    (upy, downy, py0, ho), (upx, downx, px0, wo) = geom
    xs = _nhwc(x)
    acc = torch.float32 if x.dtype == torch.bfloat16 else x.dtype  # taps, bias and sums
    g = g.to(acc).contiguous()
    b = None if bias is None else bias.to(acc).contiguous()
    y = torch.empty([n, ho, wo, c], dtype=x.dtype)
    code = torch.empty([n, ho, wo, c], dtype=torch.uint8) if want_code else None
    mode, has_lo, has_hi, lo, hi, slope = 0, 0, 0, 0.0, 0.0, 1.0
    if lrelu is not None:
        mode = 1
        lo_v, hi_v, slope = lrelu
        has_lo, has_hi = int(lo_v is not None), int(hi_v is not None)
        lo, hi = float(lo_v or 0.0), float(hi_v or 0.0)
    fn = getattr(lib, f"fir2d_{_DTYPES[x.dtype]}")
    err = fn(
        _ptr(xs),
        _ptr(y),
        _ptr(g),
        _ptr(b),
        _ptr(code),
        n,
        c,
        _axis(h, upy, downy, py0, ho, g.shape[0]),
        _axis(w, upx, downx, px0, wo, g.shape[1]),
        mode,
        has_lo,
        has_hi,
        lo,
        hi,
        float(slope),
        torch.get_num_threads(),
    )
    if err:
        raise MemoryError("cellsynth CPU FIR kernel: out of memory")
    y = y.permute(0, 3, 1, 2)
    return (y, code.permute(0, 3, 1, 2)) if want_code else y


def _transpose_geom(geom, in_h, in_w, g):
    """Geometry of the adjoint pass: flipped taps, factors swapped, output = input size."""
    (upy, downy, py0, _), (upx, downx, px0, _) = geom
    kh, kw = g.shape
    return ((downy, upy, kh - 1 - py0, in_h), (downx, upx, kw - 1 - px0, in_w))


class _Fir2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, g, geom):
        ctx.geom, ctx.in_size = geom, x.shape[2:]
        ctx.save_for_backward(g)
        return _run(x, g, geom)

    @staticmethod
    def backward(ctx, grad):
        (g,) = ctx.saved_tensors
        tgeom = _transpose_geom(ctx.geom, *ctx.in_size, g)
        return _Fir2d.apply(grad, g.flip([0, 1]), tgeom), None, None


def fir2d(x, g, geom):
    """Differentiable polyphase pass (see ``_run``); g must not require grad."""
    return _Fir2d.apply(x, g, geom)


def lookup_code(table, code):
    """table[code] for a uint8 code tensor (three values), without int64 temporaries."""
    return torch.where(code == 1, table[1], torch.where(code == 0, table[0], table[2]))


def _apply_code(grad, code, table):
    """grad * table[code] (table = (slope, 1, 0)): one fused pass without autograd."""
    if torch.is_grad_enabled():
        return grad * lookup_code(torch.tensor(table, dtype=grad.dtype), code)
    lib = build()
    gs = _nhwc(grad)
    cs = code.permute(0, 2, 3, 1).contiguous()
    out = torch.empty_like(gs)
    getattr(lib, f"apply_code_{_DTYPES[grad.dtype]}")(
        _ptr(gs),
        _ptr(cs),
        _ptr(out),
        gs.numel(),
        *(float(v) for v in table),
        torch.get_num_threads(),
    )
    return out.permute(0, 3, 1, 2)


class _UpLrelu(torch.autograd.Function):
    """A pass followed by the clamped leaky ReLU, saving one byte per output sample."""

    @staticmethod
    def forward(ctx, x, g, geom, lo, hi, slope):
        y, code = _run(x, g, geom, lrelu=(lo, hi, slope), want_code=True)
        ctx.geom, ctx.in_size, ctx.slope = geom, x.shape[2:], slope
        ctx.save_for_backward(g, code)
        ctx.mark_non_differentiable(code)
        return y, code

    @staticmethod
    def backward(ctx, grad, _grad_code):
        g, code = ctx.saved_tensors
        grad = _apply_code(grad, code, (ctx.slope, 1.0, 0.0))
        tgeom = _transpose_geom(ctx.geom, *ctx.in_size, g)
        return _Fir2d.apply(grad, g.flip([0, 1]), tgeom), None, None, None, None, None


def up_lrelu(x, g, geom, lo, hi, slope):
    """Pass + clamp to [lo, hi] (None = open) + leaky ReLU with ``slope``, differentiable."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _UpLrelu.apply(x, g, geom, lo, hi, slope)[0]
    return _run(x, g, geom, lrelu=(lo, hi, slope))


def run_nograd(x, g, geom, bias=None, lrelu=None):
    """The pass without autograd, with an optional fused bias (added before the filter)."""
    return _run(x, g, geom, bias=bias, lrelu=lrelu)
