"""Readers and writers of every supported format, the canonical layout, the dataset tool, the
procedural cell simulator, and the embedded real sample (:data:`DSB2018_SAMPLE`: 61 test and 24
training images of DSB2018 fluorescence nuclei, CC0, a canonical root with its license and
provenance; the demo's default data)."""

from pathlib import Path

from cellsynth.datasets.canonical import (
    CanonicalDataset,
    Sample,
    read_sample,
    resolve_split,
    write_dataset,
    write_sample,
)
from cellsynth.datasets.io import (
    image_to_float,
    image_to_network,
    network_to_image,
    read_image,
    read_labels,
    write_image,
    write_labels,
)

DSB2018_SAMPLE = Path(__file__).resolve().parent / "samples" / "dsb2018-fluo"

__all__ = [
    "DSB2018_SAMPLE",
    "CanonicalDataset",
    "Sample",
    "image_to_float",
    "image_to_network",
    "network_to_image",
    "read_image",
    "read_labels",
    "read_sample",
    "resolve_split",
    "write_dataset",
    "write_image",
    "write_labels",
    "write_sample",
]
