"""Pix2PixHD (Wang et al. 2018) mask-to-image translation: networks, losses, training, test and
the :class:`Translator` used by the synthesis pipeline."""

from cellsynth.pix2pixhd.options import Options

__all__ = ["Options", "Translator"]


def __getattr__(name):
    if name == "Translator":
        from cellsynth.pix2pixhd.translator import Translator

        return Translator
    raise AttributeError(name)
