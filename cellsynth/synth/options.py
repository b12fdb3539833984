"""The options of ``cellsynth synth``, declared once.

Each group is a dataclass whose fields (made with :func:`cellsynth.options.option`) give the
Python keyword of :func:`cellsynth.synth.synth`, the command-line flag, the help and the
manifest key. :class:`SynthOptions` holds the groups, fills them from flat keywords
(:meth:`SynthOptions.from_kwargs`), checks them (:meth:`SynthOptions.check`) and writes the
``options`` entry of ``manifest.json`` / ``synth_options.json`` (:meth:`SynthOptions.manifest`).

A new option is one field in one group here; the CLI flag, the keyword and the manifest entry
follow from it (and the simulator's groups are passed to ``simulate_labels`` / ``render_image``
whole, so a field named like one of their arguments needs nothing else).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import ClassVar

from cellsynth.cluster import parse_dask
from cellsynth.errors import CellsynthError, require
from cellsynth.options import keyword_map, normalise, option
from cellsynth.pix2pixhd.clusters import APPEARANCE_CHOICES
from cellsynth.pix2pixhd.options import DEFAULT_MARGIN, check_blur, check_margin
from cellsynth.stylegan3.generate import DEBIAS_CHOICES
from cellsynth.tools.combine import MODES
from cellsynth.tools.parse import parse_seeds, parse_size
from cellsynth.tools.points import PREFIX as SPOTS_PREFIX
from cellsynth.tools.points import PunctaOptions
from cellsynth.tools.threshold import GLOBAL_METHODS

BORDER = ("keep", "drop")
THRESHOLD_METHODS = ("fixed", *GLOBAL_METHODS)
NOISE_MODES = ("const", "random", "none")
SOURCE_KINDS = ("stylegan3", "pix2pixhd")
DECHECKER = ("auto", "on", "off")
MAX_DRAWS = 20  # --min-cells: latents tried per seed after its first
DASK_WRITE = ("auto", "workers", "client")  # who writes the samples of a --dask run


def parse_shard(text) -> tuple[int, int] | None:
    """``"0/4"`` -> (0, 4); None stays None."""
    if text is None:
        return None
    if isinstance(text, (tuple, list)):
        i, n = (int(v) for v in text)
    else:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if m is None:
            raise CellsynthError(f"--shard {text!r}: give i/N, e.g. 0/4")
        i, n = int(m.group(1)), int(m.group(2))
    require(n >= 1 and 0 <= i < n, f"--shard {i}/{n}: need 0 <= i < N")
    return i, n


def parse_source(spec, what: str) -> tuple[str, str | None]:
    """'stylegan3:PATH' -> ('stylegan3', PATH); 'simulate' -> ('simulate', None);
    anything else -> ('dir', spec) for masks."""
    spec = str(spec)
    if spec == "simulate":
        return "simulate", None
    for kind in SOURCE_KINDS:
        if spec.startswith(kind + ":"):
            path = spec[len(kind) + 1 :]
            require(bool(path), f"--{what} {spec!r}: give a checkpoint path after '{kind}:'")
            return kind, path
    if what == "masks":
        return "dir", spec
    raise CellsynthError(f"--images {spec!r}: use simulate or pix2pixhd:PATH")


# ---- the groups ---------------------------------------------------------------------------------
@dataclass
class SourceOptions:
    """Where masks and images come from, and which seeds."""

    masks: str = option(
        "simulate",
        help="stylegan3:PATH (a snapshot), simulate, or a canonical split folder of real masks.",
    )
    images: str = option("simulate", help="pix2pixhd:PATH or simulate.")
    dechecker: str = option(
        "auto",
        choices=DECHECKER,
        help="pix2pixhd images and spots: remove the transposed convolutions' checkerboard "
        "from each image (auto: when the translator upsamples with them). For test sets; for "
        "training data use off (segmenters trained on filtered images scored lower on real ones).",
    )
    margin: int = option(
        DEFAULT_MARGIN,
        help="pix2pixhd images and spots: pixels of each mask's mirror image translated around "
        "it and cut off again, so the image's edges get context instead of the network's zero "
        "padding.",
    )
    blur: float | None = option(
        None,
        help="pix2pixhd images and spots: Gaussian sigma (px) of a last smoothing of each image "
        "(default: what the translator file records: 0.5 for the shipped dsb2018-nuclei, chosen "
        "on its training split; else 0). For test sets; for training data use 0 (segmenters "
        "trained on blurred images scored no better on real ones).",
    )
    appearance: str = option(
        "auto",
        choices=APPEARANCE_CHOICES,
        help="pix2pixhd models with a feature encoder: image (each image takes the stain and "
        "exposure of one training image, its background and its cells together) or clusters "
        "(each cell a k-means centre of its own, as the original Pix2PixHD); auto: image when "
        "the model carries its feature bank.",
    )
    seeds: str = option("0-9", help="Seeds, e.g. 0-99,120.")

    def check(self) -> SourceOptions:
        seed_list = parse_seeds(self.seeds)
        if not isinstance(self.seeds, str):  # an int or a list: stored as text
            self.seeds = ",".join(str(s) for s in seed_list)
        normalise(self)
        self.margin = check_margin(self.margin, "--margin")
        if self.blur is not None:
            self.blur = check_blur(self.blur, "--blur")
        for what in ("masks", "images"):
            self.source(what)  # an unknown source: CellsynthError now, not later
        return self

    @property
    def seed_list(self) -> list[int]:
        return parse_seeds(self.seeds)

    def source(self, what: str) -> tuple[str, str | None]:
        """(kind, path) of ``what`` ("masks" or "images"), e.g. ("stylegan3", PATH)."""
        return parse_source(getattr(self, what), what)

    @property
    def masks_kind(self) -> str:
        return self.source("masks")[0]

    @property
    def images_kind(self) -> str:
        return self.source("images")[0]


@dataclass
class GanOptions:
    """StyleGAN3 sampling (``--masks stylegan3:PATH``)."""

    trunc: float | None = option(
        None,
        help="Truncation psi (default: the psi the generator file records, e.g. a shipped "
        "model's; 1.0 for a training snapshot).",
    )
    class_idx: int | None = option(
        None, flag="--class", key="class", help="Class (conditional GAN)."
    )
    debias: str = option(
        "auto",
        choices=DEBIAS_CHOICES,
        help="Undo the crowded-tile repeats of the generator's training data by rejection "
        "sampling (auto: when its file records them).",
    )
    noise_mode: str = option("const", choices=NOISE_MODES)
    fp32: bool = option(
        False,
        help="Run the generator in float32 (default: its mixed-precision layers in fp16 on "
        "CUDA, bf16 on CPUs with native bf16).",
    )


@dataclass
class SimulateOptions:
    """The simulator's masks (``--masks simulate``)."""

    size: tuple | int | str = option(256, text=True, help="Simulated mask size N or HxW.")
    density: float = option(0.5, help="Simulated masks.")
    mean_radius: float = option(12.0)

    def check(self) -> SimulateOptions:
        self.size = parse_size(self.size, "--size")
        normalise(self)
        return self


@dataclass
class DecodeOptions:
    """Generated (soft) masks -> instance labels (see :func:`cellsynth.tools.codec.decode_mask`;
    None: the threshold the generator file records, else the codec's default)."""

    threshold_method: str = option(
        "fixed",
        choices=THRESHOLD_METHODS,
        flag="--threshold",
        help="Foreground threshold of generated masks.",
    )
    fg_thresh: float | None = option(None, help="Default: the generator's, else the codec's.")
    boundary_thresh: float | None = option(None, help="Default: the generator's, else the codec's.")
    marker_thresh: float | None = option(None, help="Default: the generator's, else the codec's.")
    smooth: float = option(0.0, help="Gaussian sigma.")
    upscale: int = option(
        1, help="stylegan3 masks: resize the generated masks by this factor before decoding."
    )

    def check(self) -> DecodeOptions:
        normalise(self)
        require(1 <= self.upscale <= 16, f"--upscale must be 1..16, got {self.upscale}")
        return self

    def codec_kwargs(self) -> dict:
        """The thresholds given (the generator file's or the codec's defaults where None)."""
        keys = ("fg_thresh", "boundary_thresh", "marker_thresh", "smooth")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


@dataclass
class CellOptions:
    """Which cells are kept."""

    min_size: int = option(0, help="Drop smaller cells.")
    border: str = option(
        "keep", choices=BORDER, help="Keep or drop cells touching the image border."
    )
    min_cells: int | None = option(
        None,
        help="stylegan3 masks: a mask left with fewer cells (after --min-size and --border) is "
        "generated again from the seed's next latents until one has enough (at most "
        f"{MAX_DRAWS}; if none has, the draw with the most cells is kept). Default 1: no empty "
        "images; 0: every seed's first latent.",
    )

    def check(self) -> CellOptions:
        normalise(self)
        require(self.min_size >= 0, f"--min-size must be >= 0, got {self.min_size}")
        require(
            self.min_cells is None or self.min_cells >= 0,
            f"--min-cells must be >= 0, got {self.min_cells}",
        )
        return self


@dataclass
class RenderOptions:
    """The simulator's images (``--images simulate``)."""

    channels: int = option(1, help="Simulated images.")
    bit_depth: int = option(8, choices=(8, 16))


@dataclass
class SpotOptions(PunctaOptions):
    """Puncta: where they go (the shared :class:`PunctaOptions`) and how they join the image."""

    count: float = option(0.0, help="Puncta per cell (Poisson mean; 0 = none).")
    mode: str = option("add", choices=MODES, help="Add into a channel, or append as a new channel.")
    channel: int | None = option(0, text=True, help="Channel or 'all'.")
    model: str | None = option(None, help="pix2pixhd:PATH rendering spot masks.")
    image_scale: float = option(1.0, aliases=("scale_image",), help="Factor on the spots image.")
    photons: float = option(0.0, kw="photons", help="Shot noise.")
    read_noise: float = option(0.0, kw="read_noise")

    def check(self) -> SpotOptions:
        if self.channel == "all":
            self.channel = None
        elif isinstance(self.channel, str):
            try:
                self.channel = int(self.channel)
            except ValueError:
                raise CellsynthError(
                    f"--spots-channel {self.channel!r}: a number or 'all'"
                ) from None
        super().check()
        require(self.count > 0 or self.model is None, "--spots-model needs --spots-count > 0")
        return self

    def combine_kwargs(self) -> dict:
        """Keyword arguments of :func:`cellsynth.tools.combine.combine` (without the seed)."""
        return {
            "mode": self.mode,
            "channel": self.channel,
            "scale": self.image_scale,
            "photons": self.photons,
            "read_noise": self.read_noise,
        }


@dataclass
class RunOptions:
    """How the run goes; not stored (but ``batch`` with a GAN: it fixes the batches)."""

    resume: bool = option(
        False,
        help="Continue --out: skip seeds already written (same options and the same --seeds).",
    )
    shard: tuple | str | None = option(
        None, text=True, help="i/N: this run makes every N-th seed from i."
    )
    batch: int = option(8, help="GAN batch size (with --dask also the seeds of a chunk).")
    workers: int = option(0, help="Worker processes (0 = in the main process).")
    dask: str | None = option(
        None,
        help="Run on a Dask cluster: local:N (N worker processes started for the run), the "
        "address of a running scheduler (tcp://HOST:8786) or its scheduler file (.json). Needs "
        "the dask extra.",
    )
    dask_write: str = option(
        "auto",
        choices=DASK_WRITE,
        help="With --dask, who writes the samples: auto (each worker that sees --out, i.e. a "
        "shared filesystem; the client for the others), workers, or client.",
    )
    device: str | None = option(None, help="Torch device (default: cuda if available).")
    overwrite: bool = option(False, help="Replace an existing output folder.")
    progress: bool = option(False, switch=True, help="Show a progress bar.")

    def check(self) -> RunOptions:
        self.shard = parse_shard(self.shard)
        normalise(self)
        require(self.batch >= 1, f"--batch must be >= 1, got {self.batch}")
        require(self.workers >= 0, f"--workers must be >= 0, got {self.workers}")
        parse_dask(self.dask)  # a malformed --dask: one line now, before anything is loaded
        require(
            not (self.dask and self.workers),
            "give --workers (processes on this machine) or --dask (a cluster), not both",
        )
        require(
            not (self.overwrite and self.shard),
            "--overwrite with --shard would delete other shards' work",
        )
        require(not (self.overwrite and self.resume), "give --resume or --overwrite, not both")
        return self


# ---- all of them ------------------------------------------------------------------------------
def _group(cls):
    return field(default_factory=cls)


@dataclass
class SynthOptions:
    """Every option of ``cellsynth synth``, by group."""

    sources: SourceOptions = _group(SourceOptions)
    gan: GanOptions = _group(GanOptions)
    simulate: SimulateOptions = _group(SimulateOptions)
    decode: DecodeOptions = _group(DecodeOptions)
    cells: CellOptions = _group(CellOptions)
    render: RenderOptions = _group(RenderOptions)
    spots: SpotOptions = _group(SpotOptions)
    run: RunOptions = _group(RunOptions)

    # group -> (class, keyword prefix); the command line lists the flags in this order
    GROUPS: ClassVar[dict[str, tuple[type, str]]] = {
        "sources": (SourceOptions, ""),
        "gan": (GanOptions, ""),
        "simulate": (SimulateOptions, ""),
        "decode": (DecodeOptions, ""),
        "cells": (CellOptions, ""),
        "render": (RenderOptions, ""),
        "spots": (SpotOptions, SPOTS_PREFIX),
        "run": (RunOptions, ""),
    }

    @classmethod
    def from_kwargs(cls, **kwargs) -> SynthOptions:
        """Options from flat keywords (``size=64, spots_count=3, workers=2``; old spellings
        such as ``spots_psf`` too). Unchecked: call :meth:`check`."""
        where = keyword_map(cls.GROUPS)
        values: dict[str, dict] = {g: {} for g in cls.GROUPS}
        for kw, value in kwargs.items():
            if kw not in where:
                raise TypeError(f"synth() got an unexpected keyword argument {kw!r}")
            group, name = where[kw]
            values[group][name] = value
        return cls(**{g: c(**values[g]) for g, (c, _) in cls.GROUPS.items()})

    def check(self) -> SynthOptions:
        """Convert and check every group, in place (CellsynthError naming the flag)."""
        for group in self.GROUPS:
            part = getattr(self, group)
            if hasattr(part, "check"):
                part.check()
            else:
                normalise(part)
        if self.sources.masks_kind == "stylegan3":
            self.cells.min_cells = 1 if self.cells.min_cells is None else self.cells.min_cells
        else:
            require(
                self.cells.min_cells is None,
                "--min-cells applies to generated masks (--masks stylegan3:PATH) only",
            )
        if self.sources.masks_kind == "simulate":
            from cellsynth.datasets.simulate import simulate_labels

            simulate_labels(0, **dataclasses.asdict(self.simulate))  # checks its options
        if self.sources.images_kind == "simulate":
            channels = self.render.channels
            require(1 <= channels <= 4, f"--channels must be 1..4, got {channels}")
        return self

    def manifest(self) -> dict:
        """The ``options`` entry of manifest.json: what decides the samples, in JSON types."""
        src = self.sources
        doc = {
            **_stored(src),
            **_stored(self.gan),
            **_stored(self.decode),
            **_stored(self.cells),
            "spots": dataclasses.asdict(self.spots),
        }
        if src.masks_kind == "simulate":
            doc["simulate"] = {
                **dataclasses.asdict(self.simulate),
                "size": list(self.simulate.size),
            }
        if src.masks_kind == "stylegan3":
            doc["batch"] = self.run.batch  # GAN batches are fixed groups of the seed list
        if src.images_kind == "simulate":
            doc["render"] = dataclasses.asdict(self.render)
        return doc


def _stored(group) -> dict:
    """A group's fields under their manifest keys."""
    return {
        f.metadata.get("key") or f.name: getattr(group, f.name) for f in dataclasses.fields(group)
    }
