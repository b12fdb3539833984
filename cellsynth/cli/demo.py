"""``cellsynth demo``: the whole pipeline in one command (see :mod:`cellsynth.demo`)."""

import click


@click.command()
@click.option(
    "--data",
    type=click.Path(path_type=str),
    default=None,
    help="Canonical dataset (root with train/ and test/); default: the embedded real sample "
    "(DSB2018 fluorescence nuclei, CC0).",
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
    help="Fine-tuning budget of the two GANs together [default: 2 for the laptop preset].",
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
    help="Comma-separated segmenters to benchmark [default: "
    "classical,stardist,cellpose,unet,u2net,dwt,embedseg]; shipped ones are loaded, others train on the "
    "real training split.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing demo folder.")
def demo(data, out, minutes, preset, segmenters, seed, overwrite):
    """Synthesise an annotated dataset with puncta from the shipped models, compare it with real
    nuclei, fine-tune both GANs briefly, benchmark segmenters on the synthetic and the real test
    set with their rank agreement, and write one report.html that leads with the answer."""
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
