"""Join the files of ``--shard i/N`` runs into ``manifest.json`` and ``annotations.json``,
byte-identical to what one run would have written."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cellsynth.errors import CellsynthError
from cellsynth.synth.coco import annotations_by_seed
from cellsynth.synth.manifest import shard_tag, write_outputs
from cellsynth.tools.parse import parse_seeds


def find_shards(out: Path) -> int:
    """N, when ``out`` holds the manifests of all N shards of one run (else CellsynthError)."""
    found = set()
    for p in out.glob("manifest.shard-*-of-*.json"):
        m = re.fullmatch(r"manifest\.shard-(\d+)-of-(\d+)\.json", p.name)
        if m:
            found.add((int(m.group(1)), int(m.group(2))))
    if not found:
        raise CellsynthError(f"{out}: no manifest.shard-i-of-N.json files to merge")
    totals = {n for _, n in found}
    if len(totals) != 1:
        raise CellsynthError(f"{out}: shard files of different shard counts {sorted(totals)}")
    n = totals.pop()
    missing = [i for i in range(n) if (i, n) not in found]
    if missing:
        raise CellsynthError(
            f"{out}: shards {missing} of {n} are missing; run them with --shard i/{n} first"
        )
    return n


def _read(out: Path, kind: str, i: int, n: int) -> dict:
    p = out / f"{kind}.{shard_tag((i, n))}.json"
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CellsynthError(f"{p}: cannot read ({exc}); rerun shard {i}/{n}") from None


def merge_shard_files(out: Path) -> dict:
    """Merge the shard files of ``out`` (the caller holds its lock). Returns a summary dict."""
    n = find_shards(out)
    manifests = [_read(out, "manifest", i, n) for i in range(n)]
    cocos = [_read(out, "annotations", i, n) for i in range(n)]
    run = {"options": manifests[0]["options"], "checkpoints": manifests[0]["checkpoints"]}
    for i, m in enumerate(manifests):
        if m["options"] != run["options"] or m["checkpoints"] != run["checkpoints"]:
            raise CellsynthError(f"{out}: shard {i}/{n} was made with other options")
    seed_list = parse_seeds(run["options"]["seeds"])
    seed_index = {s: i for i, s in enumerate(seed_list)}
    records = [r for m in manifests for r in m["samples"]]
    if sorted(r["seed"] for r in records) != sorted(seed_list):
        raise CellsynthError(f"{out}: the shards do not cover the seeds exactly once")
    for r in records:
        if not (out / "masks" / f"{r['name']}.tif").is_file():
            raise CellsynthError(f"{out}: {r['name']} is missing; rerun its shard with --resume")
    anns: dict[int, list] = {}
    for coco in cocos:
        anns.update(annotations_by_seed(coco))
    write_outputs(out, run, records, anns, seed_index)
    return {"out": str(out), "shards": n, "count": len(records)}
