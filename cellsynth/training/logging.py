"""Training logs: a plain text log, a JSON-lines stats file and TensorBoard scalars/images."""

from __future__ import annotations

import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np


def tensorboard_without_tensorflow() -> None:
    """Make TensorBoard write its event files without importing TensorFlow.

    TensorBoard imports TensorFlow whenever it is installed (the ``stardist`` extra installs
    it). That costs seconds, and a process that then loads Triton (torchvision, torch._dynamo)
    crashes with a segmentation fault. TensorBoard's own switch for this is a module named
    ``tensorboard.compat.notf``: when it imports, TensorBoard uses its bundled stub of the few
    TensorFlow file functions it needs. Registered unless TensorFlow is already loaded.
    """
    if "tensorflow" not in sys.modules:
        sys.modules.setdefault(
            "tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf")
        )


class RunLogger:
    """Writes ``log.txt``, ``stats.jsonl`` and TensorBoard events into a run folder.

    Only the main process should create one (others pass ``enabled=False``).
    """

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._tb = None
        self._t0 = time.time()
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.run_dir / "log.txt", "a", buffering=1)
        self._stats = open(self.run_dir / "stats.jsonl", "a", buffering=1)
        if tensorboard:
            try:
                tensorboard_without_tensorflow()
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir))
            except Exception as exc:  # tensorboard missing or broken: keep training
                self.print(f"TensorBoard logging off: {exc}")

    def print(self, *parts) -> None:
        """Print to stdout and append to log.txt."""
        line = " ".join(str(p) for p in parts)
        if not self.enabled:
            return
        print(line, file=sys.stdout, flush=True)
        self._log.write(line + "\n")

    def scalars(self, step: int, values: dict) -> None:
        """Record scalar values at ``step`` (e.g. kimg or iteration)."""
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items() if v is not None and np.isfinite(float(v))}
        rec = {"step": step, "time": round(time.time() - self._t0, 3), **clean}
        self._stats.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, step)

    def image(self, tag: str, step: int, image: np.ndarray) -> None:
        """Record an H x W (x C) uint8 image in TensorBoard."""
        if not self.enabled or self._tb is None:
            return
        img = image if image.ndim == 3 else image[..., None]
        self._tb.add_image(tag, img, step, dataformats="HWC")

    def close(self) -> None:
        if not self.enabled:
            return
        if self._tb is not None:
            self._tb.close()
        self._log.close()
        self._stats.close()


def read_stats(run_dir: str | os.PathLike) -> list[dict]:
    """Read back ``stats.jsonl`` (for reports and tests)."""
    path = Path(run_dir) / "stats.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
