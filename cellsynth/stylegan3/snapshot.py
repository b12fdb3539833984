"""StyleGAN3 snapshots: save, load, rebuild networks, find the newest complete one.

A snapshot ``network-snapshot-KKKKKK.FFF.pt`` (the kimg it was taken at, with three decimals:
the exact image count, so snapshots below 1 kimg or a fraction apart never share a name; the
names sort in training order) is a safe checkpoint (tensors + JSON config, see
:mod:`cellsynth.training.checkpoint`) of kind ``"stylegan3"`` holding:

- ``G``, ``D``, ``G_ema``: state dicts; ``G_opt``, ``D_opt``: optimiser states;
- ``augment_p``, ``ada_stats`` (sum of signs, count), ``pl_mean``;
- ``rng``: the RNG states of the process; ``sampler``: the data order state;
- ``counters``: cur_nimg, cur_tick, batch_idx, tick_start_nimg;

and in ``config``: ``build`` (the :func:`build_networks` arguments), ``G_kwargs``/``D_kwargs``
(the networks' ``init_kwargs``), ``resolution``, ``channels``, ``encoding``, ``num_classes``,
``classes`` and ``training_options``. Writes are atomic, so a killed run leaves either the
previous snapshot or the new complete one, never a half-written file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cellsynth.errors import CellsynthError

KIND = "stylegan3"
# network-snapshot-KKKKKK.FFF.pt; earlier versions wrote network-snapshot-KKKKKK.pt (whole kimg)
_SNAP = re.compile(r"^network-snapshot-(\d{6,})(?:\.(\d{3}))?\.pt$")


def kimg_stamp(cur_nimg: int) -> str:
    """``KKKKKK.FFF``: ``cur_nimg`` images as kimg with three decimals (exact)."""
    return f"{int(cur_nimg) // 1000:06d}.{int(cur_nimg) % 1000:03d}"


def snapshot_name(cur_nimg: int) -> str:
    """File name of the snapshot taken at ``cur_nimg`` images."""
    return f"network-snapshot-{kimg_stamp(cur_nimg)}.pt"


def snapshot_nimg(name: str) -> int | None:
    """Images trained when snapshot ``name`` was taken (from its file name), or None."""
    m = _SNAP.match(name)
    if m is None:
        return None
    return int(m.group(1)) * 1000 + int(m.group(2) or 0)


def save_snapshot(path: str | os.PathLike, state: dict, config: dict) -> Path:
    """Write a snapshot atomically (see the module docstring for what ``state`` holds)."""
    from cellsynth.training.checkpoint import save_checkpoint

    return save_checkpoint(path, state, kind=KIND, config=config)


def load_snapshot(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a snapshot (weights_only) from a path or a shipped model name (see
    :mod:`cellsynth.models`); raises CellsynthError for missing/corrupt/wrong kind."""
    from cellsynth import models
    from cellsynth.training.checkpoint import load_checkpoint

    path = models.lookup(path, "stylegan3")
    if not path.exists():
        raise CellsynthError(f"{path}: no such snapshot{models.hint('stylegan3')}")
    data = load_checkpoint(path, kind=KIND, map_location=map_location)
    cfg = data["config"]
    for key in ("build", "resolution", "channels"):
        if key not in cfg:
            raise CellsynthError(f"{path}: snapshot config lacks {key!r}; not a cellsynth snapshot")
    if "G_ema" not in data and "G" not in data:
        raise CellsynthError(f"{path}: snapshot holds no generator weights")
    return data


def build_from_config(cfg: dict, ops_impl: str | None = None, num_fp16_res: int | None = None):
    """Rebuild (G, D) from a snapshot config's ``build`` arguments (weights not loaded);
    ``num_fp16_res`` replaces the stored one (it decides precision only, never the weights)."""
    from cellsynth.stylegan3.networks import build_networks

    build = dict(cfg["build"])
    if num_fp16_res is not None:
        build["num_fp16_res"] = int(num_fp16_res)
    if ops_impl is not None:
        os.environ["CELLSYNTH_OPS_IMPL"] = ops_impl
    return build_networks(**build)


def load_generator(path: str | os.PathLike, device="cpu", which: str = "G_ema", fp32=False):
    """Load the generator (``G_ema`` by default) of a snapshot; returns (G in eval mode, config).

    The highest-resolution layers (those the original runs in fp16, whatever the snapshot was
    trained with) run in fp16 on CUDA and in bf16 on a CPU with native bf16, unless ``fp32``;
    ``config["precision"]`` says which ran ("fp16", "bf16" or "fp32")."""
    from cellsynth.stylegan3.networks_stylegan2 import use_mixed_precision

    data = load_snapshot(path)
    G, _ = build_from_config(data["config"], num_fp16_res=0 if fp32 else 4)
    key = which if which in data else "G"
    try:
        G.load_state_dict(data[key])
    except RuntimeError as exc:
        raise CellsynthError(
            f"{path}: generator weights do not fit the network the config describes "
            f"({str(exc).splitlines()[0]})"
        ) from None
    G = G.eval().requires_grad_(False).to(device)
    config = dict(data["config"], precision=use_mixed_precision(G, device, fp32))
    return G, config


def list_snapshots(folder: str | os.PathLike) -> list[Path]:
    """Complete snapshots in ``folder`` and its run sub-folders, oldest first (by mtime, then
    image count; old ``network-snapshot-KKKKKK.pt`` names are listed too).

    Temporary files of an interrupted write (``.network-snapshot-...tmp``) are never listed.
    """
    folder = Path(folder)
    found = []
    for p in list(folder.glob("network-snapshot-*.pt")) + list(
        folder.glob("*/network-snapshot-*.pt")
    ):
        nimg = snapshot_nimg(p.name)
        if nimg is not None and p.is_file():
            found.append((p.stat().st_mtime, nimg, str(p), p))
    return [p for *_, p in sorted(found)]


def clean_stale_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of interrupted atomic writes (``.NAME.*.tmp``) in a run folder.

    Only call this while holding the run folder's lock (no other run writes there). Returns
    the removed paths.
    """
    removed = []
    for p in Path(run_dir).glob(".*.tmp"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def find_latest(outdir: str | os.PathLike) -> Path:
    """The newest loadable snapshot under ``outdir`` (for ``--resume latest``)."""
    snaps = list_snapshots(outdir)
    for p in reversed(snaps):
        try:
            load_snapshot(p)
        except CellsynthError:
            continue
        return p
    raise CellsynthError(
        f"--resume latest: no complete network-snapshot-*.pt under {outdir}; "
        "train without --resume first"
    )
