"""Pix2PixHD options: one dataclass with the original flag names, checked in one place.

The command line (``cellsynth pix2pixhd train/test``) fills an :class:`Options`; the run folder
keeps it as ``opt.json`` and every checkpoint carries it as its JSON config, so a checkpoint
alone is enough to rebuild the networks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, fields

from cellsynth.errors import CellsynthError

RESIZE_OR_CROP = ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none")
GAN_MODES = ("lsgan", "vanilla", "hinge")
NET_G = ("global", "local")
# a Translator's mirrored context around each map, px (see Translator.translate_batch)
DEFAULT_MARGIN = 32


def check_blur(blur, where: str = "the translator's blur") -> float:
    """A Gaussian sigma in pixels: a finite number >= 0 (CellsynthError naming ``where``)."""
    ok = isinstance(blur, numbers.Real) and not isinstance(blur, bool)
    if not ok or not math.isfinite(blur) or blur < 0:
        raise CellsynthError(f"{where} must be a finite number >= 0 (px), not {blur!r}")
    return float(blur)


def check_margin(margin, where: str = "the translator's margin") -> int:
    """A mirrored margin in pixels: a whole number >= 0 (CellsynthError naming ``where``)."""
    if isinstance(margin, bool) or not isinstance(margin, numbers.Integral) or margin < 0:
        raise CellsynthError(f"{where} must be a whole number >= 0, not {margin!r}")
    return int(margin)


@dataclass
class Options:
    """Every Pix2PixHD setting (names as in the original flags)."""

    # experiment
    name: str = "label2cell"
    dataroot: str | None = None
    checkpoints_dir: str = "./checkpoints"
    gpus: int = 1
    device: str = "auto"
    seed: int = 0
    # data
    phase: str = "train"
    label_nc: int | None = None  # None: read from pairs.json
    output_nc: int | None = None  # None: read from pairs.json (image channels)
    resize_or_crop: str = "scale_width"
    loadSize: int = 256
    fineSize: int = 256
    no_flip: bool = False
    batchSize: int = 1
    max_dataset_size: int | None = None
    # generator
    netG: str = "global"
    ngf: int = 64
    n_downsample_global: int = 4
    n_blocks_global: int = 9
    n_local_enhancers: int = 1
    n_blocks_local: int = 3
    niter_fix_global: int = 0
    # inputs
    no_instance: bool = False
    instance_feat: bool = False
    label_feat: bool = False
    feat_num: int = 3
    nef: int = 16
    n_downsample_E: int = 4
    n_clusters: int = 10
    # discriminator and losses
    ndf: int = 64
    n_layers_D: int = 3
    num_D: int = 2
    no_lsgan: bool = False
    gan_mode: str | None = None  # None: lsgan, or vanilla with --no_lsgan
    no_ganFeat_loss: bool = False
    lambda_feat: float = 10.0
    no_vgg_loss: bool = False
    vgg_weights: str | None = None
    # optimisation
    lr: float = 0.0002
    beta1: float = 0.5
    niter: int = 100
    niter_decay: int = 100
    fp16: bool = False
    # bookkeeping
    continue_train: bool = False
    load_pretrain: str | None = None  # a generator (checkpoint or shipped name) to start from
    d_warmup: int = 0  # first iterations of a run in which only D learns (G and E held fixed)
    which_epoch: str = "latest"
    display_freq: int = 100
    print_freq: int = 100
    save_latest_freq: int = 1000
    save_epoch_freq: int = 10
    max_minutes: float | None = None
    max_iters: int | None = None  # stop (and save latest.pt) after this many iterations in total
    progress: bool = True

    # ---- derived values -------------------------------------------------------------------
    @property
    def use_features(self) -> bool:
        """Whether the feature encoder adds ``feat_num`` channels to the generator input."""
        return bool(self.instance_feat or self.label_feat)

    @property
    def loss_mode(self) -> str:
        """The GAN loss: ``gan_mode`` if given, else lsgan (vanilla with ``no_lsgan``)."""
        if self.gan_mode is not None:
            return self.gan_mode
        return "vanilla" if self.no_lsgan else "lsgan"

    @property
    def label_channels(self) -> int:
        """Channels of the semantic part of the input (one-hot, or 1 for direct labels)."""
        return int(self.label_nc) if self.label_nc else 1

    @property
    def input_nc_G(self) -> int:
        """Generator input channels: labels + edge map + encoded features."""
        n = self.label_channels + (0 if self.no_instance else 1)
        return n + (self.feat_num if self.use_features else 0)

    @property
    def input_nc_D(self) -> int:
        """Discriminator input channels: labels + edge map + image."""
        return self.label_channels + (0 if self.no_instance else 1) + int(self.output_nc)

    @property
    def generator_multiple(self) -> int:
        """The generator's total downsampling: what a translation pads each map to (the
        encoder does not run then)."""
        return 2 ** (
            self.n_downsample_global + (self.n_local_enhancers if self.netG == "local" else 0)
        )

    @property
    def size_multiple(self) -> int:
        """Training image sides must be multiples of this (the networks' total downsampling,
        the encoder's included)."""
        if self.use_features:
            return max(self.generator_multiple, 2**self.n_downsample_E)
        return self.generator_multiple

    @property
    def total_epochs(self) -> int:
        return int(self.niter) + int(self.niter_decay)

    # ---- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, strict: bool = False) -> Options:
        """Options from a dict (e.g. opt.json); unknown keys are an error when ``strict``."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown and strict:
            raise CellsynthError(f"unknown pix2pixhd options: {', '.join(unknown)}")
        return cls(**{k: v for k, v in data.items() if k in names}).check()

    def replace(self, **changes) -> Options:
        return dataclasses.replace(self, **changes).check()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def check(self) -> Options:
        """Validate the values; raise CellsynthError naming the bad option."""

        def need(cond, msg):
            if not cond:
                raise CellsynthError(f"pix2pixhd option {msg}")

        need(self.netG in NET_G, f"--netG must be one of {NET_G}, got {self.netG!r}")
        need(
            self.resize_or_crop in RESIZE_OR_CROP,
            f"--resize_or_crop must be one of {RESIZE_OR_CROP}, got {self.resize_or_crop!r}",
        )
        need(
            self.gan_mode is None or self.gan_mode in GAN_MODES,
            f"--gan_mode must be one of {GAN_MODES}, got {self.gan_mode!r}",
        )
        need(self.label_nc is None or self.label_nc >= 0, "--label_nc must be >= 0")
        need(self.output_nc is None or 1 <= self.output_nc <= 4, "--output_nc must be 1 to 4")
        for key in ("ngf", "ndf", "nef", "feat_num", "batchSize", "num_D", "n_layers_D"):
            need(getattr(self, key) >= 1, f"--{key} must be >= 1")
        for key in ("n_downsample_global", "n_blocks_global", "n_blocks_local", "niter"):
            need(getattr(self, key) >= 0, f"--{key} must be >= 0")
        need(self.n_local_enhancers >= 1, "--n_local_enhancers must be >= 1")
        need(self.niter_decay >= 0, "--niter_decay must be >= 0")
        need(self.n_clusters >= 1, "--n_clusters must be >= 1")
        need(self.d_warmup >= 0, "--d_warmup must be >= 0")
        need(self.loadSize >= 1 and self.fineSize >= 1, "--loadSize/--fineSize must be >= 1")
        need(self.gpus >= 0, "--gpus must be >= 0")
        need(self.device in ("auto", "cpu", "cuda"), "--device must be auto, cpu or cuda")
        need(self.lr > 0, "--lr must be > 0")
        need(
            not (self.load_pretrain and self.continue_train),
            "--load_pretrain starts a new run; it cannot be combined with --continue_train",
        )
        for key in ("display_freq", "print_freq", "save_latest_freq", "save_epoch_freq"):
            need(getattr(self, key) >= 1, f"--{key} must be >= 1")
        need(bool(self.name) and "/" not in self.name, "--name must be a plain folder name")
        need(
            str(self.which_epoch) == "latest" or str(self.which_epoch).isdigit(),
            f"--which_epoch must be 'latest' or an epoch number, got {self.which_epoch!r}",
        )
        return self
