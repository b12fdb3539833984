"""``cellsynth dataset simulate``: write a procedurally simulated canonical dataset."""

from __future__ import annotations

import click

from cellsynth.errors import CellsynthError
from cellsynth.tools.parse import parse_size


def parse_fractions(text: str) -> tuple[float, ...]:
    """ "0.8,0.1,0.1" -> (0.8, 0.1, 0.1)."""
    try:
        return tuple(float(p) for p in text.split(","))
    except ValueError:
        raise CellsynthError(
            f"--splits {text!r}: give up to three fractions, e.g. 0.8,0.1,0.1"
        ) from None


@click.command("simulate")
@click.option("--out", "out", required=True, type=click.Path(), help="Output dataset folder.")
@click.option("--num", default=100, show_default=True, type=int, help="Number of samples.")
@click.option(
    "--splits", default="0.8,0.1,0.1", show_default=True, help="train,val,test fractions."
)
@click.option("--size", default="256", show_default=True, help="Image size: N or HxW.")
@click.option(
    "--density", default=0.5, show_default=True, type=float, help="0.1 sparse .. 1 confluent."
)
@click.option("--mean-radius", default=12.0, show_default=True, type=float, help="Cell radius.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed.")
@click.option("--nuclei", is_flag=True, help="Draw nuclei (brighter; channel 1 if >= 2).")
@click.option(
    "--objects",
    type=click.Choice(["cells", "nuclei"]),
    default="cells",
    show_default=True,
    help="What the masks label.",
)
@click.option("--channels", default=1, show_default=True, type=click.IntRange(1, 4))
@click.option("--bit-depth", default="8", show_default=True, type=click.Choice(["8", "16"]))
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def simulate(
    out,
    num,
    splits,
    size,
    density,
    mean_radius,
    seed,
    nuclei,
    objects,
    channels,
    bit_depth,
    overwrite,
    progress,
):
    """Simulate a canonical dataset of fluorescent cells with exact instance masks."""
    from cellsynth.atomic import check_writable
    from cellsynth.datasets.simulate import simulate_dataset, split_counts

    check_writable(out, overwrite)
    counts = split_counts(num, parse_fractions(splits))
    written = simulate_dataset(
        out,
        counts.get("train", 0),
        counts.get("val", 0),
        counts.get("test", 0),
        seed=seed,
        size=parse_size(size, "--size"),
        overwrite=overwrite,
        progress=progress,
        density=density,
        mean_radius=mean_radius,
        nuclei=nuclei,
        objects=objects,
        channels=channels,
        bit_depth=int(bit_depth),
    )
    summary = ", ".join(f"{k} {v}" for k, v in written.items())
    click.echo(f"wrote {out}: {summary}")
