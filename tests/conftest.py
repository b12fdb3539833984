"""Shared fixtures: the real data beside the project (skipped cleanly when absent), CPU threads."""

from __future__ import annotations

import os
from pathlib import Path

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


def _disks_sample(seed: int, size: int = 64, n: int = 6):
    """A Sample of ``n`` bright disks (radius 4-7, non-overlapping labels) on a noisy
    background: the tiny dataset the segmenter tests train on."""
    import numpy as np

    from cellsynth.datasets.canonical import Sample

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    lab = np.zeros((size, size), np.uint16)
    for i in range(n):
        cy, cx = rng.integers(8, size - 8, 2)
        r = rng.integers(4, 8)
        lab[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (lab == 0)] = i + 1
    noise = np.random.default_rng(seed + 100).normal(30, 10, lab.shape)
    img = np.clip((lab > 0) * 150.0 + noise, 0, 255).astype(np.uint8)
    return Sample(f"s{seed}", img, lab)


@pytest.fixture(scope="session")
def disks_sample():
    """``disks_sample(seed, size=64, n=6) -> Sample`` (see :func:`_disks_sample`)."""
    return _disks_sample


@pytest.fixture(scope="session")
def tiny_masks_zip(tmp_path_factory) -> Path:
    """A masks zip of 8 random 32x32 fbd masks (tests/test_sg3_training.py's maker)."""
    from tests.test_sg3_training import make_masks_zip

    return make_masks_zip(tmp_path_factory.mktemp("masks-zip") / "masks.zip")


@pytest.fixture(scope="session")
def sg2_snapshot(tmp_path_factory) -> Path:
    """An untrained tiny StyleGAN2 snapshot (32x32 fbd masks) written by the trainer itself
    (tests/test_sg3_generate.py's maker)."""
    from tests.test_sg3_generate import _snapshot

    return _snapshot(tmp_path_factory.mktemp("sg2-snapshot"), "stylegan2")
