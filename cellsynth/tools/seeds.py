"""Seed lists as users type them: ``--seeds 0-99,120`` (the gen_images habit)."""

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
