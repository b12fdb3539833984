"""Where a Pix2PixHD checkpoint is: a ``.pt`` file as given, or one inside a run folder.

Shared by the translator, the feature clusters and ``cellsynth synth`` (which records the
checkpoint's sha256); imports no other pix2pixhd module. Shipped model names resolve here too.
"""

from __future__ import annotations

import os
from pathlib import Path

from cellsynth.errors import CellsynthError


def checkpoint_path(run_dir: str | os.PathLike, which_epoch: str | int = "latest") -> Path:
    """The checkpoint file of a run folder: ``latest.pt``, or ``epoch_N.pt`` for epoch N."""
    which = str(which_epoch)
    return Path(run_dir) / ("latest.pt" if which == "latest" else f"epoch_{int(which)}.pt")


def resolve_checkpoint(path: str | os.PathLike, which_epoch: str | int = "latest") -> Path:
    """A .pt file as given, ``latest.pt`` / ``epoch_N.pt`` inside a run folder, or the file of a
    shipped model name (see :mod:`cellsynth.models`)."""
    from cellsynth import models

    path = models.lookup(path, "pix2pixhd")
    if path.is_dir():
        ckpt = checkpoint_path(path, which_epoch)
        if not ckpt.is_file():
            raise CellsynthError(
                f"{ckpt}: no such checkpoint in run folder {path}; check --which_epoch "
                "(latest or an epoch with a saved epoch_N.pt)"
            )
        return ckpt
    if not path.is_file():
        raise CellsynthError(
            f"{path}: no such pix2pixhd checkpoint or run folder{models.hint('pix2pixhd')}; "
            "train one with `cellsynth pix2pixhd train` or give the right path"
        )
    return path
