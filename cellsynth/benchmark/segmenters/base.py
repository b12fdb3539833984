"""The one small interface every segmenter implements, and the registry that finds them by name.

A segmenter module defines a subclass of :class:`Segmenter` decorated with ``@register``::

    @register
    class Classical(Segmenter):
        name = "classical"
        requires = ""                      # pip extra / package hint, "" when none
        trainable = False
        def predict(self, image): ...

- ``fit(train, workdir, budget_minutes=None, epochs=None, progress=True)`` trains on a
  :class:`cellsynth.datasets.CanonicalDataset` (optional: the default does nothing).
- ``predict(image)`` takes an H x W (x C) image as read from disk and returns uint16/uint32
  instance labels of shape H x W.
- ``save(path)`` / ``load(path)`` persist a trained model in a folder (weights only: tensors,
  numpy arrays or JSON; never pickled code).
Options are keyword arguments of the constructor and are JSON-able (``self.options``); a class
sets ``DEFAULTS`` (name -> default) and the base class refuses unknown names with one line.
``self.info`` holds what training recorded (learning curve, chosen post-processing, ...).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np

from cellsynth.errors import CellsynthError
from cellsynth.options import refuse_unknown

_REGISTRY: dict[str, type[Segmenter]] = {}

# name -> module that defines it; modules are imported on first use, so a segmenter whose
# dependencies are missing fails alone with a clear message.
MODULES = {
    "classical": "cellsynth.benchmark.segmenters.classical",
    "cellprofiler": "cellsynth.benchmark.segmenters.cellprofiler",
    "dwt": "cellsynth.benchmark.segmenters.dwt",
    "cellpose": "cellsynth.benchmark.segmenters.cellpose",
    "maskrcnn": "cellsynth.benchmark.segmenters.maskrcnn",
    "u2net": "cellsynth.benchmark.segmenters.u2net",
    "unet": "cellsynth.benchmark.segmenters.unet",
    "stardist": "cellsynth.benchmark.segmenters.stardist",
    "swin": "cellsynth.benchmark.segmenters.swin",
    "embedseg": "cellsynth.benchmark.segmenters.embedseg",
    "mesmer": "cellsynth.benchmark.segmenters.mesmer",
    "microsam": "cellsynth.benchmark.segmenters.microsam",
}


class Segmenter:
    """Base class: a named instance segmenter with optional training."""

    name: str = ""
    requires: str = ""
    trainable: bool = False
    DEFAULTS: dict | None = None  # the known options and their defaults (None: any option)

    def __init__(self, **options):
        known = self.known_options()
        if known is not None:
            refuse_unknown(self.name, options, sorted(known))
            options = {**known, **options}
        self.options = dict(options)
        self.info: dict = {}

    @classmethod
    def known_options(cls) -> dict | None:
        """Option name -> default (None: the segmenter takes any options)."""
        return cls.DEFAULTS

    def check_choice(self, key: str, allowed) -> None:
        """Refuse option ``key`` unless it is one of ``allowed``, in one line."""
        value = self.options[key]
        if value not in allowed:
            raise CellsynthError(
                f"{self.name}: unknown {key} {value!r}; use one of {', '.join(allowed)}"
            )

    def fit(
        self,
        train,
        workdir: str | os.PathLike,
        budget_minutes=None,
        epochs=None,
        progress: bool = True,
    ) -> None:
        """Train on a canonical dataset split. Default: nothing to train."""

    def predict(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def save(self, path: str | os.PathLike) -> None:
        """Persist a trained model into folder ``path`` (default: options only)."""
        import json

        from cellsynth.atomic import write_text

        Path(path).mkdir(parents=True, exist_ok=True)
        write_text(Path(path) / "options.json", json.dumps(self.options, default=str))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Segmenter:
        import json

        p = Path(path) / "options.json"
        if not p.is_file():
            raise CellsynthError(f"{path}: no saved {cls.name} model here")
        return cls(**json.loads(p.read_text()))


def register(cls: type[Segmenter]) -> type[Segmenter]:
    """Class decorator adding a segmenter to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def get_segmenter_class(name: str) -> type[Segmenter]:
    """Find a segmenter class by name; raises CellsynthError for unknown or uninstallable ones."""
    if name not in _REGISTRY:
        if name not in MODULES:
            raise CellsynthError(
                f"unknown segmenter {name!r}; available: {', '.join(sorted(MODULES))}"
            )
        try:
            importlib.import_module(MODULES[name])
        except ImportError as exc:
            raise CellsynthError(
                f"segmenter {name!r} cannot be loaded ({exc}); install the benchmark extra: "
                "pip install 'cellsynth[benchmark]'"
            ) from None
    return _REGISTRY[name]


def package_version(dist_name: str) -> str:
    """The installed version of distribution ``dist_name`` (as pip names it), or "unknown"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist_name)
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


def make_segmenter(name: str, **options) -> Segmenter:
    return get_segmenter_class(name)(**options)


def available() -> list[str]:
    return sorted(MODULES)
