"""The embedded real sample (the demo's default data): small, licensed, every file as its
provenance says, and a canonical dataset the rest of the package reads."""

from __future__ import annotations

import json

import numpy as np

from cellsynth.atomic import file_sha256
from cellsynth.datasets import DSB2018_SAMPLE as SAMPLE
from cellsynth.datasets.canonical import CanonicalDataset


def test_sample_is_small_licensed_and_matches_its_provenance():
    files = [p for p in SAMPLE.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 5 * 1024 * 1024
    assert "CC0" in (SAMPLE / "LICENSE.md").read_text()
    prov = json.loads((SAMPLE / "PROVENANCE.json").read_text())
    assert "CC0" in prov["license"] and "BBBC038" in prov["what"]
    listed = {f["file"]: f["sha256"] for f in prov["files"]}
    pngs = {p.relative_to(SAMPLE).as_posix() for p in SAMPLE.rglob("*.png")}
    assert set(listed) == pngs
    for rel, digest in listed.items():
        assert file_sha256(SAMPLE / rel) == digest, rel


def test_sample_reads_as_a_canonical_dataset():
    test, train = CanonicalDataset(SAMPLE, "test"), CanonicalDataset(SAMPLE, "train")
    assert (len(test), len(train)) == (61, 24)
    for ds in (test, train):
        s = ds[0]
        assert s.image.dtype == np.uint8 and s.image.ndim == 2
        assert s.labels.dtype == np.uint16 and s.labels.shape == s.image.shape
        assert s.labels.max() > 0
    assert not {s.name for s in test} & {s.name for s in train}
