"""``cellsynth demo``: the whole pipeline in one command (see :mod:`cellsynth.demo`)."""

import click


@click.command()
@click.option(
    "--data",
    type=click.Path(path_type=str),
    default=None,
    help="Canonical dataset (root with train/ and test/); default: simulate one.",
)
@click.option(
    "--out",
    default="demo-out",
    show_default=True,
    type=click.Path(path_type=str),
    help="Output folder (report.html inside).",
)
@click.option(
    "--minutes",
    type=float,
    default=None,
    help="Training budget of GANs and segmenters together [default: 8 for the laptop preset].",
)
@click.option(
    "--preset",
    type=click.Choice(["laptop", "tiny"]),
    default="laptop",
    show_default=True,
    help="Sizes of data, networks and budgets.",
)
@click.option(
    "--segmenters",
    default=None,
    help="Comma-separated segmenters to benchmark [default: classical,cellpose,u2net,maskrcnn].",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing demo folder.")
def demo(data, out, minutes, preset, segmenters, seed, overwrite):
    """Simulate (or read) data, pack it, train a small StyleGAN and Pix2PixHD, synthesise an
    annotated dataset with puncta, benchmark segmenters on it, and write one report.html."""
    from cellsynth.demo import run_demo

    run_demo(
        out=out,
        data=data,
        minutes=minutes,
        preset=preset,
        segmenters=segmenters,
        overwrite=overwrite,
        seed=seed,
        echo=lambda m: click.echo(m, err=True),
    )
