"""The end-to-end generator behind ``cellsynth synth``.

Per seed: make a mask (a trained StyleGAN3 generator, the procedural simulator, or a real mask
from a canonical split folder), decode it to instance labels, filter cells, translate labels +
instances into an image (a trained Pix2PixHD translator, or the simulator's renderer), add
Gaussian puncta, and write. The output folder ``OUT`` is a canonical split folder::

    OUT/images/seedNNNNNN.tif     the image
    OUT/masks/seedNNNNNN.tif      uint16 instance labels
    OUT/spots/seedNNNNNN.csv      x,y,cell_id,intensity of every punctum
    OUT/annotations.json          COCO instances, one RLE per cell
    OUT/manifest.json             version, checkpoint sha256s, every option, every seed
    OUT/synth_options.json        the options and seeds (checked by --resume and --shard)
    OUT/.cellsynth.lock           while a run writes OUT (see :mod:`cellsynth.lock`)

Shards (``shard=(i, n)``) take every n-th seed and write ``manifest.shard-i-of-n.json`` and
``annotations.shard-i-of-n.json``; :func:`merge_shards` joins them into the final files, which
are byte-identical to those of a single run.

Modules:

- ``options``    the options as dataclasses: one field per option gives the keyword, the CLI
                 flag, the help and the manifest key (the CLI reads its flags from them)
- ``sources``    loading and checking the generator, the translators and real masks
- ``sample``     the work on one sample (labels, puncta, image, files), run by the workers
- ``scheduler``  the process pool and the GAN batches feeding it
- ``cluster``    ``--dask``: the same batches as chunks run by the workers of a Dask cluster
- ``folder``     the output folder: lock, --resume / --overwrite / --shard policy
- ``coco``       annotations.json;  ``manifest``  manifest.json;  ``merge``  joining shards
- ``run``        :func:`synth` and :func:`merge_shards`

A new option is one field in one group of ``options`` (and its use where the work happens).
"""

from cellsynth.synth.coco import build_coco, coco_annotations
from cellsynth.synth.folder import OPTIONS_FILE
from cellsynth.synth.options import (
    BORDER,
    THRESHOLD_METHODS,
    SynthOptions,
    parse_shard,
)
from cellsynth.synth.run import merge_shards, synth
from cellsynth.synth.sample import PARTIAL, filter_cells, sample_name, upscale_soft
from cellsynth.tools.parse import MAX_SEED, parse_seeds

__all__ = [
    "BORDER",
    "MAX_SEED",
    "OPTIONS_FILE",
    "PARTIAL",
    "THRESHOLD_METHODS",
    "SynthOptions",
    "build_coco",
    "coco_annotations",
    "filter_cells",
    "merge_shards",
    "parse_seeds",
    "parse_shard",
    "sample_name",
    "synth",
    "upscale_soft",
]
