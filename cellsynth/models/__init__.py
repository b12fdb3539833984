"""Shipped pretrained models: the name -> file registry every checkpoint option consults.

Each model lives in its own folder here, ``cellsynth/models/NAME/``, with

- its weights: weights-only checkpoints (tensors and a JSON config, loaded with
  ``torch.load(..., weights_only=True)``; floating tensors stored in fp16 to stay small), one file
  per kind ("stylegan3": a mask generator, "pix2pixhd": a mask -> image translator); a trained
  segmenter ("segmenter") is the folder ``Segmenter.save`` writes (``weights.pt`` of tensors,
  ``options.json``, ``info.json``), its card entry naming the weights file and the segmenter;
- ``card.json``: for each file its kind, name, sha256 and size, and the figures of the model card;
- ``MODEL_CARD.md``: the card a person reads (data and license, the command that trained it, CPU
  time, the goal figures, what still looks wrong) and a PNG grid of real vs generated beside it.

:func:`resolve` turns what a user typed into a file: an existing path is used as it is (as
before), otherwise a shipped name of that kind (``stylegan3 generate --network dsb2018-nuclei``,
``synth --masks stylegan3:dsb2018-nuclei``); anything else is one clear error listing the names.
:func:`segmenter_folder` does the same for a trained segmenter (``benchmark run --load
stardist=dsb2018-nuclei``): a saved segmenter folder, or the shipped one of that name.
:func:`export_weights` writes such a weights-only copy of a training checkpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from cellsynth.atomic import file_sha256
from cellsynth.errors import CellsynthError

MODELS_DIR = Path(__file__).resolve().parent
KINDS = ("stylegan3", "pix2pixhd", "segmenter")
CARD_JSON = "card.json"
CARD_MD = "MODEL_CARD.md"


@dataclass(frozen=True)
class ShippedModel:
    """One shipped weights file."""

    name: str
    kind: str
    path: Path
    sha256: str
    bytes: int
    folder: Path
    info: dict = field(default_factory=dict, compare=False)

    @property
    def card(self) -> Path:
        return self.folder / CARD_MD

    @property
    def segmenter(self) -> str | None:
        """The segmenter's name (kind "segmenter" only)."""
        return self.info.get("segmenter") if self.kind == "segmenter" else None

    @property
    def label(self) -> str:
        """``name`` (``name/segmenter`` for a segmenter) for listings."""
        return f"{self.name}/{self.segmenter}" if self.segmenter else self.name


def _read_card(folder: Path) -> dict:
    try:
        card = json.loads((folder / CARD_JSON).read_text())
    except (OSError, ValueError) as exc:
        raise CellsynthError(f"{folder / CARD_JSON}: unreadable model card ({exc})") from None
    if not isinstance(card, dict) or not isinstance(card.get("files"), list):
        raise CellsynthError(f"{folder / CARD_JSON}: a model card needs a 'files' list")
    return card


def shipped(root: str | os.PathLike | None = None) -> list[ShippedModel]:
    """Every shipped weights file under ``root`` (default: this package's folder), sorted."""
    root = Path(root) if root is not None else MODELS_DIR
    out = []
    for card_path in sorted(root.glob(f"*/{CARD_JSON}")):
        folder = card_path.parent
        card = _read_card(folder)
        for entry in card["files"]:
            kind = entry.get("kind")
            if kind not in KINDS:
                raise CellsynthError(f"{card_path}: unknown model kind {kind!r}")
            if kind == "segmenter" and not entry.get("segmenter"):
                raise CellsynthError(f"{card_path}: a segmenter entry needs 'segmenter'")
            out.append(
                ShippedModel(
                    name=str(entry.get("name") or folder.name),
                    kind=kind,
                    path=folder / entry["file"],
                    sha256=str(entry["sha256"]),
                    bytes=int(entry["bytes"]),
                    folder=folder,
                    info=entry,
                )
            )
    return sorted(out, key=lambda m: (m.name, m.kind, m.segmenter or ""))


def names(kind: str, root=None, segmenter: str | None = None) -> list[str]:
    return [
        m.name
        for m in shipped(root)
        if m.kind == kind and (segmenter is None or m.segmenter == segmenter)
    ]


def find(name: str, kind: str, root=None, segmenter: str | None = None) -> ShippedModel | None:
    """The shipped ``kind`` model ``name`` (for kind "segmenter": of that ``segmenter``)."""
    for m in shipped(root):
        if m.name == name and m.kind == kind and (segmenter is None or m.segmenter == segmenter):
            return m
    return None


def segmenter_folder(spec: str | os.PathLike, segmenter: str, root=None) -> Path:
    """The folder of a trained ``segmenter``: ``spec`` as a path when it is a folder, else the
    shipped segmenter of that name.

    Raises:
        CellsynthError: neither a folder nor a shipped name (the line lists the shipped names),
            or a shipped file missing from the installation.
    """
    path = Path(spec)
    if path.is_dir():
        return path
    model = find(str(spec), "segmenter", root, segmenter=segmenter)
    if model is None:
        known = ", ".join(names("segmenter", root, segmenter)) or "none"
        raise CellsynthError(
            f"--load {segmenter}={spec}: no such folder, and no shipped {segmenter} model of that "
            f"name (shipped: {known}; see `cellsynth models`)"
        )
    return _installed(model, spec).parent


def resolve(spec: str | os.PathLike, kind: str, option: str = "--network", root=None) -> Path:
    """The file ``spec`` names: an existing path as it is, else the shipped ``kind`` model of
    that name.

    Raises:
        CellsynthError: neither a path nor a shipped name (the line lists the shipped names), or
            a shipped file that is missing from the installation.
    """
    if kind not in KINDS:
        raise CellsynthError(f"unknown model kind {kind!r}; use one of {', '.join(KINDS)}")
    path = lookup(spec, kind, root)
    if not path.exists():
        known = ", ".join(names(kind, root)) or "none"
        raise CellsynthError(
            f"{option} {spec}: no such file, and no shipped {kind} model of that name "
            f"(shipped: {known}; see `cellsynth models`)"
        )
    return path


def lookup(spec: str | os.PathLike, kind: str, root=None) -> Path:
    """``spec`` as a path when it exists or names no shipped ``kind`` model; else the shipped
    file (the loaders call this, then give their own error for a path that does not exist)."""
    path = Path(spec)
    if path.exists():
        return path
    model = find(str(spec), kind, root)
    if model is None:
        return path
    return _installed(model, spec)


def _installed(model: ShippedModel, spec) -> Path:
    """``model``'s file, or CellsynthError when the installation lacks it."""
    if not model.path.is_file():
        raise CellsynthError(
            f"{spec}: the shipped file {model.path} is missing; reinstall cellsynth"
        )
    return model.path


def hint(kind: str, root=None) -> str:
    """`` (or a shipped name: a, b)`` for error lines; empty when none is shipped."""
    known = names(kind, root)
    return f" (or a shipped {kind} model name: {', '.join(known)})" if known else ""


def verify(model: ShippedModel) -> None:
    """Raise CellsynthError unless the file's size and sha256 match its card."""
    if not model.path.is_file():
        raise CellsynthError(f"{model.path}: shipped file missing")
    size = model.path.stat().st_size
    digest = file_sha256(model.path)
    if size != model.bytes or digest != model.sha256:
        raise CellsynthError(
            f"{model.path}: does not match its card (size {size} vs {model.bytes}, sha256 "
            f"{digest[:12]}... vs {model.sha256[:12]}...)"
        )


def export_weights(
    src: str | os.PathLike,
    dest: str | os.PathLike,
    keep: tuple[str, ...],
    kind: str,
    half: bool = True,
    settings: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a weights-only copy of checkpoint ``src`` to ``dest``: only the ``keep`` entries
    (state dicts), plus its kind and config; floating tensors in fp16 when ``half`` (they load
    back into float32 modules unchanged apart from that rounding). ``settings`` are added to the
    config (e.g. ``{"trunc": 0.8}``, the truncation psi a mask generator samples at by default);
    ``extra`` entries (name -> {key: tensor}) are stored as they are, e.g. a translator's
    ``appearance`` arrays. Atomic; refuses to overwrite.
    """
    import torch

    from cellsynth.training.checkpoint import load_checkpoint, save_checkpoint

    dest = Path(dest)
    if dest.exists():
        raise CellsynthError(f"{dest}: already exists; remove it or choose another name")
    data = load_checkpoint(src, kind=kind)
    missing = [k for k in keep if k not in data]
    if missing:
        raise CellsynthError(f"{src}: has no {', '.join(missing)} entry to export")

    def small(t):
        return t.half() if half and torch.is_floating_point(t) else t

    state = {k: {n: small(t) for n, t in data[k].items()} for k in keep}
    state.update(extra or {})
    origin = Path(src).name  # an export of an export keeps the chain: "a.pt <- latest.pt"
    if data["config"].get("exported_from"):
        origin = f"{origin} <- {data['config']['exported_from']}"
    config = dict(
        data["config"],
        **(settings or {}),
        exported_from=origin,
        storage="fp16" if half else "fp32",
    )
    return save_checkpoint(dest, state, kind, config)
