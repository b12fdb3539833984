"""``manifest.json`` (provenance: version, options, checkpoints, every sample) and the files a
run finishes with: ``annotations.json`` + ``manifest.json``, or their ``.shard-i-of-N`` forms."""

from __future__ import annotations

import json
from pathlib import Path

from cellsynth import __version__
from cellsynth.atomic import write_text
from cellsynth.synth.coco import build_coco


def dumps(doc) -> str:
    """The JSON text of every file synth writes (sorted keys: the same options, the same
    bytes)."""
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def manifest(run: dict, records: list[dict], seed_index, shard=None) -> dict:
    """The manifest of ``records`` (in seed-list order) made with ``run`` (options,
    checkpoints)."""
    doc = {
        "format": "cellsynth-synth",
        "cellsynth_version": __version__,
        "options": run["options"],
        "checkpoints": run["checkpoints"],
        "count": len(records),
        "samples": sorted(records, key=lambda r: seed_index[r["seed"]]),
    }
    if shard is not None:
        doc["shard"] = list(shard)
    return doc


def shard_tag(shard) -> str:
    """``shard-i-of-N``: the part of the names of a shard's files."""
    return f"shard-{shard[0]}-of-{shard[1]}"


def write_outputs(out: Path, run: dict, records, anns, seed_index, shard=None) -> None:
    """Write ``annotations.json`` and ``manifest.json`` (``annotations.shard-i-of-N.json`` and
    ``manifest.shard-i-of-N.json`` for a shard)."""
    coco = build_coco(records, anns, seed_index)
    tag = "" if shard is None else f".{shard_tag(shard)}"
    write_text(out / f"annotations{tag}.json", dumps(coco))
    write_text(out / f"manifest{tag}.json", dumps(manifest(run, records, seed_index, shard)))
