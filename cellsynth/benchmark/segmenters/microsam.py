"""micro-sam (Archit et al., "Segment Anything for Microscopy", Nature Methods 2025): automatic
instance segmentation with a Segment Anything model, from a local checkpoint only.

Everything that segments comes from the real ``micro_sam`` package: its segmenter objects
(``get_predictor_and_segmenter``: the automatic mask generator, AMG; the instance segmentation
with its trained UNETR decoder, AIS; the automatic prompt generator, APG; their tiled variants)
and its ``automatic_instance_segmentation`` (image embeddings, the decoder or the point-grid
prompts, and its post-processing), with micro-sam's own image handling (grayscale replicated to
RGB, each channel min-max scaled to 8 bits). The network is Segment Anything's own ``Sam``
(``segment_anything``'s ``ImageEncoderViT``, ``PromptEncoder``, ``MaskDecoder`` and
``TwoWayTransformer``) in micro-sam's ``SamPredictor``; the AIS decoder is built by micro-sam's
``get_decoder``.

Where this module differs from ``micro_sam.util.get_sam_model``: the network is built here from
the shapes of the checkpoint's tensors (depth, widths, heads, window size, global attention
blocks, image size), which for SAM's vit_b / vit_l / vit_h checkpoints gives exactly the network
micro-sam builds, and also takes a smaller SAM (the tests write a tiny one). The checkpoint is
read with ``torch.load(weights_only=True)`` (micro-sam unpickles it fully), and micro-sam's
model registry is never consulted: nothing is downloaded. Only SAM ViT checkpoints are taken
(micro-sam's vit_t models need MobileSAM and are refused).

Weights: ``checkpoint=PATH`` (a SAM state dict such as ``sam_vit_b_01ec64.pth``, a micro-sam
model such as the ``vit_b_lm`` file, or micro-sam's export with ``{"model_state",
"decoder_state"}``) and, for AIS / APG, ``decoder=PATH`` (micro-sam's ``vit_b_lm_decoder`` file)
unless the checkpoint holds a ``decoder_state``. Without ``checkpoint``, ``model_type`` (default
micro-sam's ``vit_b_lm``) is looked up in micro-sam's cache folder (``$MICROSAM_CACHEDIR/models``
or the user cache's ``micro_sam/models``), where micro-sam would have downloaded it; a missing
file is one line naming the file, where to put it and where micro-sam gets it from.

Nothing is trained (``trainable = False``); ``save`` writes the options (which name the
checkpoint) and ``load`` builds the same model again.
"""

from __future__ import annotations

import contextlib
import os
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from cellsynth.benchmark.segmenters._torchutil import get_device, load_state_dict_file
from cellsynth.benchmark.segmenters.base import Segmenter, package_version, register
from cellsynth.errors import CellsynthError, first_line
from cellsynth.tools.labels import relabel_sequential

INSTALL = "pip install 'cellsynth[microsam]'"
DEFAULT_MODEL = "vit_b_lm"  # micro-sam's own default model
WEIGHTS_KIND = "a SAM / micro-sam weights file"
MODES = ("auto", "ais", "amg", "apg")
SAM_TYPES = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}  # encoder width -> SAM's name
DECODER_HEADS = 8  # SAM's mask decoder attention heads (the weights do not say)

# micro-sam's keyword arguments, by mode, that are options here (None: micro-sam's default)
SEGMENTER_KWARGS = {"amg": ("points_per_side", "points_per_batch")}
GENERATE_KWARGS = {
    "amg": ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh"),
    "ais": (
        "center_distance_threshold",
        "boundary_distance_threshold",
        "foreground_threshold",
        "foreground_smoothing",
        "distance_smoothing",
        "min_size",
    ),
    "apg": (
        "center_distance_threshold",
        "boundary_distance_threshold",
        "foreground_threshold",
        "min_size",
        "nms_threshold",
    ),
}
TUNABLE = sorted(
    {k for kws in (*SEGMENTER_KWARGS.values(), *GENERATE_KWARGS.values()) for k in kws}
)

DEFAULTS = {
    "checkpoint": None,  # a local SAM / micro-sam weights file
    "decoder": None,  # a local micro-sam AIS decoder file (when the checkpoint has none)
    "model_type": None,  # micro-sam's name (vit_b_lm, ...): the cached file when no checkpoint
    "mode": "auto",  # auto: micro-sam's choice (ais with a decoder, else amg)
    "tile_shape": None,  # tiled embeddings: an int or [h, w], with halo
    "halo": None,
    "device": None,  # None: CUDA when available, else CPU
    **dict.fromkeys(TUNABLE),
}


def _import_microsam() -> SimpleNamespace:
    """The pieces of micro-sam and Segment Anything used here.

    micro-sam's imports load TensorFlow where it is installed (torch_em's tensorboard logger);
    torch's compiler stack (Triton) goes first, as for StarDist: the other order crashes a later
    torchvision import (see :func:`cellsynth.benchmark.segmenters._tfutil.import_tensorflow`)."""
    try:
        import torch  # noqa: F401

        try:
            import torch._dynamo  # noqa: F401  (loads triton where it is installed)
        except Exception:  # noqa: BLE001  (a torch without a working compiler stack)
            pass
        from micro_sam import util
        from micro_sam.automatic_segmentation import (
            automatic_instance_segmentation,
            get_predictor_and_segmenter,
        )
        from segment_anything.modeling import (
            ImageEncoderViT,
            MaskDecoder,
            PromptEncoder,
            Sam,
            TwoWayTransformer,
        )
    except ImportError as exc:
        raise CellsynthError(f"microsam: needs the micro-sam package ({exc}); {INSTALL}") from None
    return SimpleNamespace(
        util=util,
        get_predictor_and_segmenter=get_predictor_and_segmenter,
        automatic_instance_segmentation=automatic_instance_segmentation,
        Sam=Sam,
        ImageEncoderViT=ImageEncoderViT,
        PromptEncoder=PromptEncoder,
        MaskDecoder=MaskDecoder,
        TwoWayTransformer=TwoWayTransformer,
    )


@contextlib.contextmanager
def offline(ms: SimpleNamespace):
    """Within the block, micro-sam's model registry (which downloads its weights with pooch)
    raises instead of reaching the network. Nothing here calls it; this keeps it so."""
    saved = ms.util.models

    def models():
        raise CellsynthError(
            "microsam: micro-sam tried to download its model weights; downloads are disabled: "
            "give checkpoint=PATH to a local weights file"
        )

    ms.util.models = models
    try:
        yield
    finally:
        ms.util.models = saved


# --- finding and reading the weights ---------------------------------------------------------
def cache_folder(ms: SimpleNamespace) -> Path:
    """Where micro-sam keeps its downloaded models (``$MICROSAM_CACHEDIR/models``)."""
    return Path(ms.util.microsam_cachedir()) / "models"


def _source_url(ms: SimpleNamespace, name: str) -> str | None:
    """The address micro-sam downloads model ``name`` from (None when it has none); reading
    its registry downloads nothing."""
    try:
        return ms.util.models().urls.get(name)
    except Exception:  # noqa: BLE001 - only used to word an error
        return None


def _missing(ms: SimpleNamespace, name: str, path: Path, option: str) -> CellsynthError:
    url = _source_url(ms, name)
    where = f" (micro-sam gets it from {url})" if url else ""
    return CellsynthError(
        f"microsam: model {name} is not here: put its weights file at {path}{where}, "
        f"or give {option}=PATH; nothing is downloaded"
    )


def _given_file(value, what: str, hint: str) -> Path:
    """The file an option names (``~`` expanded); CellsynthError with ``hint`` when it is not
    there."""
    path = Path(os.path.expanduser(str(value)))
    if not path.is_file():
        raise CellsynthError(f"microsam: {what} {path} not found; {hint}")
    return path


def resolve_weights(ms: SimpleNamespace, options: dict) -> tuple[Path, Path | None]:
    """(checkpoint file, decoder file or None) of the options; raises CellsynthError naming the
    file to put where when one is missing."""
    checkpoint, decoder = options["checkpoint"], options["decoder"]
    if checkpoint:
        path = _given_file(
            checkpoint,
            "checkpoint",
            f"put a SAM or micro-sam weights file there (e.g. micro-sam's {DEFAULT_MODEL}); "
            "nothing is downloaded",
        )
    else:
        name = options["model_type"] or DEFAULT_MODEL
        path = cache_folder(ms) / name
        if not path.is_file():
            raise _missing(ms, name, path, "checkpoint")
        if not decoder and (path.parent / f"{name}_decoder").is_file():
            decoder = path.parent / f"{name}_decoder"
    if decoder:
        decoder = _given_file(
            decoder,
            "decoder",
            "put micro-sam's instance segmentation decoder there "
            f"(e.g. its {DEFAULT_MODEL}_decoder file) or use mode=amg",
        )
    return path, decoder


def read_checkpoint(path: Path, decoder: Path | None) -> tuple[dict, dict | None]:
    """(SAM state dict, decoder state dict or None), in micro-sam's formats: a bare SAM state
    dict, or ``{"model_state": ..., "decoder_state": ...}`` (its export and training
    checkpoints, keys possibly prefixed ``sam.``); a separate decoder file wins."""
    state = load_state_dict_file(path, "microsam: checkpoint", WEIGHTS_KIND)
    decoder_state = None
    if isinstance(state.get("model_state"), dict):
        decoder_state = state.get("decoder_state")
        state = {k.removeprefix("sam."): v for k, v in state["model_state"].items()}
    if decoder is not None:
        decoder_state = load_state_dict_file(decoder, "microsam: decoder", WEIGHTS_KIND)
        decoder_state = decoder_state.get("decoder_state", decoder_state)
    for name, part in (("checkpoint", state), ("decoder", decoder_state)):
        if part is not None and not all(hasattr(v, "shape") for v in part.values()):
            raise CellsynthError(f"microsam: the {name} of {path} is not a dict of tensors")
    return state, decoder_state


def sam_architecture(state: dict) -> dict:
    """The Segment Anything network a state dict is the weights of, from its tensors' shapes:
    keyword arguments of ``ImageEncoderViT`` (``encoder``), ``PromptEncoder`` (``prompt``),
    ``MaskDecoder`` (``decoder``) and ``TwoWayTransformer`` (``transformer``), and ``name``
    (vit_b / vit_l / vit_h, or "sam" for other widths)."""
    key = "image_encoder.patch_embed.proj.weight"
    if key not in state:
        raise CellsynthError(
            "microsam: not a Segment Anything ViT checkpoint (no image_encoder.patch_embed; "
            "MobileSAM / vit_t models are not supported)"
        )
    if (
        "image_encoder.pos_embed" not in state
        or "image_encoder.blocks.0.attn.rel_pos_h" not in state
    ):
        raise CellsynthError(
            "microsam: the checkpoint's image encoder has no positional embeddings "
            "(pos_embed and rel_pos): not a Segment Anything image encoder"
        )
    try:
        width, in_chans, patch, _ = state[key].shape
        grid = int(state["image_encoder.pos_embed"].shape[1])
        depth = _count(state, "image_encoder.blocks.")
        head_dim = int(state["image_encoder.blocks.0.attn.rel_pos_h"].shape[1])
        spans = [
            (int(state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0]) + 1) // 2
            for i in range(depth)
        ]
        windows = {s for s in spans if s != grid}
        if len(windows) > 1:
            raise CellsynthError(f"microsam: the encoder blocks have several windows {windows}")
        prompt_dim = int(state["prompt_encoder.point_embeddings.0.weight"].shape[1])
        dec_dim = int(state["mask_decoder.iou_token.weight"].shape[1])
        cross = int(
            state[
                "mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight"
            ].shape[0]
        )
        arch = {
            "name": SAM_TYPES.get(int(width), "sam"),
            "encoder": {
                "img_size": grid * int(patch),
                "patch_size": int(patch),
                "in_chans": int(in_chans),
                "embed_dim": int(width),
                "depth": depth,
                "num_heads": int(width) // head_dim,
                "mlp_ratio": state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0] / width,
                "out_chans": int(state["image_encoder.neck.0.weight"].shape[0]),
                "qkv_bias": "image_encoder.blocks.0.attn.qkv.bias" in state,
                "use_rel_pos": True,
                "window_size": windows.pop() if windows else 0,
                "global_attn_indexes": [i for i, s in enumerate(spans) if s == grid],
            },
            "prompt": {
                "embed_dim": prompt_dim,
                "image_embedding_size": [grid, grid],
                "input_image_size": [grid * int(patch)] * 2,
                "mask_in_chans": int(state["prompt_encoder.mask_downscaling.3.weight"].shape[0]),
            },
            "decoder": {
                "transformer_dim": dec_dim,
                "num_multimask_outputs": int(state["mask_decoder.mask_tokens.weight"].shape[0]) - 1,
                "iou_head_depth": _count(state, "mask_decoder.iou_prediction_head.layers."),
                "iou_head_hidden_dim": int(
                    state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]
                ),
            },
            "transformer": {
                "depth": _count(state, "mask_decoder.transformer.layers."),
                "embedding_dim": dec_dim,
                "num_heads": DECODER_HEADS,
                "mlp_dim": int(state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]),
                "attention_downsample_rate": dec_dim // max(cross, 1),
            },
        }
    except KeyError as exc:
        raise CellsynthError(
            f"microsam: not a Segment Anything checkpoint (no {exc.args[0]})"
        ) from None
    if arch["encoder"]["in_chans"] != 3:
        raise CellsynthError(
            f"microsam: the checkpoint's encoder takes {in_chans} channels; SAM takes 3"
        )
    return arch


def _count(state: dict, prefix: str) -> int:
    """How many numbered submodules ``prefix0.``, ``prefix1.``, ... the state dict has."""
    ids = {k[len(prefix) :].split(".", 1)[0] for k in state if k.startswith(prefix)}
    return len({int(i) for i in ids if i.isdigit()})


def build_sam(ms: SimpleNamespace, arch: dict):
    """Segment Anything's ``Sam`` of an architecture (as SAM's own builder makes it: LayerNorm
    eps 1e-6, SAM's pixel statistics), in eval mode, untrained."""
    import torch

    enc = arch["encoder"]
    sam = ms.Sam(
        image_encoder=ms.ImageEncoderViT(
            **{**enc, "global_attn_indexes": tuple(enc["global_attn_indexes"])},
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        ),
        prompt_encoder=ms.PromptEncoder(
            embed_dim=arch["prompt"]["embed_dim"],
            image_embedding_size=tuple(arch["prompt"]["image_embedding_size"]),
            input_image_size=tuple(arch["prompt"]["input_image_size"]),
            mask_in_chans=arch["prompt"]["mask_in_chans"],
        ),
        mask_decoder=ms.MaskDecoder(
            transformer=ms.TwoWayTransformer(**arch["transformer"]), **arch["decoder"]
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def _pair(value, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    values = [value] * 2 if np.isscalar(value) else list(value)
    try:
        pair = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2 or min(pair) < 0:
        raise CellsynthError(f"microsam: {name} must be an int or [h, w] >= 0, got {value!r}")
    return pair


@register
class MicroSamSegmenter(Segmenter):
    """micro-sam's automatic instance segmentation with a local checkpoint (see the module
    docstring). Options: ``checkpoint``, ``decoder``, ``model_type``, ``mode`` (auto / ais / amg
    / apg), ``tile_shape`` and ``halo``, ``device``, and micro-sam's own post-processing
    settings (None: micro-sam's default): for amg ``points_per_side``, ``points_per_batch``,
    ``pred_iou_thresh``, ``stability_score_thresh``, ``box_nms_thresh``; for ais
    ``center_distance_threshold``, ``boundary_distance_threshold``, ``foreground_threshold``,
    ``foreground_smoothing``, ``distance_smoothing``, ``min_size``; for apg the same thresholds,
    ``min_size`` and ``nms_threshold``."""

    name = "microsam"
    requires = f"micro-sam ({INSTALL})"
    trainable = False
    DEFAULTS = DEFAULTS

    def __init__(self, **options):
        super().__init__(**options)
        o = self.options
        self.check_choice("mode", MODES)
        self.tile_shape = _pair(o["tile_shape"], "tile_shape")
        self.halo = _pair(o["halo"], "halo")
        if (self.tile_shape is None) != (self.halo is None):
            raise CellsynthError("microsam: tile_shape and halo go together; give both or neither")
        if self.tile_shape is not None and min(self.tile_shape) <= 2 * max(self.halo):
            raise CellsynthError(
                f"microsam: tile_shape {list(self.tile_shape)} must exceed twice the halo "
                f"{list(self.halo)}"
            )
        if o["mode"] != "auto":
            self._check_settings(o["mode"])
        self.predictor = None
        self.segmenter = None
        self.mode = None

    def _check_settings(self, mode: str) -> None:
        """Refuse post-processing settings the mode does not use."""
        used = set(SEGMENTER_KWARGS.get(mode, ())) | set(GENERATE_KWARGS[mode])
        unused = sorted(k for k in TUNABLE if self.options[k] is not None and k not in used)
        if unused:
            raise CellsynthError(
                f"microsam: {', '.join(unused)} not used by mode={mode}; it takes "
                f"{', '.join(sorted(used))}"
            )

    # --- the model ---------------------------------------------------------------------------
    def _ensure_model(self):
        """(micro-sam predictor, micro-sam segmenter), built once from the local weights."""
        if self.segmenter is not None:
            return self.predictor, self.segmenter
        ms = _import_microsam()
        o = self.options
        path, decoder_path = resolve_weights(ms, o)
        state, decoder_state = read_checkpoint(path, decoder_path)
        arch = sam_architecture(state)
        if o["model_type"] and o["checkpoint"]:
            claimed = str(o["model_type"])[:5]
            if claimed != arch["name"]:
                raise CellsynthError(
                    f"microsam: model_type={o['model_type']} but {path} holds a {arch['name']} "
                    f"network ({arch['encoder']['embed_dim']} wide)"
                )
        mode = o["mode"]
        if mode == "auto":  # micro-sam's rule (get_predictor_and_segmenter)
            mode = "ais" if decoder_state is not None else "amg"
            self._check_settings(mode)
        if mode in ("ais", "apg") and decoder_state is None:
            raise CellsynthError(
                f"microsam: mode={mode} needs micro-sam's instance segmentation decoder: {path} "
                f"has no decoder_state; give decoder=PATH (e.g. micro-sam's "
                f"{DEFAULT_MODEL}_decoder file) or use mode=amg"
            )
        device = get_device(o["device"])
        sam = build_sam(ms, arch)
        try:
            sam.load_state_dict(state)
        except RuntimeError as exc:
            raise CellsynthError(
                f"microsam: {path} does not fit the Segment Anything network its shapes describe "
                f"({str(exc).splitlines()[0]})"
            ) from None
        sam.to(device)
        predictor = ms.util.SamPredictor(sam)
        # what micro_sam.util.get_sam_model records on its predictors
        predictor.model_type = arch["name"]
        predictor.model_name = str(o["model_type"] or path.name)
        predictor.checkpoint_path = str(path)
        kwargs = {k: o[k] for k in SEGMENTER_KWARGS.get(mode, ()) if o[k] is not None}
        loaded = {"decoder_state": decoder_state} if mode != "amg" else {}
        with offline(ms):
            try:
                predictor, segmenter = ms.get_predictor_and_segmenter(
                    arch["name"],
                    device=device,
                    segmentation_mode=mode,
                    is_tiled=self.tile_shape is not None,
                    predictor=predictor,
                    state=loaded,
                    **kwargs,
                )
            except RuntimeError as exc:  # the decoder does not fit this encoder
                raise CellsynthError(
                    f"microsam: the decoder does not fit {path} ({first_line(exc)})"
                ) from None
        self.predictor, self.segmenter, self.mode = predictor, segmenter, mode
        self.info = {"checkpoint": str(path), "decoder": decoder_path and str(decoder_path)}
        self.info.update(mode=mode, architecture=arch, micro_sam=package_version("micro-sam"))
        return predictor, segmenter

    # --- prediction --------------------------------------------------------------------------
    def predict(self, image: np.ndarray) -> np.ndarray:
        """H x W (x C) image (8/16-bit, float; grayscale or RGB) -> uint32 labels H x W."""
        image = _prepare(image)
        predictor, segmenter = self._ensure_model()
        ms = _import_microsam()
        o = self.options
        kwargs = {k: o[k] for k in GENERATE_KWARGS[self.mode] if o[k] is not None}
        threads = int(os.environ.get("OMP_NUM_THREADS") or 0)
        if self.mode == "ais" and self.tile_shape is not None and threads > 0:
            kwargs["n_threads"] = threads  # its tiled post-processing: all cores otherwise
        with offline(ms):
            labels = ms.automatic_instance_segmentation(
                predictor,
                segmenter,
                image,
                ndim=2,
                tile_shape=self.tile_shape,
                halo=self.halo,
                verbose=False,
                **kwargs,
            )
        labels = np.asarray(labels)
        if labels.shape != image.shape[:2]:  # pragma: no cover - micro-sam's contract
            raise CellsynthError(f"microsam: got labels {labels.shape} for an image {image.shape}")
        return relabel_sequential(labels).astype(np.uint32)

    # --- persistence -------------------------------------------------------------------------
    def save(self, path) -> None:
        """options.json (the weights files as absolute paths) and info.json: the weights stay
        where they are."""
        import json

        from cellsynth.atomic import write_text

        options = dict(self.options)
        for key in ("checkpoint", "decoder"):
            if options[key]:
                options[key] = str(Path(os.path.expanduser(str(options[key]))).resolve())
        Path(path).mkdir(parents=True, exist_ok=True)
        write_text(Path(path) / "options.json", json.dumps(options))
        write_text(Path(path) / "info.json", json.dumps(self.info, default=str))

    @classmethod
    def load(cls, path) -> MicroSamSegmenter:
        seg = super().load(path)  # the options name the local weights
        seg._ensure_model()
        return seg


def _prepare(image) -> np.ndarray:
    """Check an H x W (x C) image; H x W x 1 -> H x W, RGBA -> RGB, bool -> uint8. micro-sam
    does the rest (grayscale to RGB, per-channel min-max scaling to 8 bits)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or image.size == 0 or (image.ndim == 3 and image.shape[-1] > 4):
        raise CellsynthError(
            f"microsam: expected an H x W or H x W x C (C <= 4) image, got shape {image.shape}"
        )
    if image.dtype == bool:
        image = image.astype(np.uint8)
    if not np.issubdtype(image.dtype, np.number) or np.iscomplexobj(image):
        raise CellsynthError(f"microsam: unsupported image dtype {image.dtype}")
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        raise CellsynthError("microsam: the image has NaN or infinite pixels")
    if image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]  # micro-sam keeps the first three channels
    return image
