"""Generate masks with a trained StyleGAN2/3 snapshot (``cellsynth stylegan3 generate``).

:class:`MaskGenerator` is the Python API the synthesis pipeline uses::

    gen = MaskGenerator.load("network-snapshot-000100.pt")
    x = gen.generate([0, 1, 2])          # float32 N x C x R x R in [-1, 1]
    labels = gen.decode(x)               # list of uint16 instance-label images

Latents follow the users' habit: ``z = np.random.RandomState(seed).randn(z_dim)``; a seed's
further draws (``draws``, which ``synth --min-cells`` uses for a mask with too few cells) come
from ``np.random.RandomState([seed, k])``, k = 1, 2, ... (see :func:`latent`).

Recorded settings: with no ``trunc`` given, a generator samples at the psi its file records
(``config["trunc"]``), and at 1.0 (no truncation) when it records none, as a training snapshot
never does; :meth:`MaskGenerator.decode` likewise starts from the decoder thresholds the file
records (``config["decode"]``, e.g. ``{"marker_thresh": 0.55}``), else the codec's. Both are
written by ``cellsynth models export --trunc/--marker-thresh/...``: the operating point a
model card chose on the training data.

Debiasing: a generator trained on a masks zip that repeats its crowded tiles (``dataset pack
--repeat-crowded MIN:TIMES,...``; the snapshot records the rules as ``config["repeat_crowded"]``)
learns a distribution that over-weights them by design. With ``debias`` (``"auto"``: whenever
the file records rules) :meth:`MaskGenerator.generate` undoes that by rejection sampling: a
seed's candidate mask with n decoded objects is kept with probability 1 / TIMES of the rule n
meets, else the seed's next candidate is drawn (:func:`candidate_latent`, with a uniform number
of its own, :func:`candidate_uniform`), so the kept masks follow the unrepeated data as far as
the generator learned it, and each seed still gives one mask, the same in every run and batch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from cellsynth.errors import CellsynthError
from cellsynth.tools.parse import MAX_SEED, parse_seeds  # noqa: F401 (re-exported)

DECODE_KEYS = ("fg_thresh", "boundary_thresh", "marker_thresh")  # thresholds in (0, 1)
DEBIAS_CHOICES = ("auto", "on", "off")
MAX_CANDIDATES = 64  # debiasing: a seed keeps its last candidate if all of these were rejected


def is_trunc(value) -> bool:
    """A truncation psi a generator can record: a number in (0, 1]."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return ok and 0.0 < float(value) <= 1.0


def is_threshold(value) -> bool:
    """A decoder threshold a generator can record: a number in (0, 1)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return ok and 0.0 < float(value) < 1.0


def recorded_decode(config: dict) -> dict:
    """The decoder thresholds a generator's config records (``"decode"``), {} when none.

    Raises CellsynthError for anything but a dict of known thresholds, each a number in (0, 1).
    """
    value = config.get("decode")
    if value is None:
        return {}
    if not isinstance(value, dict) or not set(value) <= set(DECODE_KEYS):
        raise CellsynthError(
            f"the generator file records decode settings {value!r}; expected a dict with keys "
            f"among {', '.join(DECODE_KEYS)}"
        )
    for key, v in value.items():
        if not is_threshold(v):
            raise CellsynthError(
                f"the generator file records decode {key}={v!r}; expected a number in (0, 1)"
            )
    return {k: float(v) for k, v in value.items()}


def recorded_trunc(config: dict) -> float:
    """The truncation psi a generator's config records (``"trunc"``), 1.0 when none.

    Raises CellsynthError for a recorded value that is not a number in (0, 1].
    """
    value = config.get("trunc")
    if value is None:
        return 1.0
    if not is_trunc(value):
        raise CellsynthError(
            f"the generator file records truncation psi {value!r}; expected a number in (0, 1]"
        )
    return float(value)


def recorded_repeats(config: dict) -> list[tuple[int, int]]:
    """The crowded-tile repeats of the training data a generator's config records
    (``"repeat_crowded"``, :func:`cellsynth.datasets.pack.parse_repeat_crowded`), [] when none.

    Raises CellsynthError for a value that is not a list of MIN, TIMES pairs (integers >= 1).
    """
    from cellsynth.datasets.pack import recorded_repeat_crowded

    value = config.get("repeat_crowded")
    try:
        return recorded_repeat_crowded(value)
    except ValueError:
        raise CellsynthError(
            f"the generator file records repeat_crowded {value!r}; expected [[MIN, TIMES], ...] "
            "with integers >= 1"
        ) from None


def candidate_latent(seed: int, z_dim: int, draw: int = 0, candidate: int = 0) -> np.ndarray:
    """Debiasing's ``candidate``-th latent of a seed's ``draw``: candidate 0 is
    :func:`latent` itself, a later one ``RandomState([seed, draw, candidate]).randn(z_dim)``."""
    if candidate == 0:
        return latent(seed, z_dim, draw)
    return np.random.RandomState([seed, draw, candidate]).randn(z_dim)


def candidate_uniform(seed: int, draw: int = 0, candidate: int = 0) -> float:
    """The uniform number in [0, 1) that decides whether a candidate is kept (its own stream)."""
    return float(np.random.RandomState([seed, draw, candidate, 1]).rand())


def latent(seed: int, z_dim: int, draw: int = 0) -> np.ndarray:
    """The latent of ``seed``: ``RandomState(seed).randn(z_dim)`` for draw 0 (the users'
    habit), ``RandomState([seed, draw]).randn(z_dim)`` for a later draw."""
    if draw < 0:
        raise CellsynthError(f"a latent's draw must be >= 0, not {draw}")
    rs = np.random.RandomState(seed if draw == 0 else [seed, draw])
    return rs.randn(z_dim)


class MaskGenerator:
    """A trained generator and what is needed to decode its masks.

    Attributes: ``resolution``, ``channels``, ``encoding`` (``"binary"``/``"fbd"`` or None),
    ``num_classes`` (0 when unconditional), ``classes`` (names or None), ``trunc`` (the
    truncation psi :meth:`generate` uses when given none: the one the file records, see
    :func:`recorded_trunc`, else 1.0), ``decode_settings`` (the decoder thresholds the file
    records, :func:`recorded_decode`), ``repeats`` (the crowded-tile repeats of its training
    data, :func:`recorded_repeats`, undone by ``debias``), ``G`` (the network), ``config`` (the
    snapshot config), ``device``.
    """

    def __init__(self, G, config: dict, device="cpu"):
        self.G = G
        self.config = config
        self.device = device
        self.resolution = int(config["resolution"])
        self.channels = int(config["channels"])
        self.encoding = config.get("encoding")
        self.num_classes = int(config.get("num_classes") or 0)
        self.classes = config.get("classes")
        weights = config.get("class_weights")
        self.class_weights = None
        if self.num_classes and weights and len(weights) == self.num_classes:
            w = np.asarray(weights, dtype=np.float64).clip(0, None)
            self.class_weights = w / w.sum() if w.sum() > 0 else None
        self.z_dim = int(G.z_dim)
        self.trunc = recorded_trunc(config)
        self.decode_settings = recorded_decode(config)
        self.repeats = recorded_repeats(config)

    @classmethod
    def load(
        cls, path: str | os.PathLike, device="cpu", which: str = "G_ema", fp32: bool = False
    ) -> MaskGenerator:
        """Load the ``G_ema`` generator of a snapshot (``network-snapshot-*.pt``); mixed precision
        (fp16 on CUDA, bf16 on a CPU with native bf16) unless ``fp32``."""
        import torch

        from cellsynth.stylegan3.snapshot import load_generator

        device = torch.device(device)
        G, config = load_generator(path, device=device, which=which, fp32=fp32)
        return cls(G, config, device=device)

    def _is_stylegan2(self) -> bool:
        return (
            not hasattr(self.G, "set_input_transform")
            or self.G.init_kwargs.get("cfg") == "stylegan2"
        )

    def _set_transform(self, translate, rotate) -> None:
        if not self._is_stylegan2():  # checked by check_options: stylegan2 has no transform
            self.G.set_input_transform(translate=tuple(translate), rotate=float(rotate))

    def check_options(
        self,
        class_idx=None,
        noise_mode="const",
        batch=8,
        translate=(0, 0),
        rotate=0.0,
        trunc=None,
        debias="auto",
    ) -> None:
        """Raise CellsynthError unless :meth:`generate` accepts these options for this network."""
        if trunc is not None and not math.isfinite(trunc):
            raise CellsynthError(f"--trunc must be a finite number, not {trunc}")
        self.debiases(debias)
        if noise_mode not in ("const", "random", "none"):
            raise CellsynthError(f"--noise-mode must be const, random or none, not {noise_mode!r}")
        if batch < 1:
            raise CellsynthError("--batch must be at least 1")
        if self.num_classes:
            if class_idx is None and self.class_weights is None:
                raise CellsynthError(
                    f"this network is conditional ({self.num_classes} classes) and does not "
                    "record how often each class occurs; pass --class"
                )
            if class_idx is not None and not 0 <= int(class_idx) < self.num_classes:
                raise CellsynthError(f"--class {class_idx} is not in [0, {self.num_classes - 1}]")
        elif class_idx is not None:
            raise CellsynthError("--class given, but this network is unconditional")
        if self._is_stylegan2() and (tuple(translate) != (0, 0) or rotate != 0):
            raise CellsynthError(
                "--translate/--rotate need a stylegan3 network; this snapshot is stylegan2"
            )

    def debiases(self, debias="auto") -> bool:
        """Whether :meth:`generate` undoes the training data's crowded-tile repeats: ``"auto"``
        when the file records some, ``"on"`` (refused for a file that records none), ``"off"``.
        """
        if debias not in DEBIAS_CHOICES:
            raise CellsynthError(
                f"--debias must be one of {', '.join(DEBIAS_CHOICES)}, not {debias!r}"
            )
        if debias == "on" and not self.repeats:
            raise CellsynthError(
                "--debias on: this generator's file records no repeated crowded tiles "
                "(dataset pack --repeat-crowded) to undo"
            )
        return debias != "off" and bool(self.repeats)

    def seed_classes(self, seeds, class_idx: int | None = None) -> list[int] | None:
        """The class of each seed: ``class_idx`` for all when given; for a conditional network
        without it, drawn per seed from the training set's class frequencies (the seed's own
        ``RandomState`` after its latent, so the latent is the same as without classes and the
        draw is the same in every run and batch); None for an unconditional network."""
        if not self.num_classes:
            return None
        if class_idx is not None:
            return [int(class_idx)] * len(seeds)
        out = []
        for s in seeds:
            rs = np.random.RandomState(s)
            rs.randn(self.z_dim)
            out.append(int(rs.choice(self.num_classes, p=self.class_weights)))
        return out

    def generate(
        self,
        seeds,
        trunc: float | None = None,
        class_idx: int | None = None,
        noise_mode: str = "const",
        batch: int = 8,
        translate=(0.0, 0.0),
        rotate: float = 0.0,
        progress: bool = False,
        draws=None,
        debias="auto",
        decode_opts: dict | None = None,
    ) -> np.ndarray:
        """Masks for ``seeds`` as float32 N x C x R x R in [-1, 1].

        Args:
            seeds: ints (or a seeds string); trunc: truncation psi (None: :attr:`trunc`, the
            network's own);
            class_idx: class for a conditional network (refused for an unconditional one);
            without it each seed's class follows :meth:`seed_classes`;
            noise_mode: const, random or none; batch: images per forward pass;
            translate, rotate: input transform of a stylegan3 network (translate in fractions of
            the image size, rotate in degrees);
            draws: per seed, which of its latents (:func:`latent`; None: draw 0 for all). A
            conditional network keeps each seed's class whatever the draw;
            debias: auto, on or off (:meth:`debiases`): reject candidates to undo the training
            data's repeated crowded tiles (see the module docstring); decode_opts: the decoder
            options (over the file's, as for :meth:`decode`) that count a candidate's objects.
        """
        from tqdm import tqdm

        seeds = parse_seeds(seeds)
        self.check_options(class_idx, noise_mode, batch, translate, rotate, trunc, debias)
        trunc = self.trunc_for(trunc)
        classes = self.seed_classes(seeds, class_idx)
        draws = [0] * len(seeds) if draws is None else [int(d) for d in draws]
        if len(draws) != len(seeds):
            raise CellsynthError(f"{len(seeds)} seeds but {len(draws)} draws")
        self._set_transform(translate, rotate)
        debiased = self.debiases(debias)
        out = np.empty((len(seeds), self.channels, self.resolution, self.resolution), np.float32)
        for i in tqdm(range(0, len(seeds), batch), disable=not progress, desc="generate"):
            part = slice(i, i + batch)
            cls = None if classes is None else classes[part]
            args = (seeds[part], draws[part], cls, trunc, noise_mode)
            if debiased:
                out[part] = self._debiased(*args, decode_opts or {})
            else:
                out[part] = self._synthesize(*args, [0] * len(seeds[part]))
        return out

    def _synthesize(self, seeds, draws, classes, trunc, noise_mode, candidates) -> np.ndarray:
        """One forward pass: the masks of each seed's draw's candidate latent."""
        import torch

        z = np.stack(
            [
                candidate_latent(s, self.z_dim, d, k)
                for s, d, k in zip(seeds, draws, candidates, strict=True)
            ]
        )
        with torch.no_grad():
            z = torch.from_numpy(z).float().to(self.device)
            c = torch.zeros([len(seeds), self.num_classes], device=self.device)
            if classes is not None:
                c[torch.arange(len(seeds)), torch.tensor(classes)] = 1
            ws = self.G.mapping(z, c, truncation_psi=trunc)
            img = self.G.synthesis(ws, noise_mode=noise_mode)
            return img.float().clamp(-1, 1).cpu().numpy()

    def keep_probability(self, objects: int) -> float:
        """Debiasing: the chance a candidate with ``objects`` decoded objects is kept
        (1 / TIMES of the first repeat rule it meets, 1 when none)."""
        from cellsynth.datasets.pack import repeat_times

        return 1.0 / repeat_times(objects, self.repeats)

    def _debiased(self, seeds, draws, classes, trunc, noise_mode, decode_opts) -> np.ndarray:
        """Rejection sampling (see the module docstring): each seed's first kept candidate."""
        out = np.empty((len(seeds), self.channels, self.resolution, self.resolution), np.float32)
        todo = list(range(len(seeds)))
        for k in range(MAX_CANDIDATES):
            cls = None if classes is None else [classes[j] for j in todo]
            x = self._synthesize(
                [seeds[j] for j in todo],
                [draws[j] for j in todo],
                cls,
                trunc,
                noise_mode,
                [k] * len(todo),
            )
            rest = []
            for j, xj, lab in zip(todo, x, self.decode(x, **decode_opts), strict=True):
                out[j] = xj
                u = candidate_uniform(seeds[j], draws[j], k)
                if u >= self.keep_probability(int(lab.max(initial=0))):
                    rest.append(j)  # rejected: draw the next candidate (or keep this, the last)
            todo = rest
            if not todo:
                break
        return out

    def to_uint8(self, x: np.ndarray) -> np.ndarray:
        """N x C x R x R in [-1, 1] -> uint8 N x R x R (1 channel) or N x R x R x C."""
        u = np.rint((np.clip(x, -1, 1) + 1) * 127.5).astype(np.uint8)
        return u[:, 0] if u.shape[1] == 1 else np.moveaxis(u, 1, -1)

    def trunc_for(self, trunc: float | None) -> float:
        """The psi :meth:`generate` samples at: ``trunc``, else the file's (:attr:`trunc`)."""
        return self.trunc if trunc is None else float(trunc)

    def decode_kwargs(self, **opts) -> dict:
        """Keyword arguments of ``decode_mask``: the file's recorded thresholds, overridden by
        ``opts`` (None values ignored)."""
        return {**self.decode_settings, **{k: v for k, v in opts.items() if v is not None}}

    def decode(self, x: np.ndarray, **opts) -> list[np.ndarray]:
        """Decode generated masks (N x C x R x R in [-1, 1]) to uint16 instance labels
        (``opts`` of ``decode_mask`` over the file's recorded thresholds)."""
        from cellsynth.tools.codec import decode_mask

        if not self.encoding:
            raise CellsynthError(
                "this snapshot does not record its mask encoding; cannot decode to instances"
            )
        kwargs = self.decode_kwargs(**opts)
        return [
            np.asarray(decode_mask(u, self.encoding, **kwargs)).astype(np.uint16)
            for u in self.to_uint8(np.asarray(x))
        ]


def generate_images(
    network,
    seeds,
    outdir,
    trunc: float | None = None,
    class_idx=None,
    noise_mode: str = "const",
    translate=(0.0, 0.0),
    rotate: float = 0.0,
    decode: bool = False,
    batch: int = 8,
    device="cpu",
    progress: bool = False,
    overwrite: bool = False,
    fp32: bool = False,
    debias: str = "auto",
) -> list[Path]:
    """Write ``seedNNNN.png`` (and ``seedNNNN_masks.tif`` with ``decode``) into ``outdir``.

    Every option is checked before ``outdir`` is created. An ``outdir`` that already holds files
    is refused unless ``overwrite`` (then files of the same names are replaced, others kept).
    A failed run removes the ``outdir`` it created. Returns the written paths; every file is
    written atomically.
    """
    from cellsynth.atomic import check_folder_target, output_folder
    from cellsynth.datasets.io import write_image, write_labels

    outdir = check_folder_target(outdir, "--outdir")
    seeds = parse_seeds(seeds)
    if outdir.is_dir() and any(outdir.iterdir()) and not overwrite:
        raise CellsynthError(
            f"--outdir {outdir} already holds files; pass --overwrite to write into it (files "
            "of the same seeds are replaced), or choose an empty folder"
        )
    gen = MaskGenerator.load(network, device=device, fp32=fp32)
    if decode and not gen.encoding:
        raise CellsynthError(f"{network}: snapshot has no mask encoding; cannot --decode")
    gen.check_options(class_idx, noise_mode, batch, translate, rotate, trunc, debias)
    written = []
    with output_folder(outdir, option="--outdir"):
        for i in range(0, len(seeds), batch):
            chunk = seeds[i : i + batch]
            x = gen.generate(
                chunk,
                trunc,
                class_idx,
                noise_mode,
                batch,
                translate,
                rotate,
                progress,
                debias=debias,
            )
            imgs = gen.to_uint8(x)
            labels = gen.decode(x) if decode else [None] * len(chunk)
            for s, img, lab in zip(chunk, imgs, labels):
                written.append(write_image(outdir / f"seed{s:04d}.png", img))
                if lab is not None:
                    written.append(write_labels(outdir / f"seed{s:04d}_masks.tif", lab))
    return written
