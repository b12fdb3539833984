"""``cellsynth synth``: seeds -> masks -> instances -> images -> puncta -> a synthetic dataset.

``cellsynth synth --out DIR ...`` generates; ``cellsynth synth merge DIR`` joins the files of
``--shard i/N`` runs into the final manifest.json and annotations.json. The flags are made from
the option dataclasses of :mod:`cellsynth.synth.options` (one definition for the flag, the
Python keyword and the manifest entry).
"""

from __future__ import annotations

import json

import click

from cellsynth.cli.options import flags
from cellsynth.synth.options import SynthOptions


def _synth_flags(func):
    for group, (cls, prefix) in reversed(SynthOptions.GROUPS.items()):
        defaults = {"progress": True} if group == "run" else None  # a bar on the command line
        func = flags(cls, prefix, defaults)(func)
    return func


@click.group(invoke_without_command=True)
@click.option("--out", type=click.Path(), help="Output folder (a canonical split folder).")
@_synth_flags
@click.pass_context
def synth(ctx, out, **options):
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

    summary = run(out, **options)
    shard = options["shard"]
    what = f" (shard {shard}; run `cellsynth synth merge {out}` when all shards are done)"
    click.echo(
        f"wrote {summary['written']} samples to {out}"
        + (f", {summary['skipped']} already there" if summary["skipped"] else "")
        + (what if shard else "")
    )
    if summary["redrawn"]:
        short = summary["below_min_cells"]
        click.echo(
            f"{summary['redrawn']} generated masks had fewer than --min-cells cells and were "
            "drawn again from their seed's next latents"
            + (f"; {short} still have fewer (the draw with the most cells kept)" if short else "")
        )


@synth.command("merge")
@click.argument("out", type=click.Path())
def merge(out):
    """Join the shard files in OUT into manifest.json and annotations.json."""
    from cellsynth.synth import merge_shards

    summary = merge_shards(out)
    click.echo(json.dumps(summary))
