"""Values as users type them: seed lists (``--seeds 0-99,120``, the gen_images habit), image
sizes (``256`` or ``256x384``) and 2 x 2 matrices (``sxx,sxy,syx,syy``)."""

from __future__ import annotations

import re

import numpy as np

from cellsynth.errors import CellsynthError, require

MAX_SEED = 2**32 - 1


def parse_seeds(text) -> list[int]:
    """``"0-99,120"`` -> [0, ..., 99, 120] (ranges inclusive; order kept, repeats dropped).

    Raises CellsynthError for malformed text, reversed ranges, or seeds outside 0..2**32-1.
    """
    if isinstance(text, (int, np.integer)):
        parts = [str(int(text))]
    elif isinstance(text, (list, tuple)):
        parts = [str(v) for v in text]
    else:
        parts = [p.strip() for p in str(text).split(",")]
    values: list[int] = []
    for part in parts:
        m = re.fullmatch(r"(-?\d+)(?:-(-?\d+))?", part)
        if m is None:
            raise CellsynthError(f"malformed seeds {text!r} at {part!r}; use e.g. 0-99,120")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        for v in (lo, hi):
            if not 0 <= v <= MAX_SEED:
                raise CellsynthError(f"seed {v} is out of range 0..{MAX_SEED}")
        if hi < lo:
            raise CellsynthError(f"seed range {part!r} runs backwards; write {hi}-{lo}")
        require(hi - lo < 100_000_000, f"seed range {part!r} is too long")
        values.extend(range(lo, hi + 1))
    seen: set[int] = set()
    out = [v for v in values if not (v in seen or seen.add(v))]
    require(bool(out), "no seeds given; use e.g. --seeds 0-99")
    return out


def parse_size(size, what: str = "size") -> tuple[int, int]:
    """``256`` / ``"256"`` -> (256, 256); ``"256x384"`` / (256, 384) -> (height, width).

    Raises CellsynthError naming ``what`` (e.g. "--size") for anything else or sides < 1.
    """
    if isinstance(size, str):
        parts = size.lower().replace(",", "x").split("x")
    elif np.isscalar(size):
        parts = [size]
    else:
        parts = list(size)
    try:
        hw = [int(p) for p in parts]
    except (TypeError, ValueError):
        raise CellsynthError(
            f"{what} must be N or HxW (e.g. 256 or 256x384), got {size!r}"
        ) from None
    if len(hw) == 1:
        hw = hw * 2
    if len(hw) != 2 or min(hw) < 1:
        raise CellsynthError(f"{what} must be N or HxW with positive numbers, got {size!r}")
    return hw[0], hw[1]


def parse_matrix(text: str | None, what: str = "--matrix") -> list[list[float]] | None:
    """``"sxx,sxy,syx,syy"`` -> [[sxx, sxy], [syx, syy]]; None stays None."""
    if text is None:
        return None
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        vals = []
    if len(vals) != 4:
        raise CellsynthError(f"{what} {text!r}: give four numbers sxx,sxy,syx,syy")
    return [vals[:2], vals[2:]]
