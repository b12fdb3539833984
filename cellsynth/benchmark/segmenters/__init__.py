"""Segmenters behind one interface (see :mod:`cellsynth.benchmark.segmenters.base`)."""

from cellsynth.benchmark.segmenters.base import (
    Segmenter,
    available,
    get_segmenter_class,
    make_segmenter,
    register,
)

__all__ = ["Segmenter", "available", "get_segmenter_class", "make_segmenter", "register"]
