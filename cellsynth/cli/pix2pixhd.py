"""``cellsynth pix2pixhd``: train, test and cluster a Pix2PixHD mask-to-image translator.

The train flags are the original Pix2PixHD names, made from the fields of
:class:`cellsynth.pix2pixhd.options.Options` so the two never drift apart.
"""

from __future__ import annotations

import dataclasses

import click

from cellsynth.pix2pixhd.options import GAN_MODES, NET_G, RESIZE_OR_CROP, Options

_HELP = {
    "name": "run name: checkpoints go to CHECKPOINTS_DIR/NAME/",
    "dataroot": "pairs folder (from `cellsynth dataset pack --kind pairs`)",
    "checkpoints_dir": "folder of run folders",
    "gpus": "number of processes (GPUs; CPU processes with gloo when there is no GPU)",
    "device": "auto, cpu or cuda",
    "seed": "random seed (weights, epoch order, transforms)",
    "phase": "split of the pairs folder to train on",
    "label_nc": "semantic classes (one-hot); 0 feeds the label values directly [pairs.json]",
    "output_nc": "image channels [pairs.json]",
    "resize_or_crop": "resize_and_crop | crop | scale_width | scale_width_and_crop | none",
    "loadSize": "size to resize to (width for scale_width*)",
    "fineSize": "crop size",
    "no_flip": "no random horizontal flips",
    "batchSize": "images per process and step",
    "max_dataset_size": "use at most this many pairs",
    "netG": "global or local (local enhancer)",
    "ngf": "generator filters in the first layer",
    "n_downsample_global": "downsamplings in the global generator",
    "n_blocks_global": "residual blocks in the global generator",
    "n_local_enhancers": "local enhancers (netG local)",
    "n_blocks_local": "residual blocks per local enhancer",
    "niter_fix_global": "epochs to train only the local enhancer, the global part held fixed",
    "no_instance": "no instance edge map input",
    "instance_feat": "encoder features pooled per instance (then `pix2pixhd clusters`)",
    "label_feat": "encoder features pooled per semantic label region",
    "feat_num": "encoded feature channels",
    "nef": "encoder filters in the first layer",
    "n_downsample_E": "encoder downsamplings",
    "n_clusters": "k-means clusters per class",
    "ndf": "discriminator filters in the first layer",
    "n_layers_D": "layers per discriminator",
    "num_D": "discriminator scales",
    "no_lsgan": "vanilla (BCE) GAN loss instead of least squares",
    "gan_mode": "lsgan | vanilla | hinge (overrides --no_lsgan)",
    "no_ganFeat_loss": "no discriminator feature-matching loss",
    "lambda_feat": "weight of the feature-matching and VGG losses",
    "no_vgg_loss": "no VGG19 perceptual loss",
    "vgg_weights": "torchvision VGG19 state dict file (or env CELLSYNTH_VGG19)",
    "lr": "Adam learning rate",
    "beta1": "Adam beta1",
    "niter": "epochs at the starting learning rate",
    "niter_decay": "epochs of linear decay to zero",
    "fp16": "mixed precision: fp16 AMP on CUDA, bf16 autocast on a CPU with native bf16",
    "continue_train": "resume from --which_epoch of this run",
    "load_pretrain": "start G from this generator (a checkpoint, run folder or shipped name; "
    "D and the optimisers start fresh): fine-tuning; a generator without feature inputs "
    "starts an --instance_feat/--label_feat run with zero weights on the features",
    "d_warmup": "first iterations of the run in which only D learns (G and E held fixed): "
    "a fresh D learns to judge before a pretrained G follows it",
    "which_epoch": "latest or an epoch number",
    "display_freq": "iterations between image pages",
    "print_freq": "iterations between loss lines",
    "save_latest_freq": "iterations between latest.pt saves",
    "save_epoch_freq": "epochs between epoch_N.pt saves",
    "max_minutes": "stop (saving latest.pt) after this many minutes",
    "max_iters": "stop (saving latest.pt) after this many iterations",
    "progress": "show a progress bar",
}

_CHOICES = {"resize_or_crop": RESIZE_OR_CROP, "gan_mode": GAN_MODES, "netG": NET_G}
_CHOICES["device"] = ("auto", "cpu", "cuda")


def _option_for(field: dataclasses.Field):
    """A click option named like the field (``--loadSize``) with its type and default."""
    kind = str(field.type).replace(" ", "")
    flag = f"--{field.name}"
    help_text = _HELP.get(field.name, "")
    if kind == "bool":
        if field.name == "progress":
            return click.option(
                "--progress/--no-progress", "progress", default=True, help=help_text
            )
        return click.option(flag, field.name, is_flag=True, default=False, help=help_text)
    base = kind.split("|")[0]
    ptype = {"int": int, "float": float, "str": str}[base]
    if field.name in _CHOICES:
        ptype = click.Choice(_CHOICES[field.name])
    return click.option(
        flag, field.name, type=ptype, default=field.default, show_default=True, help=help_text
    )


def _train_options(fn):
    for field in reversed(dataclasses.fields(Options)):
        fn = _option_for(field)(fn)
    return fn


@click.group()
def pix2pixhd():
    """Pix2PixHD mask-to-image translation: train, test, clusters."""


@pix2pixhd.command()
@_train_options
def train(**kwargs):
    """Train on a pairs folder (--dataroot); checkpoints in CHECKPOINTS_DIR/NAME/."""
    from cellsynth.pix2pixhd.training_loop import train as run_train

    run_dir = run_train(Options(**kwargs))
    click.echo(f"trained: {run_dir}")


@pix2pixhd.command()
@click.option("--name", required=True, help="run name (folder in --checkpoints_dir)")
@click.option("--checkpoints_dir", default="./checkpoints", show_default=True)
@click.option("--which_epoch", default="latest", show_default=True)
@click.option("--how_many", type=int, default=50, show_default=True, help="pairs to translate")
@click.option("--results_dir", default="./results", show_default=True)
@click.option("--dataroot", default=None, help="pairs folder [the one it was trained on]")
@click.option("--phase", default="test", show_default=True, help="split to translate")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="feature-cluster seed")
@click.option("--overwrite", is_flag=True, help="replace an existing results folder")
@click.option("--progress/--no-progress", default=True)
def test(**kwargs):
    """Translate a split's label maps; writes images and index.html under RESULTS_DIR/NAME/."""
    from cellsynth.pix2pixhd.test import run_test

    out = run_test(**kwargs)
    click.echo(f"results: {out / 'index.html'}")


@pix2pixhd.command()
@click.option("--name", required=True, help="run name (folder in --checkpoints_dir)")
@click.option("--checkpoints_dir", default="./checkpoints", show_default=True)
@click.option("--which_epoch", default="latest", show_default=True)
@click.option("--dataroot", default=None, help="pairs folder [the one it was trained on]")
@click.option("--phase", "split", default="train", show_default=True)
@click.option("--n_clusters", type=int, default=None, help="clusters per class [as trained]")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--out", default=None, help="output .npz [RUN/clusters.npz]")
@click.option("--progress/--no-progress", default=True)
def clusters(name, checkpoints_dir, **kwargs):
    """Cluster the per-cell encoder features (after --instance_feat training) and keep every
    training image's features as the bank that `synth --appearance image` draws from."""
    from pathlib import Path

    from cellsynth.pix2pixhd.clusters import compute_clusters

    path = compute_clusters(Path(checkpoints_dir) / name, **kwargs)
    click.echo(f"clusters: {path}")
