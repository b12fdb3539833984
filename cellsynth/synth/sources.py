"""The inputs of a synth run, loaded and checked before anything is written: the StyleGAN3 mask
generator, the Pix2PixHD translator(s), a folder of real masks, and the checkpoints' sha256s
for the manifest."""

from __future__ import annotations

from dataclasses import dataclass, field

from cellsynth import models
from cellsynth.atomic import file_sha256
from cellsynth.errors import CellsynthError, require
from cellsynth.pix2pixhd.options import DEFAULT_MARGIN
from cellsynth.synth.options import SynthOptions, parse_source


@dataclass
class Inputs:
    """What the options point at, loaded."""

    generator: object = None  # cellsynth.stylegan3.generate.MaskGenerator
    translator: object = None  # cellsynth.pix2pixhd.translator.Translator (images)
    spot_translator: object = None  # the same, rendering spot masks
    mask_files: tuple[str, ...] = ()
    checkpoints: dict = field(default_factory=dict)  # what: {path, sha256}
    out_channels: int = 1  # channels of the images before puncta


def _generator_class():
    from cellsynth.stylegan3.generate import MaskGenerator

    return MaskGenerator


def _translator_class():
    from cellsynth.pix2pixhd.translator import Translator

    return Translator


def _load(cls, what: str, path, device, missing: str | None, **kw):
    """``cls()`` (a function importing the class) loaded from ``path``; CellsynthError with
    ``missing`` when given, or when the class cannot be imported."""
    if missing:
        raise CellsynthError(missing)
    try:
        loader = cls()
    except ImportError as exc:
        raise CellsynthError(f"the {what} is not available ({exc})") from None
    return loader.load(path, device=device, **kw)


def load_generator(path, device, fp32: bool = False):
    """A StyleGAN3 mask generator whose snapshot records a usable mask encoding."""
    from cellsynth.tools.codec import ENCODINGS

    path = models.lookup(path, "stylegan3")
    missing = not path.is_file() and (
        f"{path}: no such stylegan3 checkpoint{models.hint('stylegan3')}; train one with "
        "`cellsynth stylegan3 train` and give its network-snapshot-*.pt"
    )
    gen = _load(_generator_class, "stylegan3 generator", path, device, missing, fp32=fp32)
    if not gen.encoding:
        raise CellsynthError(
            f"{path}: the snapshot does not record its mask encoding; cannot decode its masks"
        )
    if gen.encoding not in ENCODINGS or ENCODINGS[gen.encoding] != gen.channels:
        raise CellsynthError(
            f"{path}: {gen.channels}-channel generator but encoding {gen.encoding!r} needs "
            f"{ENCODINGS.get(gen.encoding, '?')} channels; the snapshot is inconsistent"
        )
    return gen


def load_translator(
    path,
    device,
    what: str,
    dechecker: str = "auto",
    margin: int = DEFAULT_MARGIN,
    blur: float | None = None,
    appearance: str = "auto",
):
    """A Pix2PixHD translator (checkpoint or run folder) that takes 2-class masks;
    ``dechecker``: auto, on or off (see :mod:`cellsynth.pix2pixhd.checkerboard`); ``margin``:
    its mirrored context, px; ``blur``: the last smoothing's sigma (None: the file's);
    ``appearance``: how a model with a feature encoder draws its features (auto, image or
    clusters; see :mod:`cellsynth.pix2pixhd.clusters`)."""
    path = models.lookup(path, "pix2pixhd")
    missing = not path.exists() and (
        f"{path}: no such pix2pixhd checkpoint ({what}){models.hint('pix2pixhd')}; train one "
        "with `cellsynth pix2pixhd train` and give its latest.pt or run folder"
    )
    choice = {"auto": None, "on": True, "off": False}[dechecker]
    tr = _load(
        _translator_class,
        "pix2pixhd translator",
        path,
        device,
        missing,
        dechecker=choice,
        margin=margin,
        blur=blur,
        appearance=appearance,
    )
    if tr.label_nc == 1:
        raise CellsynthError(
            f"{path}: the {what} model takes label_nc=1, but masks carry 2 classes "
            "(0 background, 1 object); retrain with label_nc >= 2"
        )
    return tr


def _translator_record(path, tr) -> dict:
    from cellsynth.pix2pixhd.checkpoints import resolve_checkpoint

    return {
        "path": path,
        "sha256": file_sha256(resolve_checkpoint(path)),
        "dechecker": tr.dechecker_period,  # what was done, not what was asked (auto resolved)
        "margin": tr.margin,
        "blur": tr.blur,
        "appearance": tr.appearance,
    }


def _device(opts: SynthOptions) -> str | None:
    src, sp = opts.sources, opts.spots
    if src.masks_kind == "stylegan3" or src.images_kind == "pix2pixhd" or sp.model:
        import torch

        if opts.run.device is None:
            return "cuda" if torch.cuda.is_available() else "cpu"
    return opts.run.device


def _mask_generator(opts: SynthOptions, device, inputs: Inputs) -> None:
    path, class_idx = opts.sources.source("masks")[1], opts.gan.class_idx
    gen = load_generator(path, device, fp32=opts.gan.fp32)
    if gen.num_classes and class_idx is None and gen.class_weights is None:
        raise CellsynthError(
            f"{path}: the generator is conditional ({gen.num_classes} classes) and does not "
            "record its class frequencies; pass --class"
        )
    if not gen.num_classes and class_idx is not None:
        raise CellsynthError(f"{path}: --class given, but the generator is unconditional")
    gen.check_options(trunc=opts.gan.trunc, debias=opts.gan.debias)
    inputs.generator = gen
    inputs.checkpoints["masks"] = {
        "path": path,
        "sha256": file_sha256(models.lookup(path, "stylegan3")),
        "precision": gen.config.get("precision", "fp32"),
        "trunc": gen.trunc_for(opts.gan.trunc),
        "debias": gen.debiases(opts.gan.debias),
        "decode": gen.decode_kwargs(**opts.decode.codec_kwargs()),
    }


def _spots_model(opts: SynthOptions, device, inputs: Inputs) -> None:
    spec = opts.spots.model
    kind, path = parse_source(spec, "spots-model")
    require(kind == "pix2pixhd", f"--spots-model {spec!r}: use pix2pixhd:PATH")
    src = opts.sources
    tr = load_translator(path, device, "spots", src.dechecker, src.margin, src.blur, src.appearance)
    if tr.output_nc != 1:
        raise CellsynthError(
            f"{path}: the spots model makes {tr.output_nc}-channel images; "
            "a spots model must make 1-channel images"
        )
    inputs.spot_translator = tr
    inputs.checkpoints["spots_model"] = _translator_record(path, tr)


def _check_spot_channels(opts: SynthOptions, channels: int) -> None:
    sp = opts.spots
    if sp.count > 0 and sp.mode == "add" and sp.channel is not None:
        require(
            -channels <= int(sp.channel) < channels,
            f"--spots-channel {sp.channel}: the images have {channels} channel(s)",
        )
    if sp.count > 0 and sp.mode == "channel":
        require(
            channels < 4,
            f"--spots-mode channel: images already have {channels} channels (at most 4)",
        )


def open_inputs(opts: SynthOptions) -> Inputs:
    """Load and check every input of the (checked) options; nothing is written."""
    src = opts.sources
    inputs = Inputs(out_channels=opts.render.channels)
    if src.masks_kind == "dir":
        from cellsynth.datasets.canonical import resolve_split
        from cellsynth.datasets.io import list_images

        root = resolve_split(src.source("masks")[1])
        inputs.mask_files = tuple(str(p) for p in list_images(root / "masks", "masks"))
    device = _device(opts)
    if src.masks_kind == "stylegan3":
        _mask_generator(opts, device, inputs)
    elif opts.gan.class_idx is not None:
        raise CellsynthError("--class needs --masks stylegan3:PATH")
    if src.images_kind == "pix2pixhd":
        path = src.source("images")[1]
        tr = inputs.translator = load_translator(
            path, device, "images", src.dechecker, src.margin, src.blur, src.appearance
        )
        inputs.out_channels = tr.output_nc
        inputs.checkpoints["images"] = _translator_record(path, tr)
    if opts.spots.model is not None:
        _spots_model(opts, device, inputs)
    _check_spot_channels(opts, inputs.out_channels)
    return inputs
