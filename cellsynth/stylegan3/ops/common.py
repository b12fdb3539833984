"""What several StyleGAN3 op files need: argument parsing, output sizes and the build cache.

Every op (``upfirdn2d``, ``filtered_lrelu``, ``conv2d_resample``) and every implementation of it
(reference, ``cpu_fast``, ``cuda_ops``) parses ``up``/``down``/``padding`` and sizes its output
the same way; the two compiled back ends (``cpu_kernels``, ``cuda_build``) share one cache
folder, its lock and the log tail they report. Imports no other op module, so any of them can
import it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

import numpy as np
import torch

from cellsynth.errors import CellsynthError

CACHE_ENV = "CELLSYNTH_OPS_CACHE"
LOG_TAIL_LINES = 40


# ---- arguments ---------------------------------------------------------------------------------
def parse_scaling(scaling):
    """Return (sx, sy) for an int or a pair of ints (each >= 1)."""
    if isinstance(scaling, int):
        scaling = [scaling, scaling]
    try:
        sx, sy = (int(s) for s in scaling)
    except (TypeError, ValueError):
        raise CellsynthError(
            f"up/down factor must be an int or two ints, got {scaling!r}"
        ) from None
    if sx < 1 or sy < 1:
        raise CellsynthError(f"up/down factors must be >= 1, got {scaling!r}")
    return sx, sy


def parse_square_scaling(up, down, op: str) -> tuple[int, int]:
    """(up, down) as single ints for the ops that resample both axes alike."""
    upx, upy = parse_scaling(up)
    downx, downy = parse_scaling(down)
    if upx != upy or downx != downy:
        raise CellsynthError(f"{op}: up and down must be the same on both axes")
    return upx, downx


def parse_padding(padding):
    """Return (px0, px1, py0, py1) for an int, [px, py] or [px0, px1, py0, py1]."""
    if isinstance(padding, (int, np.integer)):
        padding = [padding, padding]
    padding = [int(p) for p in padding]
    if len(padding) == 2:
        px, py = padding
        padding = [px, px, py, py]
    if len(padding) != 4:
        raise CellsynthError(f"padding must be an int, 2 or 4 ints, got {padding!r}")
    return tuple(padding)


def get_filter_size(f):
    """Return (fw, fh) of a filter made by setup_filter (None -> (1, 1))."""
    if f is None:
        return 1, 1
    if not isinstance(f, torch.Tensor) or f.ndim not in (1, 2):
        raise CellsynthError("filter must be a 1-D or 2-D torch.Tensor (see setup_filter)")
    fw = f.shape[-1]
    fh = f.shape[0]
    return int(fw), int(fh)


# ---- output sizes ------------------------------------------------------------------------------
def upfirdn2d_output_size(x, f, up, down, padding) -> tuple[int, int]:
    """(H', W') of upfirdn2d for input ``x`` [N, C, H, W] and parsed up/down/padding; raises
    CellsynthError when the output would be empty."""
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = padding
    fw, fh = get_filter_size(f)
    h = (x.shape[2] * upy + py0 + py1 - fh) // downy + 1
    w = (x.shape[3] * upx + px0 + px1 - fw) // downx + 1
    if h < 1 or w < 1:
        raise CellsynthError(
            f"upfirdn2d: output would be empty (input {tuple(x.shape)}, filter {fw}x{fh}, "
            f"up {up}, down {down}, padding {padding})"
        )
    return h, w


def filtered_lrelu_output_size(in_size, fu, fd, up, down, padding) -> tuple[int, int]:
    """(H, W) of filtered_lrelu's output for an input of size (H, W)."""
    px0, px1, py0, py1 = parse_padding(padding)
    fuw, fuh = get_filter_size(fu)
    fdw, fdh = get_filter_size(fd)
    h = (in_size[0] * up + py0 + py1 - (fuh - 1) - (fdh - 1) + (down - 1)) // down
    w = (in_size[1] * up + px0 + px1 - (fuw - 1) - (fdw - 1) + (down - 1)) // down
    return h, w


def check_filtered_lrelu_size(x, fu, fd, up, down, padding) -> None:
    """Raise CellsynthError when filtered_lrelu of ``x`` would be empty."""
    h, w = filtered_lrelu_output_size(x.shape[2:], fu, fd, up, down, padding)
    if h < 1 or w < 1:
        raise CellsynthError(f"filtered_lrelu: output would be empty for input {tuple(x.shape)}")


def parse_filtered_lrelu(x, fu, fd, up, down, padding, clamp):
    """The arguments of filtered_lrelu that every implementation parses: (up, down) as single
    ints, padding as (px0, px1, py0, py1) (checked to give a non-empty output for ``x``) and
    ``clamp`` as a float (-1.0: no clamping)."""
    up, down = parse_square_scaling(up, down, "filtered_lrelu")
    padding = parse_padding(padding)
    check_filtered_lrelu_size(x, fu, fd, up, down, padding)
    return up, down, padding, float(clamp) if clamp is not None else -1.0


# ---- the build cache of the compiled kernels ---------------------------------------------------
def cache_root() -> Path:
    """Folder that holds the builds: ``$CELLSYNTH_OPS_CACHE`` or ``~/.cache/cellsynth/ops``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cellsynth" / "ops"


@contextlib.contextmanager
def file_lock(path: Path):
    """Hold an exclusive lock on ``path`` (created if needed) for the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def log_tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a compiler log."""
    return "\n".join(text.rstrip().splitlines()[-lines:])
