"""``cellsynth models``: the shipped pretrained models, their cards, and weights-only exports.

``cellsynth models`` lists every shipped model (name, kind, size, the card's headline figures);
``models show NAME`` prints its card; ``models verify`` checks every file against its card's
sha256; ``models export`` writes a weights-only copy of a training checkpoint (what is shipped).
A shipped name works wherever a checkpoint path does (``--network``, ``stylegan3:NAME``,
``pix2pixhd:NAME``).
"""

from __future__ import annotations

import json

import click

from cellsynth.errors import CellsynthError

# what a weights-only export keeps of each kind's training checkpoint
EXPORT_KEEP = {"stylegan3": ("G_ema",), "pix2pixhd": ("G",)}


def _use_as(m) -> str:
    """How a user names shipped model ``m`` on the command line."""
    if m.kind == "segmenter":
        return f"benchmark run --load {m.segmenter}={m.name}"
    return f"{m.kind}:{m.name}" if m.kind == "pix2pixhd" else m.name


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@click.pass_context
def models(ctx, as_json):
    """Shipped pretrained models (a name works wherever a checkpoint path does)."""
    if ctx.invoked_subcommand is not None:
        return
    from cellsynth import models as registry

    rows = registry.shipped()
    if as_json:
        out = [
            {
                "name": m.name,
                "kind": m.kind,
                "segmenter": m.segmenter,
                "file": str(m.path),
                "bytes": m.bytes,
                "sha256": m.sha256,
                "card": str(m.card),
                "summary": m.info.get("summary", ""),
            }
            for m in rows
        ]
        click.echo(json.dumps(out, indent=2))
        return
    if not rows:
        click.echo("no shipped models")
        return
    for m in rows:
        click.echo(f"{m.label:<27} {m.kind:<10} {m.bytes / 1e6:6.1f} MB  use as: {_use_as(m)}")
        if m.info.get("summary"):
            click.echo(f"  {m.info['summary']}")
    click.echo("cards: cellsynth models show NAME")


@models.command()
@click.argument("name")
def show(name):
    """Print the model card of NAME."""
    from cellsynth import models as registry

    found = [m for m in registry.shipped() if m.name == name]
    if not found:
        known = sorted({m.name for m in registry.shipped()}) or ["none"]
        raise CellsynthError(f"no shipped model named {name!r} (shipped: {', '.join(known)})")
    click.echo(found[0].card.read_text())


@models.command()
def verify():
    """Check every shipped file's size and sha256 against its card."""
    from cellsynth import models as registry

    rows = registry.shipped()
    for m in rows:
        registry.verify(m)
        click.echo(f"ok  {m.kind}:{m.name}  {m.path.name}  sha256 {m.sha256[:16]}")
    click.echo(f"{len(rows)} shipped file(s) match their cards")


@models.command()
@click.option("--kind", required=True, type=click.Choice(sorted(EXPORT_KEEP)))
@click.option("--checkpoint", required=True, type=click.Path(), help="Training checkpoint.")
@click.option("--out", required=True, type=click.Path(), help="Weights-only file to write.")
@click.option("--fp32", is_flag=True, help="Keep float32 storage (default: fp16).")
@click.option(
    "--trunc",
    type=float,
    default=None,
    help="stylegan3: the truncation psi in (0, 1] the generator samples at when none is given "
    "(recorded in the file; default: none recorded, i.e. 1.0).",
)
@click.option(
    "--fg-thresh", type=float, default=None, help="stylegan3: decoder threshold to record."
)
@click.option("--boundary-thresh", type=float, default=None, help="stylegan3: as --fg-thresh.")
@click.option("--marker-thresh", type=float, default=None, help="stylegan3: as --fg-thresh.")
@click.option(
    "--repeat-crowded",
    metavar="MIN:TIMES,...",
    default=None,
    help="stylegan3: the crowded-tile repeats of the data it trained on (dataset pack "
    "--repeat-crowded), for a snapshot whose data did not record them; sampling undoes them "
    "(generate --debias).",
)
@click.option(
    "--blur",
    type=float,
    default=None,
    help="pix2pixhd: the Gaussian sigma (px) its images get by default (recorded in the file; "
    "default: none recorded, i.e. 0).",
)
@click.option(
    "--clusters",
    type=click.Path(),
    default=None,
    help="pix2pixhd with a feature encoder: the clusters file (with its feature bank) the "
    "export carries [clusters.npz beside the checkpoint].",
)
def export(kind, checkpoint, out, fp32, trunc, repeat_crowded, blur, clusters, **thresholds):
    """Write a weights-only copy of a training checkpoint (generator only, fp16 storage).

    For a mask generator, --trunc and the thresholds record the settings it samples and decodes
    at when none are given; for a translator, --blur the smoothing its images get (chosen on the
    training data; see the model card). A translator trained with encoded features carries its
    feature clusters and bank (`cellsynth pix2pixhd clusters`) and its encoder (for
    fine-tuning) in the same file."""
    from cellsynth import models as registry
    from cellsynth.atomic import file_sha256
    from cellsynth.stylegan3.generate import is_threshold, is_trunc

    if blur is not None:
        if kind != "pix2pixhd":
            raise CellsynthError(f"--blur is for --kind pix2pixhd, not {kind}")
        from cellsynth.pix2pixhd.options import check_blur

        blur = check_blur(blur, "--blur")
    decode = {k: float(v) for k, v in thresholds.items() if v is not None}
    if (trunc is not None or decode) and kind != "stylegan3":
        raise CellsynthError(
            f"--trunc and the decoder thresholds are for --kind stylegan3, not {kind}"
        )
    repeats = None if repeat_crowded is None else _repeat_setting(kind, checkpoint, repeat_crowded)
    if trunc is not None and not is_trunc(trunc):
        raise CellsynthError(f"--trunc must be in (0, 1], got {trunc}")
    bad = [f"--{k.replace('_', '-')} {v}" for k, v in decode.items() if not is_threshold(v)]
    if bad:
        raise CellsynthError(f"{', '.join(bad)}: decoder thresholds must be in (0, 1)")
    settings = {"trunc": float(trunc)} if trunc is not None else {}
    if decode:
        settings["decode"] = decode
    if repeats is not None:
        settings["repeat_crowded"] = repeats
    if blur is not None:
        settings["blur"] = blur
    if clusters is not None and kind != "pix2pixhd":
        raise CellsynthError(f"--clusters is for --kind pix2pixhd, not {kind}")
    extra = None
    if kind == "pix2pixhd":
        from cellsynth.pix2pixhd.checkpoints import resolve_checkpoint

        checkpoint = resolve_checkpoint(checkpoint)
        extra = _appearance_entry(checkpoint, clusters)
    keep = EXPORT_KEEP[kind] + (("E",) if extra else ())  # a feature model keeps its encoder
    path = registry.export_weights(
        checkpoint, out, keep, kind, half=not fp32, settings=settings, extra=extra
    )
    click.echo(
        json.dumps(
            {"file": str(path), "bytes": path.stat().st_size, "sha256": file_sha256(path)},
            indent=2,
        )
    )


def _repeat_setting(kind, checkpoint, spec) -> list:
    """``--repeat-crowded`` as the list a generator file records; refused for a translator, and
    where the snapshot records other repeats (its training data's own)."""
    from cellsynth.datasets.pack import parse_repeat_crowded
    from cellsynth.stylegan3.generate import recorded_repeats
    from cellsynth.stylegan3.snapshot import load_snapshot

    if kind != "stylegan3":
        raise CellsynthError(f"--repeat-crowded is for --kind stylegan3, not {kind}")
    rules = parse_repeat_crowded(spec)
    own = recorded_repeats(load_snapshot(checkpoint)["config"])
    if own and own != rules:
        raise CellsynthError(
            f"--repeat-crowded {spec}: {checkpoint} records the repeats of its training data, "
            f"{','.join(f'{m}:{t}' for m, t in own)}; leave the option out"
        )
    return [list(r) for r in rules]


def _appearance_entry(checkpoint, clusters) -> dict | None:
    """{"appearance": tensors} of a translator with a feature encoder (its clusters and bank,
    from ``clusters`` or clusters.npz beside the checkpoint); None without an encoder."""
    from pathlib import Path

    import torch

    from cellsynth.pix2pixhd.clusters import load_appearance
    from cellsynth.pix2pixhd.options import Options
    from cellsynth.training.checkpoint import load_checkpoint

    opt = Options.from_dict(load_checkpoint(checkpoint, kind="pix2pixhd")["config"]["opt"])
    if not opt.use_features:
        if clusters is not None:
            raise CellsynthError(f"--clusters: {checkpoint} has no feature encoder")
        return None
    path = Path(clusters) if clusters else Path(checkpoint).parent / "clusters.npz"
    if not path.is_file():
        raise CellsynthError(
            f"{path}: no clusters file; this translator draws encoded features: run "
            "`cellsynth pix2pixhd clusters` first or give --clusters"
        )
    arrays = load_appearance(path, opt.feat_num).arrays()
    return {"appearance": {k: torch.from_numpy(v) for k, v in arrays.items()}}
