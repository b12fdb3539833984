"""Safe checkpoints: tensors and a JSON-able config only, written atomically, loaded with
``torch.load(..., weights_only=True)`` so that loading never runs code.

A checkpoint is a dict whose values are tensors, (nested) dicts/lists of tensors and plain
Python scalars/strings (state dicts, optimiser states, RNG states as uint8 tensors) plus a
``"config"`` entry holding JSON-able options and a ``"kind"`` string naming what it is
(e.g. ``"stylegan3"``, ``"pix2pixhd"``) so a checkpoint of the wrong kind is refused clearly.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from cellsynth.atomic import atomic_path
from cellsynth.errors import CellsynthError


def save_checkpoint(path: str | os.PathLike, state: dict, kind: str, config: dict) -> Path:
    """Write ``state`` plus ``kind`` and ``config`` to ``path`` atomically.

    ``config`` must be JSON-serialisable (it is round-tripped through JSON to make sure).
    """
    config = json.loads(json.dumps(config))
    payload = dict(state, kind=kind, config=config)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def load_checkpoint(path: str | os.PathLike, kind: str | None = None, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; check its ``kind`` if given.

    Raises :class:`CellsynthError` for a missing, truncated/corrupt or wrong-kind file.
    """
    path = Path(path)
    if not path.is_file():
        raise CellsynthError(f"{path}: no such checkpoint")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CellsynthError(
            f"{path}: not a readable cellsynth checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); it may be truncated or corrupt"
        ) from None
    if not isinstance(data, dict) or "config" not in data or "kind" not in data:
        raise CellsynthError(f"{path}: not a cellsynth checkpoint (no kind/config entries)")
    if kind is not None and data["kind"] != kind:
        raise CellsynthError(
            f"{path}: this is a {data['kind']!r} checkpoint, but a {kind!r} one is needed"
        )
    return data


def get_rng_state() -> dict:
    """RNG states of python, numpy and torch (CPU and CUDA) as tensors (weights_only-safe)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": torch.tensor(py[1], dtype=torch.int64),
        "python_has_gauss": int(py[2] is not None),
        "python_gauss": float(py[2] or 0.0),
        "python_version": int(py[0]),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` returned."""
    random.setstate(
        (
            state["python_version"],
            tuple(int(v) for v in state["python"].tolist()),
            float(state["python_gauss"]) if state["python_has_gauss"] else None,
        )
    )
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            int(state["numpy_pos"]),
            int(state["numpy_has_gauss"]),
            float(state["numpy_gauss"]),
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
