"""Pix2PixHD training: Adam, ``niter`` epochs at a constant rate then ``niter_decay`` epochs of
linear decay, optional mixed precision (CUDA) and ``--gpus N`` processes.

Run folder ``CHECKPOINTS/NAME/``: ``opt.json``, ``log.txt``, ``stats.jsonl`` + TensorBoard
events, ``latest.pt`` and ``epoch_N.pt`` (kind ``pix2pixhd``: networks, optimisers, counters,
RNG states) and ``web/index.html`` with (input, real, synthesised) PNGs. Resuming
(``continue_train``) is exact: the epoch order and every random transform are seeded by
(seed, epoch, index), so an interrupted run continued gives the same weights as one that was
never stopped.
"""

from __future__ import annotations

import html
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from cellsynth.atomic import output_folder, write_text
from cellsynth.errors import CellsynthError
from cellsynth.lock import lock_folder
from cellsynth.pix2pixhd import data as p2p_data
from cellsynth.pix2pixhd.checkpoints import checkpoint_path, resolve_checkpoint
from cellsynth.pix2pixhd.losses import GANLoss, VGGLoss, feature_matching_loss
from cellsynth.pix2pixhd.networks import (
    build_discriminator,
    build_encoder,
    build_generator,
    init_weights,
)
from cellsynth.pix2pixhd.options import Options
from cellsynth.precision import cpu_kind, low_precision_dtype
from cellsynth.training import distributed as dist_utils
from cellsynth.training.checkpoint import (
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from cellsynth.training.logging import RunLogger

KIND = "pix2pixhd"


# ---- small helpers ---------------------------------------------------------------------------
def pick_device(opt: Options, rank: int = 0) -> torch.device:
    """cuda:rank when asked for (or ``auto`` and available), else the CPU."""
    want = opt.device
    if want == "cuda" and not torch.cuda.is_available():
        raise CellsynthError("--device cuda asked for, but no CUDA device is available")
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", rank % max(torch.cuda.device_count(), 1))
    return torch.device("cpu")


def learning_rate(opt: Options, epoch: int) -> float:
    """``lr`` for epochs 1..niter, then a linear decay over ``niter_decay`` epochs (never 0)."""
    if epoch <= opt.niter:
        return opt.lr
    return opt.lr * max(0.0, 1.0 - (epoch - opt.niter) / (opt.niter_decay + 1))


def resolve_data(opt: Options) -> tuple[Options, object]:
    """Open the training pairs and fill ``label_nc``/``output_nc`` from them when unset."""
    if not opt.dataroot:
        raise CellsynthError("--dataroot is needed: a pairs folder from `cellsynth dataset pack`")
    dataset = p2p_data.open_pairs(opt.dataroot, opt.phase)
    if len(dataset) == 0:
        raise CellsynthError(f"{opt.dataroot}: the {opt.phase} split is empty")
    facts = p2p_data.dataset_facts(dataset)
    opt = opt.replace(
        label_nc=facts["label_nc"] if opt.label_nc is None else opt.label_nc,
        output_nc=facts["channels"] if opt.output_nc is None else opt.output_nc,
    )
    return opt, dataset


def visual(x: torch.Tensor) -> np.ndarray:
    """C x H x W in [-1, 1] -> uint8 H x W (1 channel) or H x W x 3 for PNGs."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    if x.shape[0] == 1:
        return x[0]
    if x.shape[0] == 2:
        x = np.concatenate([x, np.zeros_like(x[:1])])
    return np.ascontiguousarray(np.moveaxis(x[:3], 0, -1))


def label_visual(label: torch.Tensor, inst: torch.Tensor | None, label_nc: int) -> np.ndarray:
    """Semantic label (H x W) as gray levels with instance boundaries drawn black."""
    lab = label.detach().cpu().numpy().astype(np.float32)
    top = max(int(label_nc) - 1, 1) if label_nc else max(float(lab.max()), 1.0)
    vis = np.clip(lab * (255.0 / top), 0, 255).astype(np.uint8)
    if inst is not None:
        edge = p2p_data.edge_map(inst[None].cpu())[0, 0].numpy() > 0
        vis[edge & (lab > 0)] = 0
    return vis


def write_web_page(web_dir: Path, title: str) -> None:
    """(Re)write ``web/index.html`` listing the saved PNG triples, newest first."""
    images = sorted((web_dir / "images").glob("*_synthesized_image.png"), reverse=True)
    rows = []
    for synth in images:
        stem = synth.name[: -len("_synthesized_image.png")]
        cells = "".join(
            f'<td><img src="images/{stem}_{kind}.png" width="256"><br>{kind}</td>'
            for kind in ("input_label", "real_image", "synthesized_image")
        )
        rows.append(f"<h3>{html.escape(stem)}</h3><table><tr>{cells}</tr></table>")
    body = "\n".join(rows) or "<p>no images yet</p>"
    write_text(
        web_dir / "index.html",
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title></head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n",
    )


def save_png(path: Path, image: np.ndarray) -> None:
    from cellsynth.datasets.io import write_image

    write_image(path, image)


# ---- the model bundle ------------------------------------------------------------------------
class Pix2PixHDModel:
    """G, D, the optional encoder E, the losses and the two Adam optimisers."""

    def __init__(self, opt: Options, device: torch.device, vgg: VGGLoss | None = None):
        self.opt = opt
        self.device = device
        self.G = build_generator(opt).to(device)
        self.D = build_discriminator(opt).to(device)
        self.E = build_encoder(opt)
        for net in (self.G, self.D, self.E):
            if net is not None:
                init_weights(net)
        if self.E is not None:
            self.E.to(device)
        self.gan_loss = GANLoss(opt.loss_mode)
        self.vgg = vgg.to(device) if vgg is not None else None
        betas = (opt.beta1, 0.999)
        self.optim_G = torch.optim.Adam(self.g_params(), lr=opt.lr, betas=betas)
        self.optim_D = torch.optim.Adam(self.D.parameters(), lr=opt.lr, betas=betas)
        # --fp16: fp16 autocast with loss scaling on CUDA (as the original's AMP), bf16 autocast
        # on a CPU with native bf16 (same range as fp32: no loss scaling needed)
        self.amp_dtype = low_precision_dtype(device, bool(opt.fp16))
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.amp_dtype is torch.float16 and device.type == "cuda"
        )

    def g_params(self) -> list[torch.nn.Parameter]:
        params = list(self.G.parameters())
        if self.E is not None:
            params += list(self.E.parameters())
        return params

    def set_epoch(self, epoch: int) -> None:
        """Learning rate of ``epoch``; the local enhancer's global part frozen while
        ``epoch <= niter_fix_global``."""
        lr = learning_rate(self.opt, epoch)
        for optim in (self.optim_G, self.optim_D):
            for group in optim.param_groups:
                group["lr"] = lr
        if self.opt.netG == "local":
            self.G.global_net.requires_grad_(epoch > self.opt.niter_fix_global)

    def generator_input(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(condition for D, input for G) of a batch already on the device."""
        cond = p2p_data.encode_input(batch["label"], batch["inst"], self.opt)
        if self.E is None:
            return cond, cond
        regions = p2p_data.feature_regions(batch["label"], batch["inst"], self.opt)
        feat = self.E(batch["image"], regions)
        return cond, torch.cat([cond, feat], dim=1)

    def step(self, batch: dict, update_g: bool = True) -> tuple[dict, torch.Tensor]:
        """One G update then one D update; returns (loss values, fake images). With
        ``update_g`` False (``--d_warmup``) the generator's losses are computed but G and E
        keep their weights."""
        opt = self.opt
        amp = torch.autocast(
            self.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        )
        real = batch["image"]
        # generator (and encoder)
        self.D.requires_grad_(False)
        with amp, torch.set_grad_enabled(update_g):
            cond, g_in = self.generator_input(batch)
            fake = self.G(g_in)
            pred_fake = self.D(torch.cat([cond, fake], dim=1))
            loss_gan = self.gan_loss(pred_fake, True, for_discriminator=False)
            loss_feat = torch.zeros((), device=self.device)
            if not opt.no_ganFeat_loss:
                with torch.no_grad():
                    pred_real = self.D(torch.cat([cond, real], dim=1))
                loss_feat = feature_matching_loss(pred_fake, pred_real, opt.lambda_feat)
            loss_vgg = torch.zeros((), device=self.device)
            if self.vgg is not None:
                loss_vgg = self.vgg(fake, real) * opt.lambda_feat
            loss_g = loss_gan + loss_feat + loss_vgg
        if update_g:
            self.optim_G.zero_grad(set_to_none=True)
            self.scaler.scale(loss_g).backward()
            dist_utils.all_reduce_grads(self.g_params())
            self.scaler.step(self.optim_G)
        # discriminator
        self.D.requires_grad_(True)
        with amp:
            pred_fake = self.D(torch.cat([cond.detach(), fake.detach()], dim=1))
            pred_real = self.D(torch.cat([cond.detach(), real], dim=1))
            loss_d_fake = self.gan_loss(pred_fake, False, for_discriminator=True)
            loss_d_real = self.gan_loss(pred_real, True, for_discriminator=True)
            loss_d = 0.5 * (loss_d_fake + loss_d_real)
        self.optim_D.zero_grad(set_to_none=True)
        self.scaler.scale(loss_d).backward()
        dist_utils.all_reduce_grads(list(self.D.parameters()))
        self.scaler.step(self.optim_D)
        self.scaler.update()
        values = {
            "G_GAN": loss_gan,
            "G_GAN_Feat": loss_feat,
            "G_VGG": loss_vgg,
            "D_real": loss_d_real,
            "D_fake": loss_d_fake,
        }
        return {k: float(v.detach()) for k, v in values.items()}, fake.detach()

    # ---- checkpoints ----
    def state(self) -> dict:
        return {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "E": self.E.state_dict() if self.E is not None else {},
            "optim_G": self.optim_G.state_dict(),
            "optim_D": self.optim_D.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state(self, ckpt: dict, path: Path) -> None:
        try:
            self.G.load_state_dict(ckpt["G"])
            self.D.load_state_dict(ckpt["D"])
            if self.E is not None:
                self.E.load_state_dict(ckpt["E"])
            self.optim_G.load_state_dict(ckpt["optim_G"])
            self.optim_D.load_state_dict(ckpt["optim_D"])
            if ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CellsynthError(
                f"{path}: does not fit these options ({first}); continue with the options it "
                "was trained with (see opt.json)"
            ) from None


# ---- the loop ------------------------------------------------------------------------------
def _precision_name(amp_dtype) -> str:
    """What --fp16 turned on: "fp16 AMP", "bf16 autocast" or "fp32"."""
    return {torch.float16: "fp16 AMP", torch.bfloat16: "bf16 autocast"}.get(amp_dtype, "fp32")


def load_pretrained_G(opt: Options) -> dict:
    """The generator state of ``opt.load_pretrain`` (a checkpoint, a run folder or a shipped
    name), checked against the generator ``opt`` builds (CellsynthError naming what differs);
    widened for a feature run when the file's generator took no features."""
    path = resolve_checkpoint(opt.load_pretrain)
    state = load_checkpoint(path, kind=KIND).get("G")
    if not isinstance(state, dict):
        raise CellsynthError(f"--load_pretrain {opt.load_pretrain}: {path} holds no generator")
    return _fitted(opt, state, build_generator(opt), "generator")


def load_pretrained_E(opt: Options) -> dict | None:
    """The feature encoder state of ``opt.load_pretrain`` when this run has an encoder and the
    file holds one (an export of a feature model keeps it, so a fine-tune goes on with the
    features its generator learned); None otherwise (the encoder starts fresh)."""
    if not opt.use_features:
        return None
    state = load_checkpoint(resolve_checkpoint(opt.load_pretrain), kind=KIND).get("E")
    return _fitted(opt, state, build_encoder(opt), "feature encoder") if state else None


def _fitted(opt: Options, state: dict, net: torch.nn.Module, what: str) -> dict:
    """``state`` in ``net``'s dtypes (a generator widened for features where it needs it),
    loaded into ``net`` as a check: CellsynthError naming what differs."""
    own = net.state_dict()
    state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
    if opt.use_features and what == "generator":
        state = widen_for_features(state, own, opt.feat_num)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise CellsynthError(
            f"--load_pretrain {opt.load_pretrain}: the {what} does not fit these options "
            f"({str(exc).splitlines()[0]}); use the options it was trained with"
        ) from None
    return state


def widen_for_features(state: dict, own: dict, feat_num: int) -> dict:
    """A generator trained without encoded features, made to take ``feat_num`` more input
    channels: every convolution that reads the generator input (the input is the label
    encoding with the features appended, :meth:`Pix2PixHDModel.generator_input`) gets zero
    weights for the new channels, so the widened generator makes exactly what it made until
    fine-tuning teaches it to use them. Tensors that already fit are returned as they are."""
    out = dict(state)
    for key, value in state.items():
        target = own.get(key)
        if (
            target is not None
            and value.ndim == 4
            and target.ndim == 4
            and target.shape[1] == value.shape[1] + feat_num
            and target.shape[0] == value.shape[0]
            and target.shape[2:] == value.shape[2:]
        ):
            zeros = value.new_zeros((value.shape[0], feat_num, *value.shape[2:]))
            out[key] = torch.cat([value, zeros], dim=1)
    return out


def _has_checkpoint(run_dir: Path) -> bool:
    return any(run_dir.glob("*.pt"))


def train(opt: Options) -> Path:
    """Train Pix2PixHD as ``opt`` says; returns the run folder ``checkpoints_dir/name``."""
    opt = opt.check()
    if opt.fp16 and low_precision_dtype(pick_device(opt), True) is None:
        raise CellsynthError(
            "--fp16 needs a CUDA device or a CPU with native bf16 (avx512_bf16 or amx_bf16); "
            f"this one has neither ({cpu_kind()}): drop --fp16"
        )
    opt, dataset = resolve_data(opt)
    run_dir = Path(opt.checkpoints_dir) / opt.name
    if opt.continue_train:
        ckpt_path = checkpoint_path(run_dir, opt.which_epoch)
        if not ckpt_path.is_file():
            raise CellsynthError(
                f"{ckpt_path}: no checkpoint to continue from; check --name, --checkpoints_dir "
                "and --which_epoch"
            )
    elif (run_dir / "latest.pt").exists():
        raise CellsynthError(
            f"{run_dir} already has checkpoints; pass --continue_train to resume it or choose "
            "another --name"
        )
    if opt.load_pretrain:  # fail early on a missing or mismatched generator or encoder
        load_pretrained_G(opt)
        load_pretrained_E(opt)
    # fail early (before spawning) on a missing VGG file or an unreadable first sample
    if not opt.no_vgg_loss:
        VGGLoss.load(opt.vgg_weights)
    p2p_data.load_batch(dataset, [0], opt, 1, True)
    nproc = max(1, int(opt.gpus))
    n = len(dataset) if opt.max_dataset_size is None else min(len(dataset), opt.max_dataset_size)
    if n < opt.batchSize * nproc:
        raise CellsynthError(
            f"{n} training pairs cannot fill one batch of {opt.batchSize} x {nproc} processes; "
            "lower --batchSize or --gpus"
        )
    # a run folder this call creates is removed again if training fails before a checkpoint;
    # the folder is locked while this run writes it
    with output_folder(run_dir, keep=_has_checkpoint, option="--checkpoints_dir/--name"):
        with lock_folder(run_dir, "pix2pixhd train"):
            write_text(run_dir / "opt.json", opt.to_json())
            dist_utils.launch(_worker, nproc, args=(opt.to_dict(), str(run_dir)))
    return run_dir


def _worker(rank: int, world: int, opt_dict: dict, run_dir: str) -> None:
    opt = Options.from_dict(opt_dict)
    run_dir = Path(run_dir)
    device = pick_device(opt, rank)
    main = rank == 0
    torch.manual_seed(opt.seed)
    np.random.seed(opt.seed)
    vgg = None if opt.no_vgg_loss else VGGLoss.load(opt.vgg_weights)
    model = Pix2PixHDModel(opt, device, vgg)
    dataset = p2p_data.open_pairs(opt.dataroot, opt.phase)
    n = len(dataset) if opt.max_dataset_size is None else min(len(dataset), opt.max_dataset_size)
    per_step = opt.batchSize * world
    batches_per_epoch = n // per_step

    start_epoch, start_iter, total_iters = 1, 0, 0
    if opt.load_pretrain:
        model.G.load_state_dict(load_pretrained_G(opt))
        encoder = load_pretrained_E(opt)
        if encoder is not None:
            model.E.load_state_dict(encoder)
    if opt.continue_train:
        path = checkpoint_path(run_dir, opt.which_epoch)
        ckpt = load_checkpoint(path, kind=KIND)
        model.load_state(ckpt, path)
        start_epoch, start_iter = int(ckpt["epoch"]), int(ckpt["epoch_iter"])
        total_iters = int(ckpt["total_iters"])
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"])
    for net in (model.G, model.D, model.E):
        if net is not None:
            dist_utils.broadcast_module(net)

    logger = RunLogger(run_dir, enabled=main)
    web_dir = run_dir / "web"
    train_size = list(p2p_data.load_batch(dataset, [0], opt, 1, True)["label"].shape[-2:])
    config = {"opt": opt.to_dict(), "size": train_size}

    def save(name: str, epoch: int, epoch_iter: int) -> None:
        if not main:
            return
        state = dict(model.state(), epoch=epoch, epoch_iter=epoch_iter, total_iters=total_iters)
        state["rng"] = get_rng_state()
        save_checkpoint(run_dir / name, state, KIND, config)

    if main:
        logger.print(
            f"pix2pixhd: {n} pairs, {batches_per_epoch} iterations/epoch, {world} process(es) "
            f"on {device}, epochs {start_epoch}..{opt.total_epochs}; precision: "
            f"{_precision_name(model.amp_dtype)}"
            + (f" ({cpu_kind()})" if device.type == "cpu" else "")
        )
    t0 = time.time()
    stop = False
    from tqdm import tqdm

    for epoch in range(start_epoch, opt.total_epochs + 1):
        model.set_epoch(epoch)
        order = np.random.default_rng([int(opt.seed), epoch]).permutation(n)
        first = start_iter if epoch == start_epoch else 0
        bar = tqdm(
            range(first, batches_per_epoch),
            desc=f"epoch {epoch}/{opt.total_epochs}",
            disable=not (main and opt.progress),
            leave=False,
        )
        t_epoch = time.time()
        b = first - 1
        for b in bar:
            start = b * per_step + rank * opt.batchSize
            chosen = order[start : start + opt.batchSize]
            batch = p2p_data.load_batch(dataset, chosen, opt, epoch, True)
            on_dev = {k: v.to(device) for k, v in batch.items() if k != "names"}
            losses, fake = model.step(on_dev, update_g=total_iters >= opt.d_warmup)
            total_iters += 1
            if not all(np.isfinite(v) for v in losses.values()):
                raise CellsynthError(f"training diverged at iteration {total_iters}: {losses}")
            if main and total_iters % opt.print_freq == 0:
                spent = (time.time() - t_epoch) / max(b - first + 1, 1)
                text = " ".join(f"{k}: {v:.3f}" for k, v in losses.items())
                logger.print(f"(epoch: {epoch}, iters: {b + 1}, time/iter: {spent:.3f}) {text}")
                logger.scalars(total_iters, dict(losses, lr=learning_rate(opt, epoch)))
            if main and total_iters % opt.display_freq == 0:
                stem = f"epoch{epoch:03d}_iter{total_iters:08d}"
                save_png(
                    web_dir / "images" / f"{stem}_input_label.png",
                    label_visual(batch["label"][0], batch["inst"][0], opt.label_nc),
                )
                save_png(web_dir / "images" / f"{stem}_real_image.png", visual(batch["image"][0]))
                synth = visual(fake[0])
                save_png(web_dir / "images" / f"{stem}_synthesized_image.png", synth)
                logger.image("synthesized_image", total_iters, synth)
                write_web_page(web_dir, f"pix2pixhd {opt.name}")
            if main and total_iters % opt.save_latest_freq == 0:
                save("latest.pt", epoch, b + 1)
            over_iters = opt.max_iters is not None and total_iters >= opt.max_iters
            over_time = opt.max_minutes is not None and (time.time() - t0) > 60 * opt.max_minutes
            flag = torch.tensor(float(over_iters or over_time))
            if dist_utils.all_reduce_mean(flag).item() > 0:
                stop = True
                if b + 1 < batches_per_epoch:
                    save("latest.pt", epoch, b + 1)
                    break
        bar.close()
        if not stop or b + 1 >= batches_per_epoch:
            save("latest.pt", epoch + 1, 0)
            if epoch % opt.save_epoch_freq == 0 or epoch == opt.total_epochs:
                save(f"epoch_{epoch}.pt", epoch + 1, 0)
            if main:
                logger.print(
                    f"end of epoch {epoch} / {opt.total_epochs} ({time.time() - t_epoch:.1f} s)"
                )
        if stop:
            if main:
                logger.print(f"stopped at iteration {total_iters} (budget reached)")
            break
    dist_utils.barrier()
    logger.close()


def read_opt(run_dir: str | os.PathLike) -> Options:
    """The options saved in a run folder's ``opt.json``."""
    path = Path(run_dir) / "opt.json"
    if not path.is_file():
        raise CellsynthError(f"{path}: missing; is {run_dir} a pix2pixhd run folder?")
    try:
        return Options.from_dict(json.loads(path.read_text()))
    except ValueError as exc:
        raise CellsynthError(f"{path}: unreadable ({exc})") from None
