"""``cellsynth dataset import FORMAT [SOURCE...] --out DIR``: real data -> canonical dataset."""

from __future__ import annotations

import click


@click.command("import")
@click.argument("fmt", metavar="FORMAT")
@click.argument("sources", nargs=-1, type=click.Path(path_type=str))
@click.option("--out", "-o", required=True, type=click.Path(path_type=str), help="Output folder.")
@click.option("--images", type=click.Path(path_type=str), help="Image folder (coco, folders).")
@click.option("--masks", type=click.Path(path_type=str), help="Mask folder (folders).")
@click.option(
    "--annotations",
    multiple=True,
    metavar="[SPLIT=]JSON",
    help="COCO/LIVECell JSON; repeat, prefix with train=/val=/test= to keep that split.",
)
@click.option(
    "--split-fractions",
    default="0.8,0.1,0.1",
    show_default=True,
    help="train,val,test fractions for samples without a split of their own.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the split shuffle.")
@click.option("--max-images", type=click.IntRange(min=1), help="Keep only the first N images.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--skip-missing", is_flag=True, help="Skip unpaired or missing files.")
@click.option(
    "--min-pixels",
    default=10,
    show_default=True,
    type=click.IntRange(min=0),
    help="Drop instances smaller than this (after resolving overlaps).",
)
@click.option(
    "--min-fraction",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="Drop instances keeping less than this fraction of their area after overlaps.",
)
@click.option(
    "--label-components", is_flag=True, help="Masks are binary: label connected components."
)
@click.option(
    "--allow-empty",
    is_flag=True,
    help="Accept an import that keeps no instance at all (otherwise an error).",
)
@click.option("--img-filter", default="", help="Cellpose image name suffix (e.g. _img).")
@click.option("--mask-filter", default="_masks", show_default=True, help="Cellpose mask suffix.")
@click.option(
    "--download",
    is_flag=True,
    help="livecell/dsb2018: first fetch the public dataset into SOURCE (kept files are reused).",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
def import_cmd(fmt, sources, out, download, progress, split_fractions, **opts):
    """Import a real dataset into the canonical layout.

    FORMAT is coco (alias livecell), dsb2018 (bbbc038), embedseg (canonical), cellpose or
    folders. Images smaller than 8x8 pixels are refused (they hold no cell with background
    around it); COCO annotations naming an unknown image id are dropped and counted (orphan).
    Examples:

    \b
      cellsynth dataset import livecell LIVECELL_DIR --out data/livecell
      cellsynth dataset import dsb2018 stage1_train --out data/dsb2018
      cellsynth dataset import embedseg data/bbbc010 --out data/bbbc010
      cellsynth dataset import cellpose cellpose_train --out data/cp
      cellsynth dataset import folders --images imgs --masks labels --out data/mine
    """
    from cellsynth.datasets.importer import canonical_format, import_dataset, parse_fractions
    from cellsynth.errors import CellsynthError

    fractions = parse_fractions(split_fractions)
    if download:
        from cellsynth.datasets.download import download_dataset

        if canonical_format(fmt) not in ("coco", "dsb2018") or len(sources) != 1:
            raise CellsynthError(
                "--download works with livecell or dsb2018 and exactly one SOURCE folder "
                "to download into"
            )
        name = "livecell" if canonical_format(fmt) == "coco" else "dsb2018"
        sources = (str(download_dataset(name, sources[0], progress=progress)),)
    summary = import_dataset(
        fmt, sources, out, split_fractions=fractions, progress=progress, **opts
    )
    parts = ", ".join(
        f"{s} {n} images / {summary['instances'][s]} instances"
        for s, n in summary["splits"].items()
    )
    click.echo(f"wrote {summary['out']} ({summary['format']}): {parts}")
    if "dropped" in summary:
        why = ", ".join(f"{k} {v}" for k, v in summary["dropped"].items() if v) or "none"
        click.echo(
            f"annotations {summary['annotations']}: kept {summary['instances_total']}, "
            f"dropped {summary['dropped_total']} ({why}); overlapping pixels "
            f"{summary['overlap_pixels']}"
        )
    if summary.get("missing_images"):
        click.echo(f"skipped {summary['missing_images']} images with missing files")
