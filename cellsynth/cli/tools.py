"""``cellsynth tools``: threshold, points and combine on single files or whole folders.

A file input writes one output file; a folder input writes a whole output folder atomically
(nothing appears unless every file was written). Existing outputs are refused without
``--overwrite``.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import click
import numpy as np

from cellsynth.cli.options import flags
from cellsynth.errors import CellsynthError
from cellsynth.options import take
from cellsynth.tools.points import PREFIX as PUNCTA_PREFIX
from cellsynth.tools.points import PunctaOptions
from cellsynth.tools.threshold import METHODS


def _inputs(path: str, sub: str, what: str) -> tuple[list[Path], bool]:
    """Files named by ``path``: the file itself, ``path/sub/*`` (a dataset folder) or
    ``path/*``. Returns (files, is_folder)."""
    from cellsynth.datasets.io import list_images

    p = Path(path)
    if p.is_file():
        return [p], False
    if not p.exists():
        raise CellsynthError(f"{p}: no such file or folder of {what}")
    if (p / sub).is_dir():
        return list_images(p / sub, what), True
    return list_images(p, what), True


def name_seed(seed: int, name: str) -> int:
    """A 32-bit seed for the file ``name`` (stable whatever other files are present)."""
    return int(np.random.SeedSequence([int(seed), zlib.crc32(name.encode())]).generate_state(1)[0])


@click.group()
def tools():
    """Mask and image tools: threshold, puncta (points), combine."""


@tools.command("threshold")
@click.argument("source", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Output file or folder.")
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default="otsu",
    show_default=True,
)
@click.option("--value", type=float, default=None, help="Threshold for --method fixed.")
@click.option("--block-size", type=int, default=51, show_default=True, help="For local.")
@click.option("--offset", type=float, default=0.0, show_default=True)
@click.option("--channel", type=int, default=None, help="Channel of a multi-channel image.")
@click.option("--instances", is_flag=True, help="Write labelled components (uint16 TIFF).")
@click.option("--connectivity", type=click.IntRange(1, 2), default=1, show_default=True)
@click.option("--min-size", type=int, default=0, show_default=True, help="Drop small objects.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def threshold_cmd(
    source,
    out,
    method,
    value,
    block_size,
    offset,
    channel,
    instances,
    connectivity,
    min_size,
    overwrite,
):
    """Binarise SOURCE (an image or a folder of images): 0/255 uint8, or instance labels."""
    from cellsynth.atomic import atomic_dir, check_writable
    from cellsynth.datasets.io import read_image, write_image, write_labels
    from cellsynth.tools.threshold import label_components, threshold

    files, folder = _inputs(source, "images", "images")

    def one(path: Path, target: Path) -> None:
        try:
            mask = threshold(
                read_image(path),
                method,
                value,
                block_size=block_size,
                offset=offset,
                channel=channel,
            )
        except CellsynthError as exc:
            raise CellsynthError(f"{path}: {exc}") from None
        if instances:
            write_labels(target, label_components(mask, connectivity, min_size))
        else:
            write_image(target, mask.astype(np.uint8) * 255)

    if not folder:
        target = Path(out)
        check_writable(target, overwrite)
        one(files[0], target)
    else:
        with atomic_dir(out, overwrite) as tmp:
            for f in files:
                one(f, tmp / f"{f.stem}.tif")
    click.echo(f"wrote {out} ({len(files)} file{'s' * (len(files) != 1)})")


@tools.command("points")
@click.argument("masks", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Output folder.")
@flags(PunctaOptions, PUNCTA_PREFIX, unprefixed_aliases=True)
@click.option("--spot-masks", is_flag=True, help="Also write spot masks (discs) to masks/.")
@click.option("--spot-radius", type=float, default=1.5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
def points_cmd(masks, out, spot_masks, spot_radius, seed, overwrite, **puncta):
    """Gaussian puncta in the cells of MASKS (a mask, a folder of masks, or a dataset folder).

    Writes OUT/spots/NAME.csv (x,y,cell_id,intensity), OUT/images/NAME.tif (float32 spots
    image, full-scale units) and with --spot-masks OUT/masks/NAME.tif. The --spots-* options
    are those of `cellsynth synth` (the old names --count, --psf-sigma, ... still work).
    """
    from cellsynth.atomic import atomic_dir, write_text
    from cellsynth.datasets.io import read_labels, write_image, write_labels
    from cellsynth.tools.points import render_spots, simulate_spots, spots_mask, spots_to_csv

    opts = PunctaOptions(**take(PunctaOptions, PUNCTA_PREFIX, puncta)).check()
    files, _ = _inputs(masks, "masks", "masks")
    total = 0
    with atomic_dir(out, overwrite) as tmp:
        for f in files:
            labels = read_labels(f)
            spots = simulate_spots(labels, name_seed(seed, f.stem), **opts.placement())
            total += spots.size
            write_text(tmp / "spots" / f"{f.stem}.csv", spots_to_csv(spots))
            write_image(
                tmp / "images" / f"{f.stem}.tif", render_spots(labels.shape, spots, opts.psf_sigma)
            )
            if spot_masks:
                write_labels(
                    tmp / "masks" / f"{f.stem}.tif", spots_mask(labels.shape, spots, spot_radius)
                )
    click.echo(f"wrote {out}: {total} spots in {len(files)} mask{'s' * (len(files) != 1)}")


@tools.command("combine")
@click.argument("images", type=click.Path())
@click.argument("spots", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Output file or folder.")
@click.option("--mode", type=click.Choice(["add", "channel"]), default="add", show_default=True)
@click.option("--channel", default="0", show_default=True, help="Channel to add into, or 'all'.")
@click.option("--scale", type=float, default=1.0, show_default=True, help="Factor on spots.")
@click.option("--photons", type=float, default=0.0, show_default=True, help="Shot noise.")
@click.option("--read-noise", type=float, default=0.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def combine_cmd(images, spots, out, mode, channel, scale, photons, read_noise, seed, overwrite):
    """Add SPOTS (spot images from `tools points`) into IMAGES, paired by file name."""
    from cellsynth.atomic import atomic_dir, check_writable
    from cellsynth.datasets.io import read_image, write_image
    from cellsynth.tools.combine import combine

    if channel == "all":
        chan = None
    else:
        try:
            chan = int(channel)
        except ValueError:
            raise CellsynthError(f"--channel {channel!r}: give a channel number or 'all'") from None
    image_files, folder = _inputs(images, "images", "images")
    spot_files, spot_folder = _inputs(spots, "images", "spot images")
    if folder != spot_folder:
        raise CellsynthError(f"{images} and {spots}: give two files or two folders")
    by_name = {p.stem: p for p in spot_files}
    if folder:
        missing = sorted(p.stem for p in image_files if p.stem not in by_name)
        if missing:
            raise CellsynthError(
                f"{spots}: no spot image for {', '.join(missing[:5])}; run `cellsynth tools "
                "points` on the matching masks"
            )
        pairs = [(p, by_name[p.stem]) for p in image_files]
    else:
        pairs = [(image_files[0], spot_files[0])]

    def one(img_path: Path, spot_path: Path, target: Path) -> None:
        sp = read_image(spot_path)
        if sp.ndim != 2:
            raise CellsynthError(f"{spot_path}: a spots image must have one channel")
        img = read_image(img_path)
        if img.shape[:2] != sp.shape:
            raise CellsynthError(
                f"{img_path} is {img.shape[:2]} but {spot_path} is {sp.shape}; pair images "
                "with the spots made from their own masks"
            )
        res = combine(
            img,
            sp.astype(np.float32),
            mode=mode,
            channel=chan,
            scale=scale,
            photons=photons,
            read_noise=read_noise,
            seed=name_seed(seed, img_path.stem),
        )
        write_image(target, res)

    if not folder:
        target = check_writable(out, overwrite)
        one(*pairs[0], target)
    else:
        with atomic_dir(out, overwrite) as tmp:
            for a, b in pairs:
                one(a, b, tmp / f"{a.stem}.tif")
    click.echo(f"wrote {out} ({len(pairs)} image{'s' * (len(pairs) != 1)})")
