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
