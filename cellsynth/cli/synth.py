"""``cellsynth synth``: seeds -> masks -> instances -> images -> puncta -> a synthetic dataset.

``cellsynth synth --out DIR ...`` generates; ``cellsynth synth merge DIR`` joins the files of
``--shard i/N`` runs into the final manifest.json and annotations.json.
"""

from __future__ import annotations

import json

import click

from cellsynth.errors import CellsynthError
from cellsynth.tools.parse import parse_matrix, parse_size


@click.group(invoke_without_command=True)
@click.option("--out", type=click.Path(), help="Output folder (a canonical split folder).")
@click.option(
    "--masks",
    default="simulate",
    show_default=True,
    help="stylegan3:PATH (a snapshot), simulate, or a canonical split folder of real masks.",
)
@click.option("--images", default="simulate", show_default=True, help="pix2pixhd:PATH or simulate.")
@click.option("--seeds", default="0-9", show_default=True, help="Seeds, e.g. 0-99,120.")
@click.option("--trunc", type=float, default=1.0, show_default=True, help="Truncation psi.")
@click.option("--class", "class_idx", type=int, default=None, help="Class (conditional GAN).")
@click.option(
    "--noise-mode",
    type=click.Choice(["const", "random", "none"]),
    default="const",
    show_default=True,
)
@click.option("--size", default="256", show_default=True, help="Simulated mask size N or HxW.")
@click.option("--density", type=float, default=0.5, show_default=True, help="Simulated masks.")
@click.option("--mean-radius", type=float, default=12.0, show_default=True)
@click.option(
    "--threshold",
    "threshold_method",
    type=click.Choice(["fixed", "otsu", "li", "triangle", "mean"]),
    default="fixed",
    show_default=True,
    help="Foreground threshold of generated masks.",
)
@click.option("--fg-thresh", type=float, default=None, help="Default: the codec's.")
@click.option("--boundary-thresh", type=float, default=None, help="Default: the codec's.")
@click.option("--marker-thresh", type=float, default=None, help="Default: the codec's.")
@click.option("--smooth", type=float, default=0.0, show_default=True, help="Gaussian sigma.")
@click.option("--min-size", type=int, default=0, show_default=True, help="Drop smaller cells.")
@click.option(
    "--upscale",
    type=int,
    default=1,
    show_default=True,
    help="stylegan3 masks: resize the generated masks by this factor before decoding.",
)
@click.option(
    "--border",
    type=click.Choice(["keep", "drop"]),
    default="keep",
    show_default=True,
    help="Keep or drop cells touching the image border.",
)
@click.option("--channels", type=int, default=1, show_default=True, help="Simulated images.")
@click.option("--bit-depth", type=click.Choice(["8", "16"]), default="8", show_default=True)
@click.option(
    "--spots-count",
    type=float,
    default=0.0,
    show_default=True,
    help="Puncta per cell (Poisson mean; 0 = none).",
)
@click.option("--spots-fixed", is_flag=True, help="Exactly --spots-count per cell.")
@click.option(
    "--spots-spread",
    type=click.Choice(["isotropic", "shape", "matrix"]),
    default="isotropic",
    show_default=True,
)
@click.option("--spots-sigma", type=float, default=2.0, show_default=True)
@click.option("--spots-scale", type=float, default=0.5, show_default=True)
@click.option("--spots-matrix", default=None, help="sxx,sxy,syx,syy for --spots-spread matrix.")
@click.option(
    "--spots-intensity",
    type=click.Choice(["lognormal", "gamma", "uniform", "constant"]),
    default="lognormal",
    show_default=True,
)
@click.option("--spots-intensity-mean", type=float, default=3.0, show_default=True)
@click.option("--spots-intensity-spread", type=float, default=0.3, show_default=True)
@click.option("--spots-psf", type=float, default=1.0, show_default=True, help="PSF sigma (px).")
@click.option(
    "--spots-mode", type=click.Choice(["add", "channel"]), default="add", show_default=True
)
@click.option("--spots-channel", default="0", show_default=True, help="Channel or 'all'.")
@click.option("--spots-model", default=None, help="pix2pixhd:PATH rendering spot masks.")
@click.option("--photons", type=float, default=0.0, show_default=True, help="Shot noise.")
@click.option("--read-noise", type=float, default=0.0, show_default=True)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue --out: skip seeds already written (same options and the same --seeds).",
)
@click.option("--shard", default=None, help="i/N: this run makes every N-th seed from i.")
@click.option("--batch", type=int, default=8, show_default=True, help="GAN batch size.")
@click.option(
    "--workers",
    type=int,
    default=0,
    show_default=True,
    help="Worker processes (0 = in the main process).",
)
@click.option("--device", default=None, help="Torch device (default: cuda if available).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--progress/--no-progress", default=True)
@click.pass_context
def synth(
    ctx,
    out,
    masks,
    images,
    seeds,
    trunc,
    class_idx,
    noise_mode,
    size,
    density,
    mean_radius,
    threshold_method,
    fg_thresh,
    boundary_thresh,
    marker_thresh,
    smooth,
    min_size,
    upscale,
    border,
    channels,
    bit_depth,
    spots_count,
    spots_fixed,
    spots_spread,
    spots_sigma,
    spots_scale,
    spots_matrix,
    spots_intensity,
    spots_intensity_mean,
    spots_intensity_spread,
    spots_psf,
    spots_mode,
    spots_channel,
    spots_model,
    photons,
    read_noise,
    resume,
    shard,
    batch,
    workers,
    device,
    overwrite,
    progress,
):
    """Generate a synthetic, fully annotated dataset (images, masks, puncta, COCO).

    One run writes --out at a time (it holds --out/.cellsynth.lock; a second run stops with one
    line). --resume and --shard continue the seed list the folder was started with and refuse
    another one, so manifest.json and annotations.json list every sample on disk; make more
    seeds in a new --out.
    """
    if ctx.invoked_subcommand is not None:
        return
    if out is None:
        raise click.UsageError("--out is required")
    from cellsynth.synth import synth as run

    if spots_channel == "all":
        chan = None
    else:
        try:
            chan = int(spots_channel)
        except ValueError:
            raise CellsynthError(f"--spots-channel {spots_channel!r}: a number or 'all'") from None
    summary = run(
        out,
        masks,
        images,
        seeds,
        size=parse_size(size, "--size"),
        density=density,
        mean_radius=mean_radius,
        trunc=trunc,
        class_idx=class_idx,
        noise_mode=noise_mode,
        threshold_method=threshold_method,
        fg_thresh=fg_thresh,
        boundary_thresh=boundary_thresh,
        marker_thresh=marker_thresh,
        smooth=smooth,
        min_size=min_size,
        upscale=upscale,
        border=border,
        channels=channels,
        bit_depth=int(bit_depth),
        spots_count=spots_count,
        spots_fixed=spots_fixed,
        spots_spread=spots_spread,
        spots_sigma=spots_sigma,
        spots_scale=spots_scale,
        spots_matrix=parse_matrix(spots_matrix, "--spots-matrix"),
        spots_intensity=spots_intensity,
        spots_intensity_mean=spots_intensity_mean,
        spots_intensity_spread=spots_intensity_spread,
        spots_psf=spots_psf,
        spots_mode=spots_mode,
        spots_channel=chan,
        spots_model=spots_model,
        photons=photons,
        read_noise=read_noise,
        resume=resume,
        shard=shard,
        batch=batch,
        workers=workers,
        overwrite=overwrite,
        device=device,
        progress=progress,
    )
    what = f" (shard {shard}; run `cellsynth synth merge {out}` when all shards are done)"
    click.echo(
        f"wrote {summary['written']} samples to {out}"
        + (f", {summary['skipped']} already there" if summary["skipped"] else "")
        + (what if shard else "")
    )


@synth.command("merge")
@click.argument("out", type=click.Path())
def merge(out):
    """Join the shard files in OUT into manifest.json and annotations.json."""
    from cellsynth.synth import merge_shards

    summary = merge_shards(out)
    click.echo(json.dumps(summary))
