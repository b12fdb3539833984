"""Shared fixtures and helpers: the real data beside the project (skipped cleanly when absent),
CPU threads, tiny StyleGAN data and snapshots, and the slow numpy references of the ops.

Test modules import the helpers with ``from conftest import ...`` (never from each other)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CELLSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not present at {path} (set CELLSYNTH_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def dsb2018_dir() -> Path:
    """../shared/data/dsb2018-fluo (canonical layout with train/ and test/)."""
    return _need(SHARED_DATA / "dsb2018-fluo")


@pytest.fixture(scope="session")
def livecell_dir() -> Path:
    """../shared/data/livecell-val (images/ + livecell_coco_val.json)."""
    return _need(SHARED_DATA / "livecell-val")


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch

        torch.set_num_threads(1)  # tiny test networks: threads only add overhead
    except ImportError:
        pass
    yield


def has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def disks_labels(seed: int, size: int = 64, n: int = 6):
    """``n`` non-overlapping disks (radius 4-7) as uint16 labels: the segmenter tests' cells."""

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    lab = np.zeros((size, size), np.uint16)
    for i in range(n):
        cy, cx = rng.integers(8, size - 8, 2)
        r = rng.integers(4, 8)
        lab[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (lab == 0)] = i + 1
    return lab


def disks_sample(seed: int, size: int = 64, n: int = 6):
    """A Sample of :func:`disks_labels` as bright disks on a noisy background."""

    from cellsynth.datasets.canonical import Sample

    lab = disks_labels(seed, size, n)
    noise = np.random.default_rng(seed + 100).normal(30, 10, lab.shape)
    img = np.clip((lab > 0) * 150.0 + noise, 0, 255).astype(np.uint8)
    return Sample(f"s{seed}", img, lab)
