"""The trained mask-to-image translator as the synthesis pipeline uses it.

    tr = Translator.load("checkpoints/NAME")          # or a .pt checkpoint
    image = tr.translate(semantic_labels, instance_ids, seed=3)   # H x W (x C) uint8

Deterministic: the same inputs (and seed, when the model draws per-cell features: from its
k-means clusters, or from one training image of its feature bank) give the same image. The
transposed convolutions' checkerboard is removed from each image unless ``dechecker=False``
(:mod:`cellsynth.pix2pixhd.checkerboard`); a ``blur`` (Gaussian sigma, px; the one the file
records by default) smooths what is left of the network's fine-grained texture, the last step
before the uint8 rounding.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from cellsynth.datasets.io import network_to_image
from cellsynth.errors import CellsynthError
from cellsynth.pix2pixhd import data as p2p_data
from cellsynth.pix2pixhd.checkerboard import remove_checkerboard, upsamples_by_transposed_convs
from cellsynth.pix2pixhd.checkpoints import resolve_checkpoint
from cellsynth.pix2pixhd.clusters import (
    APPEARANCE,
    APPEARANCE_CHOICES,
    Appearance,
    load_appearance,
    region_classes,
)
from cellsynth.pix2pixhd.networks import build_generator
from cellsynth.pix2pixhd.options import DEFAULT_MARGIN, Options, check_blur, check_margin
from cellsynth.training.checkpoint import load_checkpoint

KIND = "pix2pixhd"


def recorded_blur(config: dict) -> float:
    """The blur a translator file records (``config["blur"]``, written by ``cellsynth models
    export --blur``), 0.0 when none."""
    value = config.get("blur")
    return 0.0 if value is None else check_blur(value, "the translator file's recorded blur")


class Translator:
    """A Pix2PixHD generator ready to turn (semantic labels, instance ids) into images."""

    def __init__(
        self,
        opt: Options,
        generator: torch.nn.Module,
        size: tuple[int, int],
        clusters: dict[int, np.ndarray] | Appearance | None = None,
        device: str | torch.device = "cpu",
        dechecker: bool | None = None,
        margin: int = DEFAULT_MARGIN,
        blur: float = 0.0,
        appearance: str | None = None,
    ):
        self.opt = opt
        self.device = torch.device(device)
        self.G = generator.to(self.device).eval().requires_grad_(False)
        self.size = tuple(int(s) for s in size)
        if clusters is not None and not isinstance(clusters, Appearance):
            clusters = Appearance(dict(clusters))
        self.clusters = clusters
        # how a feature model draws its features (clusters.py): None or "auto" is "image" when
        # it has a bank; a model without an encoder draws none (appearance None)
        if appearance == "auto":
            appearance = None
        if appearance is not None and not opt.use_features:
            raise CellsynthError(
                f"appearance {appearance!r}: this model has no feature encoder (it draws no "
                "features)"
            )
        if appearance is None and opt.use_features:
            appearance = "image" if clusters is not None and clusters.has_bank else "clusters"
        if appearance is not None and appearance not in APPEARANCE:
            raise CellsynthError(
                f"unknown appearance {appearance!r}; use one of {', '.join(APPEARANCE_CHOICES)}"
            )
        if appearance == "image" and clusters is not None and not clusters.has_bank:
            raise CellsynthError(
                "appearance 'image' needs the feature bank of the training images; run "
                "`cellsynth pix2pixhd clusters` again (older clusters files hold only centres)"
            )
        self.appearance = appearance
        # checkerboard.py: the period of the transposed convolutions' pattern (0: none)
        n = upsamples_by_transposed_convs(self.G)
        self.checkerboard_period = 2**n if n else 0
        self.dechecker = bool(self.checkerboard_period) if dechecker is None else bool(dechecker)
        self.margin = check_margin(margin)
        self.blur = check_blur(blur)
        if opt.use_features and clusters is None:
            raise CellsynthError(
                "this model was trained with --instance_feat/--label_feat and needs feature "
                f"clusters; run `cellsynth pix2pixhd clusters --name {opt.name}` first"
            )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        which_epoch: str | int = "latest",
        clusters: str | os.PathLike | None = None,
        dechecker: bool | None = None,
        margin: int = DEFAULT_MARGIN,
        blur: float | None = None,
        appearance: str | None = None,
    ) -> Translator:
        """Load from a .pt checkpoint or a run folder (``latest.pt`` or ``epoch_N.pt``).

        Feature clusters and the bank (models with an encoder) come from ``clusters``, else
        from the weights file itself (``models export`` puts them there), else from
        ``clusters.npz`` beside the checkpoint; ``appearance`` how regions draw their features
        (:data:`~cellsynth.pix2pixhd.clusters.APPEARANCE`; None or "auto": ``image`` when there
        is a bank; :attr:`appearance` is None for a model without an encoder). ``dechecker``: remove the transposed convolutions' checkerboard
        from every image (:mod:`cellsynth.pix2pixhd.checkerboard`); None: when the generator
        has them (every Pix2PixHD generator here does). ``margin``: pixels of mirrored context
        translated around each map and cut off again (see :meth:`translate_batch`). ``blur``:
        the Gaussian sigma (px) every image gets last; None: the one the file records
        (:func:`recorded_blur`; ``models export --blur``), else 0.
        """
        ckpt_path = resolve_checkpoint(path, which_epoch)
        ckpt = load_checkpoint(ckpt_path, kind=KIND)
        config = ckpt["config"]
        try:
            opt = Options.from_dict(config["opt"])
            generator = build_generator(opt)
            generator.load_state_dict(ckpt["G"])
        except (KeyError, RuntimeError, TypeError) as exc:
            raise CellsynthError(
                f"{ckpt_path}: not a usable pix2pixhd generator ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''})"
            ) from None
        table = None
        if opt.use_features:
            cpath = Path(clusters) if clusters else ckpt_path.parent / "clusters.npz"
            if clusters:
                table = load_appearance(cpath, opt.feat_num)
            elif isinstance(ckpt.get("appearance"), dict):
                table = Appearance.from_arrays(ckpt["appearance"], opt.feat_num, ckpt_path)
            elif cpath.is_file():
                table = load_appearance(cpath, opt.feat_num)
        size = config.get("size") or [opt.fineSize, opt.fineSize]
        blur = recorded_blur(config) if blur is None else blur
        return cls(opt, generator, size, table, device, dechecker, margin, blur, appearance)

    @property
    def dechecker_period(self) -> int:
        """The period of the checkerboard removed from each image (0: none removed)."""
        return self.checkerboard_period if self.dechecker else 0

    @property
    def label_nc(self) -> int:
        """Semantic classes the model takes (0: label values fed directly)."""
        return int(self.opt.label_nc)

    @property
    def output_nc(self) -> int:
        """Channels of the images it makes."""
        return int(self.opt.output_nc)

    def _check(self, labels, instances, i: int = 0) -> tuple[np.ndarray, np.ndarray]:
        labels = np.asarray(labels)
        if labels.ndim != 2 or not (
            np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool
        ):
            raise CellsynthError(
                f"labels[{i}]: need a 2-D integer semantic label map, got {labels.dtype} "
                f"{labels.shape}"
            )
        if instances is None:
            if not self.opt.no_instance or self.opt.instance_feat:
                raise CellsynthError(
                    f"instances[{i}]: this model needs an instance map (it was trained with "
                    "instance edges or instance features)"
                )
            instances = np.zeros(labels.shape, np.int64)
        instances = np.asarray(instances)
        if instances.shape != labels.shape or not np.issubdtype(instances.dtype, np.integer):
            raise CellsynthError(
                f"instances[{i}]: need a 2-D integer map the size of the labels {labels.shape}, "
                f"got {instances.dtype} {instances.shape}"
            )
        if labels.size and (labels.min() < 0 or (self.label_nc and labels.max() >= self.label_nc)):
            raise CellsynthError(
                f"labels[{i}]: ids must be in 0..{self.label_nc - 1} for this model (found "
                f"{int(labels.min())}..{int(labels.max())})"
            )
        if instances.size and instances.min() < 0:
            raise CellsynthError(f"instances[{i}]: instance ids must be >= 0")
        return labels.astype(np.int64), instances.astype(np.int64)

    def _features(self, labels: np.ndarray, instances: np.ndarray, seed: int) -> np.ndarray:
        """feat_num x H x W map: each region (in increasing id order) gets the vector
        :meth:`Appearance.draw` gives it with ``seed``: a cluster centre of its class, or a
        region of its class in one training image drawn for the whole map."""
        regions = instances if self.opt.instance_feat else labels
        rng = np.random.default_rng(int(seed))
        _ids, inverse, classes = region_classes(regions, labels)
        table = np.zeros((len(classes), self.opt.feat_num), np.float32)
        for k, vector in enumerate(self.clusters.draw(classes, rng, self.appearance)):
            if vector is not None:
                table[k] = vector
        return np.ascontiguousarray(np.moveaxis(table[inverse], -1, 0))

    @torch.no_grad()
    def translate_batch(self, labels_list, instances_list=None, seeds=None) -> list[np.ndarray]:
        """Translate several (labels, instances) pairs; returns H x W (x C) uint8 images.

        With a :attr:`margin`, each map is first extended by that many pixels of its own mirror
        image on every side, translated, and cut back to its size: the network then sees
        context past the edges, as it did inside its training tiles, instead of its zero
        padding. A cell cut by the edge continues into its mirror image, so the edge draws no
        boundary through it.
        """
        labels_list = list(labels_list)
        if instances_list is None:
            instances_list = [None] * len(labels_list)
        instances_list = list(instances_list)
        if len(instances_list) != len(labels_list):
            raise CellsynthError(
                f"{len(labels_list)} label maps but {len(instances_list)} instance maps"
            )
        if seeds is None:
            seeds = range(len(labels_list))
        seeds = list(seeds)
        if len(seeds) != len(labels_list):
            raise CellsynthError(f"{len(labels_list)} label maps but {len(seeds)} seeds")
        return [
            self._translate_one(*self._check(lab, ins, i), seed)
            for i, (lab, ins, seed) in enumerate(zip(labels_list, instances_list, seeds))
        ]

    def translate(self, labels, instances=None, seed: int | None = None) -> np.ndarray:
        """One semantic label map (H x W) + instance ids (H x W) -> H x W (x C) uint8 image."""
        return self.translate_batch([labels], [instances], [0 if seed is None else seed])[0]

    def _translate_one(self, labels: np.ndarray, instances: np.ndarray, seed: int) -> np.ndarray:
        h, w = labels.shape
        m, base = self.margin, self.opt.generator_multiple
        ph, pw = (-(h + 2 * m)) % base, (-(w + 2 * m)) % base
        feat = self._features(labels, instances, seed) if self.opt.use_features else None
        if m or ph or pw:
            pad = ((m, m + ph), (m, m + pw))
            labels = np.pad(labels, pad, mode="symmetric")
            instances = np.pad(instances, pad, mode="symmetric")
            if feat is not None:
                feat = np.pad(feat, ((0, 0), *pad), mode="symmetric")
        lab = torch.from_numpy(labels)[None].to(self.device)
        ins = torch.from_numpy(instances)[None].to(self.device)
        x = p2p_data.encode_input(lab, ins, self.opt)
        if feat is not None:
            x = torch.cat([x, torch.from_numpy(feat)[None].to(self.device)], dim=1)
        # the filter sees the whole output, so its phases are those of the network's grid
        out = self.G(x)[0, :, : m + h + m, : m + w + m].float().cpu().numpy()
        if self.dechecker_period:
            level = np.clip((out + 1.0) * 127.5, 0.0, None)  # 0..255 units, as the filter's EPS
            out = remove_checkerboard(level, self.dechecker_period) / 127.5 - 1.0
        if self.blur:
            from scipy.ndimage import gaussian_filter

            out = gaussian_filter(out, (0, self.blur, self.blur), mode="reflect", truncate=4.0)
        return network_to_image(out[:, m : m + h, m : m + w], np.uint8)
