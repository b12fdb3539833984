"""The two entry points: :func:`synth` (a run, or one shard of it) and :func:`merge_shards`."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from cellsynth.atomic import check_folder_target
from cellsynth.cluster import dask_client
from cellsynth.errors import require
from cellsynth.lock import LOCK_NAME, lock_folder
from cellsynth.synth.folder import check_other_locks, open_output
from cellsynth.synth.manifest import write_outputs
from cellsynth.synth.merge import merge_shard_files
from cellsynth.synth.options import SynthOptions
from cellsynth.synth.sample import Plan
from cellsynth.synth.scheduler import run_samples
from cellsynth.synth.sources import open_inputs


def synth(
    out,
    masks: str = "simulate",
    images: str = "simulate",
    seeds="0-9",
    *,
    options: SynthOptions | None = None,
    **kwargs,
) -> dict:
    """Generate a synthetic dataset into ``out`` (see :mod:`cellsynth.synth` for the layout).

    Args:
        out: output folder.
        masks: "simulate", "stylegan3:PATH" (a snapshot) or a canonical split folder (its masks
            are re-rendered; seed s uses mask number s modulo their count).
        images: "simulate" or "pix2pixhd:PATH" (a checkpoint or run folder).
        seeds: "0-99,120", an int, or a list of ints.
        options: a :class:`SynthOptions` (then ``masks``, ``images``, ``seeds`` and the keywords
            are not used), or None.
        **kwargs: any option of :class:`SynthOptions` by its keyword, e.g. ``size`` (int or
            (h, w)), ``density``, ``mean_radius`` (the simulator's masks); ``trunc``,
            ``class_idx``, ``noise_mode`` (StyleGAN3 sampling); ``dechecker``, ``margin`` (the
            translators); ``threshold_method``,
            ``fg_thresh``, ``boundary_thresh``, ``marker_thresh``, ``smooth``, ``upscale``
            (decoding generated masks; the upscale resizes the generator's soft output before
            decoding); ``min_size``, ``border``, ``min_cells`` (cell filters); ``channels``, ``bit_depth`` (the
            simulator's images); ``spots_count`` (0 = none), ``spots_fixed``, ``spots_spread``,
            ``spots_sigma``, ``spots_scale``, ``spots_matrix``, ``spots_intensity``,
            ``spots_intensity_mean``, ``spots_intensity_spread``, ``spots_psf_sigma``,
            ``spots_mode``, ``spots_channel``, ``spots_model``, ``spots_image_scale``,
            ``photons``, ``read_noise`` (puncta); ``resume``, ``shard`` ("i/N"), ``batch``,
            ``workers`` (0 = this process), ``dask`` ("local:N", a scheduler address or
            scheduler file: the chunks run on a Dask cluster, see :mod:`cellsynth.synth.cluster`),
            ``dask_write`` ("auto", "workers", "client"), ``device``, ``overwrite``,
            ``progress``.

    Returns:
        summary dict: out, written, skipped, seconds, per-stage seconds, shard, redrawn (seeds
        whose generated mask had fewer than ``min_cells`` cells and was drawn again),
        below_min_cells (of those, the ones no draw brought to ``min_cells``) (and with
        ``dask``: chunks, slots, who wrote how many samples, summed chunk seconds).
    """
    t_start = time.perf_counter()
    out = check_folder_target(out)
    if options is None:
        options = SynthOptions.from_kwargs(masks=masks, images=images, seeds=seeds, **kwargs)
    else:
        require(not kwargs, "give options= or keyword options, not both")
    opts = options.check()
    inputs = open_inputs(opts)  # everything is loaded and checked before anything is written
    run = {"options": opts.manifest(), "checkpoints": inputs.checkpoints}
    seed_list = opts.sources.seed_list
    shard = opts.run.shard
    gen = inputs.generator
    encoding = gen.encoding if gen is not None else None
    seed_class = None  # a conditional generator: each seed's class, by name
    if gen is not None and gen.num_classes:
        names = gen.classes or []
        drawn = gen.seed_classes(seed_list, opts.gan.class_idx)
        seed_class = {s: names[c] if c < len(names) else str(c) for s, c in zip(seed_list, drawn)}
    decode_defaults = gen.decode_settings if gen is not None else None
    plan = Plan(str(out), opts, inputs.mask_files, encoding, seed_class, decode_defaults)
    facts = None
    # the cluster is reached before --out is touched: a bad address leaves nothing behind
    cluster = dask_client(opts.run.dask) if opts.run.dask else contextlib.nullcontext()
    with cluster as client, open_output(out, run, seed_list, opts.run):
        if client is None:
            records, anns, times, written, counts = run_samples(plan, inputs, seed_list)
        else:
            from cellsynth.synth.cluster import run_samples_dask

            records, anns, times, written, counts, facts = run_samples_dask(
                client, plan, inputs, seed_list, inputs.checkpoints
            )
        seed_index = {s: i for i, s in enumerate(seed_list)}
        write_outputs(out, run, records, anns, seed_index, shard)
    summary = {
        "out": str(out),
        "written": written,
        "skipped": len(records) - written,
        "seconds": time.perf_counter() - t_start,
        "stages": times,
        "shard": shard,
        **counts,
    }
    if facts is not None:
        summary["dask"] = facts
    return summary


def merge_shards(out) -> dict:
    """Join ``manifest.shard-i-of-N.json`` / ``annotations.shard-i-of-N.json`` (all N shards) in
    ``out`` into ``manifest.json`` and ``annotations.json``, as one run would have written them.

    Returns a summary dict (shards, count). Holds the folder's lock while it writes.
    """
    out = Path(out)
    require(out.is_dir(), f"{out}: no such folder")
    with lock_folder(out, "synth merge"):
        check_other_locks(out, LOCK_NAME)
        return merge_shard_files(out)
