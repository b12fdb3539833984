"""cellsynth: synthetic, fully annotated microscopy cell data and a segmenter benchmark."""

__version__ = "0.1.0"
