"""Readers and writers of every supported format, the canonical layout, the dataset tool and the
procedural cell simulator."""

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

__all__ = [
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
