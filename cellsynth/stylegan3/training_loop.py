"""The StyleGAN2/3 training loop (one process per device; see :func:`training_process`).

Per iteration: one batch of real masks (each process reads a disjoint shard of the data),
phases ``Gmain``/``Greg`` (or ``Gboth``) and ``Dmain``/``Dreg`` (or ``Dboth``) with lazy
regularisation, gradients averaged over processes, Adam steps, the EMA generator update and,
every ``ada_interval`` iterations, the ADA update of the augmentation probability. Every
``tick`` kimg a status line and statistics are written; every ``snap`` ticks a fakes grid, a
snapshot (exactly resumable: networks, optimisers, ADA, RNG and data-order state, counters)
and the requested metrics.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from cellsynth.errors import CellsynthError
from cellsynth.precision import low_precision_dtype
from cellsynth.stylegan3.augment import AugmentPipe, adjust_p
from cellsynth.stylegan3.configs import ARCH_DEFAULTS
from cellsynth.stylegan3.loss import StyleGANLoss
from cellsynth.stylegan3.snapshot import kimg_stamp, load_snapshot, save_snapshot, snapshot_name
from cellsynth.training import distributed as dist

# Default hyper-parameters of each configuration (as in the StyleGAN3 release).
CFG_DEFAULTS = {
    "stylegan3-t": dict(glr=0.0025, map_depth=2, style_mixing=0.0, pl_weight=0.0, G_reg=None),
    "stylegan3-r": dict(glr=0.0025, map_depth=2, style_mixing=0.0, pl_weight=0.0, G_reg=None),
    "stylegan2": dict(glr=0.002, map_depth=8, style_mixing=0.9, pl_weight=2.0, G_reg=4),
}
D_REG_INTERVAL = 16
ADA_INTERVAL = 4
PRELOAD_BYTES = 1 << 30
STAT_KEYS = (
    "Loss/G/loss",
    "Loss/D/loss",
    "Loss/scores/fake",
    "Loss/scores/real",
    "Loss/signs/real",
    "Loss/r1_penalty",
    "Loss/pl_penalty",
)


class MaskData:
    """Batches of a masks zip for one process: shuffled per epoch, sharded by rank.

    Args:
        path: the masks zip (``MaskZipDataset``); mirror: add x-flipped copies;
        rank, world: this process and the number of processes; seed: the data-order seed;
        workers: reader threads when the data does not fit in memory.
    The order state (epoch, position) is saved in snapshots (:meth:`state`/:meth:`load_state`).
    """

    def __init__(self, path, mirror=False, rank=0, world=1, seed=0, workers=2):
        from cellsynth.datasets.pack import MaskZipDataset

        if not Path(path).is_file():
            raise CellsynthError(
                f"{path}: no such masks zip; make one with 'cellsynth dataset pack'"
            )
        self.ds = MaskZipDataset(path)
        self.path = str(path)
        self.n = len(self.ds)
        if self.n == 0:
            raise CellsynthError(f"{path}: the masks zip holds no images")
        self.mirror, self.rank, self.world, self.seed = bool(mirror), rank, world, int(seed)
        self.resolution, self.channels = int(self.ds.resolution), int(self.ds.channels)
        self.encoding = getattr(self.ds, "encoding", None)
        self.has_labels = bool(getattr(self.ds, "has_labels", False))
        self.label_dim = int(getattr(self.ds, "label_dim", 0) or 0)
        self.classes = getattr(self.ds, "classes", None)
        self.repeat_crowded = list(getattr(self.ds, "repeat_crowded", []))
        self.total = self.n * (2 if self.mirror else 1)
        if self.total < world:
            raise CellsynthError(
                f"{path}: {self.total} images cannot be split over {world} processes"
            )
        self.epoch, self.pos = 0, 0
        self._order = None
        size = self.n * self.channels * self.resolution**2
        self._cache = None
        self._labels = None
        self._pool = ThreadPoolExecutor(max(1, int(workers))) if size > PRELOAD_BYTES else None
        if self._pool is None:
            items = [self.ds[i] for i in range(self.n)]
            self._cache = np.stack([np.asarray(img, dtype=np.uint8) for img, _ in items])
            self._labels = np.array([int(lab) for _, lab in items], dtype=np.int64)
        first = self._cache[0] if self._cache is not None else np.asarray(self.ds[0][0])
        if first.shape != (self.channels, self.resolution, self.resolution):
            raise CellsynthError(
                f"{path}: images have shape {first.shape}, but the zip says "
                f"{self.channels} x {self.resolution} x {self.resolution}"
            )

    def _shard(self) -> np.ndarray:
        if self._order is None or self._order[0] != self.epoch:
            perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.total)
            self._order = (self.epoch, perm[self.rank :: self.world])
        return self._order[1]

    def _item(self, k: int):
        i, flip = k % self.n, k >= self.n
        if self._cache is not None:
            img, lab = self._cache[i], int(self._labels[i])
        else:
            img, lab = self.ds[i]
            img = np.asarray(img, dtype=np.uint8)
        return (img[:, :, ::-1] if flip else img), int(lab)

    def next_batch(self, n: int):
        """The next ``n`` images (uint8 n x C x R x R) and labels (int64 n) of this shard."""
        keys = []
        while len(keys) < n:
            shard = self._shard()
            take = shard[self.pos : self.pos + n - len(keys)]
            keys.extend(int(k) for k in take)
            self.pos += len(take)
            if self.pos >= len(shard):
                self.epoch, self.pos = self.epoch + 1, 0
        if self._pool is not None:
            items = list(self._pool.map(self._item, keys))
        else:
            items = [self._item(k) for k in keys]
        imgs = np.stack([np.ascontiguousarray(im) for im, _ in items])
        return imgs, np.array([lab for _, lab in items], dtype=np.int64)

    def first_images(self, n: int) -> np.ndarray:
        """The first ``n`` images in file order (for reals.png)."""
        return np.stack([self._item(k)[0] for k in range(min(n, self.n))])

    def class_weights(self, c_dim: int) -> list | None:
        """How often each class occurs in the training set (fractions summing to 1), which
        generation uses to sample classes as the data has them; None when unconditional."""
        if not c_dim:
            return None
        labels = self._labels if self._labels is not None else np.asarray(self.ds.labels)
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=c_dim)[:c_dim]
        return [float(c) / float(counts.sum()) for c in counts]

    def random_labels(self, n: int, device) -> torch.Tensor:
        """Labels of ``n`` dataset images drawn with the torch RNG (conditioning of fakes)."""
        idx = torch.randint(0, self.n, [n], device="cpu")
        if self._labels is not None:
            return torch.from_numpy(self._labels[idx.numpy()]).to(device)
        return torch.tensor([int(self.ds[int(i)][1]) for i in idx], device=device)

    def state(self) -> dict:
        return {"epoch": int(self.epoch), "pos": int(self.pos), "seed": self.seed}

    def load_state(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


def _one_hot(labels: torch.Tensor, c_dim: int) -> torch.Tensor:
    if c_dim == 0:
        return torch.zeros([labels.shape[0], 0], device=labels.device)
    return torch.nn.functional.one_hot(labels, c_dim).float()


def build_args(opts: dict, data, c_dim: int) -> dict:
    """The keyword arguments of ``build_networks`` for these options (stored in snapshots);
    ``data`` is anything with ``.resolution`` and ``.channels`` (MaskData, MaskZipDataset)."""
    args = dict(
        cfg=opts["cfg"],
        img_resolution=data.resolution,
        img_channels=data.channels,
        c_dim=c_dim,
        cbase=int(opts["cbase"]),
        cmax=int(opts["cmax"]),
        map_depth=int(opts["map_depth"]),
        z_dim=int(opts.get("z_dim") or ARCH_DEFAULTS["z_dim"]),
        w_dim=int(opts.get("w_dim") or ARCH_DEFAULTS["w_dim"]),
        num_fp16_res=0 if _precision(opts) == "fp32" else ARCH_DEFAULTS["num_fp16_res"],
    )
    if opts["cfg"] != "stylegan2":  # the magnitude EMA of stylegan3 layers follows the batch
        args["g_kwargs"] = {"magnitude_ema_beta": 0.5 ** (int(opts["batch"]) / 20000)}
    return args


def training_precision(opts: dict) -> str:
    """What the mixed-precision layers run in: "fp16" on CUDA, "bf16" on a CPU with native bf16,
    "fp32" with ``--fp32`` or on a CPU without it (detected once per run; logged and stored in
    training_options.json)."""
    if opts.get("fp32"):
        return "fp32"
    device = opts.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = low_precision_dtype(torch.device(device))
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")


def _precision(opts: dict) -> str:
    """The run's precision, as check_options stored it (computed here for bare option dicts)."""
    if "precision" not in opts:
        opts["precision"] = training_precision(opts)
    return opts["precision"]


def check_resume(cfg: dict, opts: dict, data, build: dict) -> dict:
    """Raise unless the snapshot config ``cfg`` fits this run's ``data`` (``.channels``,
    ``.resolution``) and network ``build`` arguments; returns the build arguments to use."""
    path = opts["resume"]
    if int(cfg["channels"]) != int(data.channels):
        raise CellsynthError(
            f"{path}: the snapshot's network makes {cfg['channels']}-channel images but "
            f"{opts['data']} has {data.channels} channels; resume with matching data"
        )
    if int(cfg["resolution"]) != int(data.resolution):
        raise CellsynthError(
            f"{path}: the snapshot's network is {cfg['resolution']}px but "
            f"{opts['data']} is {data.resolution}px; resume with matching data"
        )
    for key, value in cfg["build"].items():
        if key == "c_dim" and int(value) == 0 and int(build.get("c_dim", 0)) > 0:
            continue  # an unconditional snapshot starts a conditional run (see widen_state)
        if key in build and build[key] != value and key != "num_fp16_res":
            raise CellsynthError(
                f"{path}: the snapshot was trained with {key}={value!r}, this run asks for "
                f"{build[key]!r}; use the snapshot's options to resume"
            )
    keep = ("num_fp16_res", "c_dim")
    return dict(cfg["build"], **{k: build[k] for k in keep if k in build})


def widen_state(module, state: dict) -> list[str]:
    """Load an unconditional network's ``state`` into the conditional ``module`` of the same
    architecture; returns the names that keep their fresh initialisation.

    Tensors of the same name and shape are copied. A mapping layer whose input grew by the
    class embedding (its weight has more columns) gets the old weight in its leading columns,
    times sqrt(new / old inputs) to undo the layer's 1 / sqrt(inputs) gain, so the latent acts
    as before; the embedding's columns keep their random initialisation, so each class starts
    as a fixed offset of the old mapping's first layer. (Zero columns would start the generator
    exactly where it was, but they learn at the mapping's 0.01 learning-rate multiplier: after
    8 kimg the three classes of the DSB2018 run still made the same masks.) Everything else (the
    class embedding, the discriminator's class mapping and its projection head) starts fresh."""
    own = module.state_dict()
    fresh = []
    for name, value in own.items():
        old = state.get(name)
        if old is not None and old.shape == value.shape:
            value.copy_(old)
        elif (
            old is not None
            and "mapping" in name
            and value.ndim == 2
            and old.ndim == 2
            and old.shape[0] == value.shape[0]
            and old.shape[1] < value.shape[1]
        ):
            value[:, : old.shape[1]] = old * math.sqrt(value.shape[1] / old.shape[1])
        else:
            fresh.append(name)
    module.load_state_dict(own)
    return fresh


class Trainer:
    """State of one training process. Build it, then call :meth:`run` (or :meth:`step`)."""

    def __init__(self, opts: dict, rank: int = 0, world: int = 1, run_dir=None, logger=None):
        self.opts, self.rank, self.world = opts, rank, world
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.logger = logger
        self._init_device_and_seeds()
        self._init_batch()
        self._init_data()
        cfg = opts["cfg"]
        if cfg not in CFG_DEFAULTS:
            raise CellsynthError(f"unknown --cfg {cfg!r}; use one of {sorted(CFG_DEFAULTS)}")
        defaults = CFG_DEFAULTS[cfg]
        self.build = build_args(opts, self.data, self.c_dim)

        resume = None
        if opts.get("resume"):
            resume = load_snapshot(opts["resume"])
            self._check_resume(resume)

        self._init_networks()
        self._init_augment()
        self._init_loss(cfg, defaults)
        self._init_optimizers(defaults)
        ema_kimg = opts.get("ema_kimg")
        self.ema_kimg = float(ema_kimg) if ema_kimg is not None else self.batch * 10 / 32
        self.ema_rampup = opts.get("ema_rampup", 0.05)

        self.cur_nimg = 0
        self.cur_tick = 0
        self.batch_idx = 0
        self.tick_start_nimg = 0
        self.tick_stats = {}
        self.fine_tune = False
        self.resume_note = ""
        if resume is not None:
            self._load_resume(resume)
        if (resume is None or self.fine_tune) and world > 1:
            for m in (self.G, self.D, self.G_ema):
                dist.broadcast_module(m)
        self._init_grid()

    # ------------------------------------------------------------------------------ setup
    def _init_device_and_seeds(self) -> None:
        """The device (``device`` option, else this rank's GPU, else the CPU), the ops
        implementation, the process's seeds and the cuDNN/TF32 settings."""
        opts, rank, world = self.opts, self.rank, self.world
        if opts.get("device"):
            self.device = torch.device(opts["device"])
        elif torch.cuda.is_available():
            self.device = torch.device("cuda", rank)
        else:
            self.device = torch.device("cpu")
        if opts.get("ops_impl") and opts["ops_impl"] != "auto":
            os.environ["CELLSYNTH_OPS_IMPL"] = opts["ops_impl"]
        seed = int(opts.get("seed", 0))
        np.random.seed((seed * world + rank) % (1 << 31))
        torch.manual_seed(seed * world + rank)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False

    def _init_batch(self) -> None:
        """``batch``, ``batch_gpu`` (per process and round) and the rounds per iteration."""
        world = self.world
        self.batch = int(self.opts["batch"])
        self.batch_gpu = int(self.opts.get("batch_gpu") or self.batch // world)
        if self.batch % (self.batch_gpu * world) != 0:
            raise CellsynthError(
                f"--batch {self.batch} must be a multiple of --batch-gpu {self.batch_gpu} "
                f"times --gpus {world}"
            )
        self.rounds = self.batch // (self.batch_gpu * world)

    def _init_data(self) -> None:
        """This process's shard of the masks zip, and ``c_dim`` (0 unless ``cond``)."""
        opts = self.opts
        self.data = MaskData(
            opts["data"],
            mirror=opts.get("mirror", False),
            rank=self.rank,
            world=self.world,
            seed=int(opts.get("seed", 0)),
            workers=opts.get("workers", 2),
        )
        if opts.get("cond"):
            if not self.data.has_labels or self.data.label_dim == 0:
                raise CellsynthError(f"{opts['data']}: --cond needs class labels in the zip")
            self.c_dim = self.data.label_dim
        else:
            self.c_dim = 0

    def _init_networks(self) -> None:
        """G, D (in training mode, at the training precision, on the device) and G_ema."""
        from cellsynth.stylegan3.networks import build_networks
        from cellsynth.stylegan3.networks_stylegan2 import set_precision

        G, D = build_networks(**self.build)
        self.precision = _precision(self.opts)
        mode = {"bf16": "mixed", "fp32": "fp32"}.get(self.precision, "default")
        self.G = set_precision(G.train().requires_grad_(False).to(self.device), mode)
        self.D = set_precision(D.train().requires_grad_(False).to(self.device), mode)
        self.G_ema = copy.deepcopy(self.G).eval()

    def _init_augment(self) -> None:
        """The augmentation pipe (None with ``aug`` noaug) and the ADA state."""
        opts = self.opts
        self.augment = None
        if opts.get("aug", "ada") != "noaug":
            self.augment = AugmentPipe.from_preset(
                opts.get("aug_preset", "geom"), self.data.channels
            )
            self.augment = self.augment.train().requires_grad_(False).to(self.device)
            self.augment.p.fill_(float(opts.get("p", 0.2)) if opts.get("aug") == "fixed" else 0.0)
        self.ada_target = (
            float(opts.get("target", 0.6)) if opts.get("aug", "ada") == "ada" else None
        )
        self.ada_kimg = float(opts.get("ada_kimg", 500))
        self.ada_stats = torch.zeros(2, dtype=torch.float64)

    def _init_loss(self, cfg: str, defaults: dict) -> None:
        """The StyleGAN loss of configuration ``cfg`` (blurred real images for stylegan3-r)."""
        blur_sigma = 10.0 if cfg == "stylegan3-r" else 0.0
        self.loss = StyleGANLoss(
            self.G,
            self.D,
            self.augment,
            r1_gamma=float(self.opts["gamma"]),
            style_mixing_prob=defaults["style_mixing"],
            pl_weight=defaults["pl_weight"],
            blur_init_sigma=blur_sigma,
            blur_fade_kimg=self.batch * 200 / 32 if blur_sigma else 0.0,
        )
        self.loss.pl_mean = torch.zeros([], device=self.device)

    def _init_optimizers(self, defaults: dict) -> None:
        """The Adam optimisers of G and D and the phases of an iteration: ``Xboth`` without
        lazy regularisation, else ``Xmain`` and ``Xreg`` (every ``reg`` iterations, with the
        learning rate and betas scaled as in StyleGAN2)."""
        glr = float(self.opts.get("glr") or defaults["glr"])
        dlr = float(self.opts.get("dlr") or 0.002)
        self.phases = []
        self.opt = {}
        for name, module, lr, reg in (
            ("G", self.G, glr, defaults["G_reg"]),
            ("D", self.D, dlr, D_REG_INTERVAL),
        ):
            if reg is None:
                opt = torch.optim.Adam(module.parameters(), lr=lr, betas=(0.0, 0.99), eps=1e-8)
                self.phases.append((name + "both", module, opt, 1))
            else:
                ratio = reg / (reg + 1)
                opt = torch.optim.Adam(
                    module.parameters(), lr=lr * ratio, betas=(0.0, 0.99**ratio), eps=1e-8
                )
                self.phases.append((name + "main", module, opt, 1))
                self.phases.append((name + "reg", module, opt, reg))
            self.opt[name] = opt

    def _init_grid(self) -> None:
        """Fixed latents and classes for the fakes grids (own generator: never touches the
        training RNG)."""
        g = torch.Generator().manual_seed(int(self.opts.get("seed", 0)) + 12345)
        self.grid_n = int(self.opts.get("grid", 32))
        self.grid_z = torch.randn([self.grid_n, self.G.z_dim], generator=g)
        self.grid_c = (
            torch.arange(self.grid_n) % self.c_dim if self.c_dim else torch.zeros(self.grid_n)
        ).long()

    # ----------------------------------------------------------------------------- resume
    def _check_resume(self, snap: dict) -> None:
        self.build = check_resume(snap["config"], self.opts, self.data, self.build)

    def _load_resume(self, snap: dict) -> None:
        from cellsynth.training.checkpoint import set_rng_state

        widening = int(snap["config"]["build"].get("c_dim", 0)) != self.c_dim
        if "D" not in snap or "G_opt" not in snap:
            # a weights-only generator (a shipped model, `cellsynth models export`): fine-tune
            # it: G and G_ema start from its weights, D and the optimizers fresh, kimg from 0
            weights = snap["G_ema"] if "G_ema" in snap else snap["G"]
            for module in (self.G, self.G_ema):
                if widening:
                    widen_state(module, weights)
                else:
                    module.load_state_dict(weights)
            self.fine_tune = True
            self.resume_note = (
                f"; fine-tuning the generator of {self.opts['resume']} (a weights-only file: "
                "fresh discriminator and optimizers)"
            )
            return
        if widening:
            # an unconditional run continues as a conditional one: the networks' weights (see
            # widen_state), the augmentation strength; fresh optimizers, kimg from 0
            fresh = {}
            for name, module in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema)):
                fresh[name] = widen_state(module, snap[name])
            self.resume_note = (
                f"; a conditional run started from the unconditional {self.opts['resume']} "
                f"(fresh: G {', '.join(fresh['G'])}; D {', '.join(fresh['D'])}; optimizers)"
            )
            if self.augment is not None and "augment_p" in snap and self.opts.get("aug") != "fixed":
                self.augment.p.copy_(snap["augment_p"])
            self.fine_tune = True
            return
        for name, module in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema)):
            module.load_state_dict(snap[name])
        for name in ("G", "D"):
            self.opt[name].load_state_dict(snap[f"{name}_opt"])
        if self.augment is not None and "augment_p" in snap and self.opts.get("aug") != "fixed":
            self.augment.p.copy_(snap["augment_p"])
        if "ada_stats" in snap:
            self.ada_stats = snap["ada_stats"].clone().double()
        if "pl_mean" in snap:
            self.loss.pl_mean = snap["pl_mean"].to(self.device).clone()
        c = snap["counters"]
        self.cur_nimg, self.cur_tick = int(c["cur_nimg"]), int(c["cur_tick"])
        self.batch_idx, self.tick_start_nimg = int(c["batch_idx"]), int(c["tick_start_nimg"])
        if self.world == 1:
            self.data.load_state(snap["sampler"])
            set_rng_state(snap["rng"])
        else:  # other processes' states are not stored: continue their streams reproducibly
            self.data.epoch, self.data.pos = int(snap["sampler"]["epoch"]) + 1, 0
            seed = int(self.opts.get("seed", 0)) * self.world + self.rank + self.cur_nimg
            torch.manual_seed(seed)
            np.random.seed(seed % (1 << 31))

    # ------------------------------------------------------------------------------ steps
    def _gen_c(self, n: int) -> torch.Tensor:
        if self.c_dim == 0:
            return torch.zeros([n, 0], device=self.device)
        return _one_hot(self.data.random_labels(n, self.device), self.c_dim)

    def step(self) -> None:
        """One training iteration over the whole batch (all phases, EMA, ADA)."""
        imgs, labels = self.data.next_batch(self.batch_gpu * self.rounds)
        real = torch.from_numpy(imgs).to(self.device).float() / 127.5 - 1
        real_c = _one_hot(torch.from_numpy(labels).to(self.device), self.c_dim)
        real = real.split(self.batch_gpu)
        real_c = real_c.split(self.batch_gpu)
        n_gen = len(self.phases) * self.batch_gpu * self.rounds
        all_z = torch.randn([n_gen, self.G.z_dim], device=self.device)
        all_c = self._gen_c(n_gen)
        all_z = all_z.split(self.batch_gpu * self.rounds)
        all_c = all_c.split(self.batch_gpu * self.rounds)

        for (phase, module, opt, interval), z, c in zip(self.phases, all_z, all_c):
            if self.batch_idx % interval != 0:
                continue
            opt.zero_grad(set_to_none=True)
            module.requires_grad_(True)
            for r_img, r_c, g_z, g_c in zip(
                real, real_c, z.split(self.batch_gpu), c.split(self.batch_gpu)
            ):
                stats = self.loss.accumulate_gradients(
                    phase, r_img, r_c, g_z, g_c, gain=interval, cur_nimg=self.cur_nimg
                )
                for k, v in stats.items():
                    s = self.tick_stats.setdefault(k, [0.0, 0])
                    s[0] += v
                    s[1] += 1
                if "Loss/signs/real" in stats:
                    self.ada_stats += torch.tensor(
                        [stats["Loss/signs/real"] * len(r_img), len(r_img)]
                    )
            module.requires_grad_(False)
            params = [p for p in module.parameters() if p.grad is not None]
            dist.all_reduce_grads(params)
            for p in params:
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
            opt.step()

        # EMA generator.
        ema_nimg = self.ema_kimg * 1000
        if self.ema_rampup is not None:
            ema_nimg = min(ema_nimg, (self.cur_nimg + self.batch) * self.ema_rampup)
        beta = 0.5 ** (self.batch / max(ema_nimg, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
                p_ema.copy_(p.lerp(p_ema, beta))
            for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
                b_ema.copy_(b)

        self.cur_nimg += self.batch
        self.batch_idx += 1

        # ADA.
        if self.ada_target is not None and self.batch_idx % ADA_INTERVAL == 0:
            total = dist.all_reduce_mean(self.ada_stats.clone())
            if total[1] > 0:
                rt = float(total[0] / total[1])
                p = adjust_p(
                    float(self.augment.p),
                    rt,
                    self.ada_target,
                    self.batch * ADA_INTERVAL,
                    self.ada_kimg,
                )
                self.augment.p.fill_(p)
            self.ada_stats.zero_()

    # -------------------------------------------------------------------------- outputs
    @torch.no_grad()
    def fakes(self) -> torch.Tensor:
        """G_ema images of the fixed grid latents (N x C x R x R in [-1, 1], on the CPU)."""
        out = []
        for z, c in zip(self.grid_z.split(self.batch_gpu), self.grid_c.split(self.batch_gpu)):
            z = z.to(self.device)
            c = _one_hot(c.to(self.device), self.c_dim)
            ws = self.G_ema.mapping(z, c, truncation_psi=1)
            out.append(self.G_ema.synthesis(ws, noise_mode="const").float().cpu())
        return torch.cat(out)

    def snapshot_state(self) -> tuple[dict, dict]:
        """(state, config) of a snapshot of the current training state."""
        from cellsynth.training.checkpoint import get_rng_state

        state = {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "G_opt": self.opt["G"].state_dict(),
            "D_opt": self.opt["D"].state_dict(),
            "augment_p": (
                self.augment.p.detach().cpu().clone()
                if self.augment is not None
                else torch.zeros([])
            ),
            "ada_stats": self.ada_stats.clone(),
            "pl_mean": self.loss.pl_mean.detach().cpu().clone(),
            "rng": get_rng_state(),
            "sampler": self.data.state(),
            "counters": {
                "cur_nimg": self.cur_nimg,
                "cur_tick": self.cur_tick,
                "batch_idx": self.batch_idx,
                "tick_start_nimg": self.tick_start_nimg,
            },
        }
        options = {k: v for k, v in self.opts.items() if k != "device"}
        config = {
            "build": self.build,
            "G_kwargs": _jsonable(getattr(self.G, "init_kwargs", {})),
            "D_kwargs": _jsonable(getattr(self.D, "init_kwargs", {})),
            "resolution": self.data.resolution,
            "channels": self.data.channels,
            "encoding": self.data.encoding,
            "num_classes": self.c_dim,
            "classes": _jsonable(self.data.classes),
            "class_weights": self.data.class_weights(self.c_dim),
            "repeat_crowded": [list(r) for r in self.data.repeat_crowded] or None,
            "z_dim": int(self.G.z_dim),
            "cur_nimg": self.cur_nimg,
            "training_options": _jsonable(options),
        }
        return state, config

    def save_snapshot(self, path) -> Path:
        state, config = self.snapshot_state()
        return save_snapshot(path, state, config)

    def _gather_stats(self) -> dict:
        sums = torch.tensor(
            [self.tick_stats.get(k, [0.0, 0])[i] for k in STAT_KEYS for i in (0, 1)],
            dtype=torch.float64,
        )
        sums = dist.all_reduce_mean(sums).view(-1, 2)
        self.tick_stats = {}
        return {k: float(s / n) for k, (s, n) in zip(STAT_KEYS, sums.tolist()) if n > 0}

    # ------------------------------------------------------------------------------- run
    def run(self, progress: bool = False) -> None:
        """Train until ``kimg`` (or ``max_minutes``); ticks, snapshots and metrics on the way."""
        from tqdm import tqdm

        opts, log = self.opts, self.logger
        total_nimg = int(float(opts["kimg"]) * 1000)
        tick_nimg = max(int(float(opts.get("tick", 4)) * 1000), 1)
        snap = int(opts.get("snap", 50) or 0)
        max_sec = float(opts.get("max_minutes") or 0) * 60
        main = self.rank == 0 and self.run_dir is not None
        t_start = time.time()
        tick_t = t_start
        from cellsynth.training.grid import save_grid

        if main:
            reals = self.data.first_images(self.grid_n)
            reals = reals[:, 0] if reals.shape[1] == 1 else np.moveaxis(reals[:, :3], 1, -1)
            save_grid(self.run_dir / "reals.png", reals)
            if self.cur_nimg == 0:
                self._write_fakes()
        bar = tqdm(
            total=total_nimg,
            initial=min(self.cur_nimg, total_nimg),
            unit="img",
            disable=not (progress and self.rank == 0),
            file=None,
        )
        done = self.cur_nimg >= total_nimg
        while not done:
            self.step()
            bar.update(self.batch)
            done = self.cur_nimg >= total_nimg
            if max_sec and not done:
                flag = torch.tensor(float(time.time() - t_start > max_sec))
                done = bool(dist.all_reduce_mean(flag) > 0)
            if not done and self.cur_nimg < self.tick_start_nimg + tick_nimg:
                continue
            # End of a tick.
            self.cur_tick += 1
            now = time.time()
            stats = self._gather_stats()
            kimg_tick = (self.cur_nimg - self.tick_start_nimg) / 1000
            p = float(self.augment.p) if self.augment is not None else 0.0
            stats.update(
                {
                    "Progress/tick": self.cur_tick,
                    "Progress/kimg": self.cur_nimg / 1000,
                    "Progress/augment": p,
                    "Timing/sec_per_tick": now - tick_t,
                    "Timing/sec_per_kimg": (now - tick_t) / max(kimg_tick, 1e-8),
                    "Timing/total_sec": now - t_start,
                }
            )
            if log is not None:
                log.print(
                    f"tick {self.cur_tick:<5d} kimg {self.cur_nimg / 1000:<8.3f} "
                    f"time {now - t_start:<7.1f} sec/kimg {stats['Timing/sec_per_kimg']:<7.2f} "
                    f"augment {p:.3f} G {stats.get('Loss/G/loss', float('nan')):.3f} "
                    f"D {stats.get('Loss/D/loss', float('nan')):.3f}"
                )
                log.scalars(self.cur_nimg, stats)
            if not all(math.isfinite(v) for v in stats.values()):
                raise CellsynthError(
                    "training diverged (non-finite losses); lower --glr/--dlr or raise --gamma"
                )
            if snap and (done or self.cur_tick % snap == 0):
                if main:
                    self._write_fakes()
                    self.save_snapshot(self.run_dir / snapshot_name(self.cur_nimg))
                    if log is not None:
                        log.print(f"snapshot {snapshot_name(self.cur_nimg)}")
                self._run_metrics()
                dist.barrier()
            self.tick_start_nimg = self.cur_nimg
            tick_t = time.time()
        bar.close()

    def _write_fakes(self) -> None:
        from cellsynth.training.grid import save_grid, tensor_to_uint8

        grid = tensor_to_uint8(self.fakes())
        save_grid(self.run_dir / f"fakes{kimg_stamp(self.cur_nimg)}.png", grid)
        if self.logger is not None:
            from cellsynth.training.grid import make_grid

            self.logger.image("fakes", self.cur_nimg, make_grid(grid))

    def _run_metrics(self) -> None:
        names = [m for m in (self.opts.get("metrics") or []) if m and m != "none"]
        if not names or self.rank != 0 or self.run_dir is None:
            return
        from cellsynth.stylegan3 import metrics

        for name in names:
            t0 = time.time()
            result = metrics.compute_metric(
                name,
                self.G_ema,
                self.opts["data"],
                device=self.device,
                encoding=self.data.encoding,
                inception=self.opts.get("inception"),
                seed=int(self.opts.get("seed", 0)),
            )
            rec = {
                "metric": name,
                "kimg": self.cur_nimg / 1000,
                "results": result,
                "seconds": round(time.time() - t0, 2),
                "snapshot": snapshot_name(self.cur_nimg),
            }
            with open(self.run_dir / f"metric-{name}.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            if self.logger is not None:
                flat = {
                    f"Metrics/{name}/{k}": v
                    for k, v in result.items()
                    if isinstance(v, (int, float))
                }
                self.logger.scalars(self.cur_nimg, flat)
                self.logger.print(f"metric {name}: {json.dumps(result)}")


def _jsonable(value):
    """Round-trip ``value`` through JSON (tuples -> lists); non-JSON leaves become strings."""
    return json.loads(json.dumps(value, default=str))


def training_process(rank: int, world: int, opts: dict, run_dir) -> None:
    """Entry point of one training process (called by ``distributed.launch``)."""
    from cellsynth.precision import cpu_kind
    from cellsynth.training.logging import RunLogger

    logger = RunLogger(run_dir, enabled=(rank == 0))
    try:
        trainer = Trainer(opts, rank=rank, world=world, run_dir=run_dir, logger=logger)
        if rank == 0:
            n_g = sum(p.numel() for p in trainer.G.parameters())
            n_d = sum(p.numel() for p in trainer.D.parameters())
            logger.print(
                f"training {opts['cfg']} on {opts['data']} ({trainer.data.n} images, "
                f"{trainer.data.resolution}px, {trainer.data.channels} ch) with {world} process(es) "
                f"on {trainer.device} ({cpu_kind() if trainer.device.type == 'cpu' else 'GPU'}, "
                f"mixed precision: {trainer.precision}); G {n_g} params, D {n_d} params; "
                f"starting at kimg {trainer.cur_nimg / 1000:.3f}{trainer.resume_note}"
            )
        trainer.run(progress=bool(opts.get("progress", False)))
        if rank == 0:
            logger.print("done.")
    finally:
        logger.close()
