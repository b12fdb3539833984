"""``cellsynth dataset pack``: canonical dataset -> StyleGAN3 masks zip or Pix2PixHD pairs."""

from __future__ import annotations

import json

import click


@click.command("pack")
@click.option(
    "--kind",
    required=True,
    type=click.Choice(["masks", "pairs"]),
    help="masks: StyleGAN3 zip of encoded masks; pairs: Pix2PixHD label/inst/img folder.",
)
@click.option(
    "--source",
    required=True,
    type=click.Path(path_type=str),
    help="Canonical dataset folder (root or one split folder).",
)
@click.option("--dest", required=True, type=click.Path(path_type=str), help="Output zip/folder.")
@click.option("--resolution", type=int, help="masks: side of the square images (power of two).")
@click.option("--size", help="pairs: N or HxW of the pairs (e.g. 256 or 256x384).")
@click.option(
    "--transform",
    default="center-crop",
    show_default=True,
    type=click.Choice(["center-crop", "tiles", "resize"]),
    help="center-crop: largest centred window, resized; tiles: grid of crops; resize: whole image.",
)
@click.option(
    "--encoding",
    default="fbd",
    show_default=True,
    help="masks: fbd (foreground, boundary, distance; RGB) or binary (gray).",
)
@click.option("--max-images", type=int, help="Stop after N items (per split for pairs).")
@click.option(
    "--cond",
    help="Metadata key giving the class for conditional training (cell_type); nucleus_size "
    "derives small / medium / large from each image's median cell area.",
)
@click.option("--split", help="Read only this split (masks default: train, else every split).")
@click.option("--tile-size", help="tiles: N or HxW crop size before resizing (default: output).")
@click.option("--stride", help="tiles: N or HxW step between tiles (default: tile size).")
@click.option(
    "--keep-empty", is_flag=True, help="Keep items (images or tiles) without cells (skipped)."
)
@click.option(
    "--boundary-width",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="fbd: half-width in pixels of the boundary band between touching cells.",
)
@click.option(
    "--repeat-crowded",
    metavar="MIN:TIMES,...",
    help="masks: pack each item with at least MIN objects TIMES times (e.g. 14:4,10:2), so "
    "a generator sees crowded tiles, a rare mode it tends to drop, more often.",
)
@click.option("--overwrite", is_flag=True, help="Replace --dest if it exists.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def pack(kind, source, dest, resolution, size, tile_size, stride, **opts):
    """Pack a canonical dataset into a GAN training set.

    Source images smaller than 8x8 pixels are refused (resizing them would invent the
    training data); images or tiles without cells are skipped and counted unless --keep-empty.

    \b
      cellsynth dataset pack --kind masks --source data/dsb2018 --dest masks.zip \\
          --resolution 256 --encoding fbd
      cellsynth dataset pack --kind masks --source data/livecell --split val --dest lc.zip \\
          --resolution 128 --transform tiles --cond cell_type
      cellsynth dataset pack --kind pairs --source data/dsb2018 --dest pairs --size 256
    """
    from cellsynth.datasets.pack import pack_masks, pack_pairs, parse_size
    from cellsynth.errors import CellsynthError

    tile = parse_size(tile_size) if tile_size else None
    stride = parse_size(stride) if stride else None
    if kind == "masks":
        if resolution is None:
            raise CellsynthError("--kind masks needs --resolution (a power of two, e.g. 256)")
        if size is not None:
            raise CellsynthError("--size is for --kind pairs; masks use --resolution")
        summary = pack_masks(source, dest, resolution, tile=tile, stride=stride, **opts)
    else:
        if size is None:
            size = resolution
        if size is None:
            raise CellsynthError("--kind pairs needs --size (N or HxW, e.g. 256)")
        opts.pop("encoding")
        opts.pop("boundary_width")
        if opts.pop("repeat_crowded"):
            raise CellsynthError("--repeat-crowded is for --kind masks")
        summary = pack_pairs(source, dest, size, tile=tile, stride=stride, **opts)
    click.echo(json.dumps(summary))
