"""``cellsynth stylegan3``: train a mask generator, generate masks, measure them."""

import click

from cellsynth.stylegan3.configs import ARCH_DEFAULTS, CONFIGS
from cellsynth.stylegan3.generate import DEBIAS_CHOICES


@click.group()
def stylegan3():
    """Train StyleGAN2/3 on masks, generate masks from snapshots, compute metrics."""


@stylegan3.command()
@click.option("--outdir", required=True, type=click.Path(file_okay=False), help="Runs folder.")
@click.option(
    "--cfg",
    default="stylegan3-t",
    show_default=True,
    type=click.Choice(CONFIGS),
)
@click.option("--data", required=True, type=click.Path(), help="Masks zip (dataset pack).")
@click.option("--gpus", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--batch", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-gpu", default=None, type=click.IntRange(min=1), help="Per process.")
@click.option("--gamma", required=True, type=click.FloatRange(min=0), help="R1 weight.")
@click.option("--mirror", is_flag=True, help="Add x-flipped copies of the data.")
@click.option(
    "--aug", default="ada", show_default=True, type=click.Choice(["noaug", "ada", "fixed"])
)
@click.option(
    "--p", default=0.2, show_default=True, type=click.FloatRange(0, 1), help="For --aug fixed."
)
@click.option(
    "--target", default=0.6, show_default=True, type=click.FloatRange(0, 1), help="ADA r_t."
)
@click.option(
    "--ada-kimg",
    default=500,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="ADA speed: kimg for p to go from 0 to 1 (smaller reacts faster; for short runs).",
)
@click.option(
    "--kimg", default=25000, show_default=True, type=click.FloatRange(min=0, min_open=True)
)
@click.option("--tick", default=4, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--snap", default=50, show_default=True, type=click.IntRange(min=0), help="Ticks.")
@click.option(
    "--resume",
    default=None,
    help="Snapshot path, or 'latest' (newest in --outdir); a snapshot of a run folder in "
    "--outdir continues in that folder.",
)
@click.option(
    "--cbase", default=ARCH_DEFAULTS["cbase"], show_default=True, type=click.IntRange(min=1)
)
@click.option(
    "--cmax", default=ARCH_DEFAULTS["cmax"], show_default=True, type=click.IntRange(min=1)
)
@click.option(
    "--map-depth", default=None, type=click.IntRange(min=1), help="[default: 2 sg3, 8 sg2]"
)
@click.option(
    "--z-dim", default=ARCH_DEFAULTS["z_dim"], show_default=True, type=click.IntRange(min=1)
)
@click.option(
    "--w-dim", default=ARCH_DEFAULTS["w_dim"], show_default=True, type=click.IntRange(min=1)
)
@click.option("--glr", default=None, type=float, help="[default: 0.0025 sg3, 0.002 sg2]")
@click.option("--dlr", default=0.002, show_default=True, type=float)
@click.option("--cond", is_flag=True, help="Condition on the zip's class labels.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--workers", default=3, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--fp32",
    is_flag=True,
    help="Disable mixed precision (fp16 on CUDA, bf16 on CPUs with native bf16).",
)
@click.option(
    "--metrics", default="none", show_default=True, help="Comma list: realism,fid50k_full,..."
)
@click.option("--inception", default=None, type=click.Path(), help="Inception-v3 weights for FID.")
@click.option("--dry-run", is_flag=True, help="Print the options and exit.")
@click.option(
    "--ops-impl",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "ref", "cpu", "cuda"]),
)
@click.option(
    "--max-minutes", default=None, type=click.FloatRange(min=0, min_open=True), help="Time budget."
)
@click.option("--desc", default=None, help="Extra text for the run-folder name.")
@click.option("--progress/--no-progress", default=False, help="Progress bar on stderr.")
def train(**kw):
    """Train StyleGAN3 (or StyleGAN2) on a masks zip.

    Snapshots are OUTDIR/NNNNN-.../network-snapshot-KKKKKK.FFF.pt (kimg with three decimals).
    The data (and a resumed snapshot against it) is checked before a run folder is made; a run
    that fails before its first snapshot leaves no run folder.
    """
    from cellsynth.stylegan3.train import train as run_train

    run_dir = run_train(**kw)
    if run_dir is not None:
        click.echo(f"run folder: {run_dir}")


@stylegan3.command()
@click.option("--network", required=True, type=click.Path(), help="network-snapshot-*.pt")
@click.option("--seeds", required=True, help="e.g. 0-99,120")
@click.option(
    "--trunc",
    default=None,
    type=float,
    help="Truncation psi (default: the psi the network file records, e.g. a shipped model's; "
    "1.0 for a training snapshot).",
)
@click.option("--class", "class_idx", default=None, type=int, help="Class (conditional nets).")
@click.option(
    "--debias",
    default="auto",
    show_default=True,
    type=click.Choice(DEBIAS_CHOICES),
    help="Undo the crowded-tile repeats of the training data (dataset pack --repeat-crowded) "
    "by rejection sampling; auto: when the network file records them.",
)
@click.option(
    "--noise-mode",
    default="const",
    show_default=True,
    type=click.Choice(["const", "random", "none"]),
)
@click.option(
    "--translate",
    default="0,0",
    show_default=True,
    help="x,y in fractions of the image (stylegan3 only).",
)
@click.option(
    "--rotate", default=0.0, show_default=True, type=float, help="Degrees (stylegan3 only)."
)
@click.option("--outdir", required=True, type=click.Path(file_okay=False))
@click.option(
    "--overwrite",
    is_flag=True,
    help="Write into an --outdir that already holds files (same names are replaced).",
)
@click.option("--decode", is_flag=True, help="Also write seedNNNN_masks.tif instance labels.")
@click.option("--batch", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="cpu", show_default=True)
@click.option(
    "--fp32",
    is_flag=True,
    help="Run in float32 (default: the high-resolution layers in fp16 on CUDA, bf16 on CPUs "
    "with native bf16).",
)
@click.option("--progress/--no-progress", default=False)
def generate(
    network,
    seeds,
    trunc,
    class_idx,
    debias,
    noise_mode,
    translate,
    rotate,
    outdir,
    overwrite,
    decode,
    batch,
    device,
    fp32,
    progress,
):
    """Generate masks seedNNNN.png (the gen_images habit).

    An --outdir that already holds files is refused unless --overwrite; every option is checked
    before --outdir is made.
    """
    from cellsynth.errors import CellsynthError
    from cellsynth.stylegan3.generate import generate_images, parse_seeds

    try:
        tx, ty = (float(v) for v in translate.split(","))
    except ValueError:
        raise CellsynthError(f"--translate must be x,y (two numbers), not {translate!r}") from None
    seeds = parse_seeds(seeds)
    written = generate_images(
        network,
        seeds,
        outdir,
        trunc=trunc,
        class_idx=class_idx,
        noise_mode=noise_mode,
        translate=(tx, ty),
        rotate=rotate,
        decode=decode,
        batch=batch,
        device=device,
        progress=progress,
        overwrite=overwrite,
        fp32=fp32,
        debias=debias,
    )
    click.echo(f"wrote {len(written)} files to {outdir}")


@stylegan3.command()
@click.option("--network", required=True, type=click.Path(), help="network-snapshot-*.pt")
@click.option("--data", required=True, type=click.Path(), help="Masks zip of the real masks.")
@click.option("--metrics", default="realism", show_default=True, help="Comma list.")
@click.option("--num-gen", default=None, type=click.IntRange(min=2), help="Generated images.")
@click.option("--inception", default=None, type=click.Path(), help="Inception-v3 weights for FID.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="cpu", show_default=True)
def metrics(network, data, metrics, num_gen, inception, seed, device):
    """Compute metrics of a snapshot against a masks zip (prints JSON)."""
    import json

    from cellsynth.stylegan3 import metrics as m
    from cellsynth.stylegan3.generate import MaskGenerator
    from cellsynth.stylegan3.train import parse_metrics

    gen = MaskGenerator.load(network, device=device)
    out = {}
    for name in parse_metrics(metrics):
        out[name] = m.compute_metric(
            name,
            gen.G,
            data,
            device=device,
            encoding=gen.encoding,
            inception=inception,
            seed=seed,
            num_gen=num_gen,
        )
    click.echo(json.dumps(out, indent=2))
