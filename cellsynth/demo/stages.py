"""The stages of the demo, in order (each a function of the :class:`Demo` it works on):

1. data             the embedded real sample (DSB2018 nuclei, CC0), the user's ``--data``, or
                    (only where the sample is missing) the simulator
2. synth            a synthetic training and test set with puncta, made by the shipped models,
                    and the test set again without puncta (same seeds: same masks and images)
                    for the benchmark, since the real images it is compared with have none
3. realism          decoded synthetic masks against the real test masks at the same scale
4. finetune-masks   the shipped mask generator fine-tuned on the real training images for its
                    share of the budget: loss curves, the same seeds before and after
5. finetune-images  the same for the shipped translator
6. benchmark        the segmenters (shipped ones loaded; classical tuned, and any others
                    trained, on the real training split, as the shipped ones were) on the
                    synthetic test set without puncta and on the real test set, with the rank
                    agreement between the two (the validity of the synthetic benchmark)

Each returns a dict whose "detail" is the line shown for it (other keys stay in the stage's
outputs); what later stages need goes into ``Demo.paths``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cellsynth.atomic import write_text
from cellsynth.datasets import DSB2018_SAMPLE
from cellsynth.demo.answer import COUNT_GOAL
from cellsynth.demo.presets import SHIPPED, Preset
from cellsynth.errors import CellsynthError

SAMPLE = DSB2018_SAMPLE
GRID_SEEDS = list(range(16))  # the generator's before/after grids
SYNTH_TEST_SEED0 = 100000  # synthetic test seeds start here (training seeds at 0)


@dataclass
class Demo:
    """One demo run: where it writes, its sizes, and the paths the stages made."""

    out: Path
    cfg: Preset
    seed: int = 0
    user_data: str | None = None  # a canonical dataset; None: the embedded sample
    paths: dict = field(default_factory=dict)
    facts: dict = field(default_factory=dict)  # what the report leads with

    def __post_init__(self):
        if self.user_data is not None:
            self.paths["data"] = Path(self.user_data)
        elif (SAMPLE / "test").is_dir():
            self.paths["data"] = SAMPLE
        else:  # the data of last resort
            self.paths["data"] = self.out / "simulated"

    @property
    def budget(self) -> dict[str, float]:
        return self.cfg.budget()


def latest(folder: Path, pattern: str) -> Path | None:
    """The last (by name) file under ``folder`` matching ``pattern``."""
    found = sorted(Path(folder).rglob(pattern))
    return found[-1] if found else None


def shipped(kind: str, segmenter: str | None = None):
    """The shipped ``kind`` model the demo uses (None when this installation has none)."""
    from cellsynth import models

    return models.find(SHIPPED, kind, segmenter=segmenter)


def mask_scale() -> tuple[int, int]:
    """(generator resolution, full-scale tile it stands for) of the shipped mask generator."""
    g = shipped("stylegan3")
    res = int(g.info.get("resolution", 64))
    return res, int(g.info.get("tile_size", 2 * res))


def stage_data(demo: Demo) -> dict:
    from cellsynth.datasets.canonical import CanonicalDataset

    data = demo.paths["data"]
    if demo.user_data is None and data != SAMPLE:
        from cellsynth.datasets.simulate import simulate_dataset

        simulate_dataset(data, n_train=24, n_test=12, seed=demo.seed, size=(256, 256))
        what = "the embedded sample is missing: simulated cells"
    elif demo.user_data is None:
        what = "embedded real sample: DSB2018 fluorescence nuclei (CC0)"
    else:
        what = f"user data {data}"
    n = {s: len(CanonicalDataset(data, s)) for s in ("train", "test")}
    demo.facts["data"] = {"what": what, "images": n}
    return {"detail": f"{what}: {n['train']} train, {n['test']} test images"}


def stage_synth(demo: Demo) -> dict:
    from cellsynth.synth import synth

    paths, cfg = demo.paths, demo.cfg
    if shipped("pix2pixhd") is None:
        raise CellsynthError(f"no shipped translator {SHIPPED!r} in this installation")
    if shipped("stylegan3") is not None:
        res, tile = mask_scale()
        masks, upscale = f"stylegan3:{SHIPPED}", tile // res
        how = f"masks from the shipped generator ({res} px, upscaled x{upscale})"
    else:
        masks, upscale = str(paths["data"] / "train"), 1
        how = "masks of the real training split (no mask generator shipped)"
    common = dict(
        masks=masks,
        images=f"pix2pixhd:{SHIPPED}",
        upscale=upscale,
        spots_count=cfg.spots,
        min_size=15,
        workers=2,
        progress=False,
    )
    paths["synth_train"] = demo.out / "synthetic" / "train"
    paths["synth_test"] = demo.out / "synthetic" / "test"
    a = synth(paths["synth_train"], seeds=f"0-{cfg.synth_train - 1}", **common)
    t0 = SYNTH_TEST_SEED0
    test_seeds = f"{t0}-{t0 + cfg.synth_test - 1}"
    b = synth(paths["synth_test"], seeds=test_seeds, **common)
    paths["synth_bench"] = paths["synth_test"]
    if cfg.spots > 0:  # the benchmark's copy: the same samples without the puncta
        paths["synth_bench"] = demo.out / "synthetic" / "test-nuclei"
        synth(paths["synth_bench"], seeds=test_seeds, **dict(common, spots_count=0.0))
    demo.facts["synth"] = how
    return {"detail": f"{how}; train {a['written']} pairs, test {b['written']} pairs"}


def real_tiles(split_dir: Path, tile: int, max_images: int | None = None) -> list[np.ndarray]:
    """Full-scale ``tile`` x ``tile`` label tiles of a split (no overlap, empty tiles skipped):
    the real masks at the scale of the synthetic ones."""
    from cellsynth.datasets.canonical import CanonicalDataset
    from cellsynth.tools.codec import label_tiles

    ds = CanonicalDataset(split_dir)
    n = len(ds) if max_images is None else min(len(ds), max_images)
    return label_tiles((ds[i].labels for i in range(n)), tile, tile)


def stage_realism(demo: Demo) -> dict:
    from cellsynth.datasets.canonical import CanonicalDataset
    from cellsynth.stylegan3.metrics import realism

    fake = [
        s.labels for key in ("synth_train", "synth_test") for s in CanonicalDataset(demo.paths[key])
    ]
    tile = int(fake[0].shape[0])
    real = real_tiles(demo.paths["data"] / "test", tile, demo.cfg.max_real_test)
    if not real:
        raise CellsynthError(f"no real test image is {tile} px or larger; nothing to compare")
    fig = realism(real, fake)
    goals = {}
    for key in ("objects_per_image", "mean_area"):
        r, f = fig[f"{key}_real"], fig[f"{key}_fake"]
        goals[key] = {"real": r, "synthetic": f, "rel_diff": abs(f - r) / r if r else None}
        goals[key]["met"] = bool(r and abs(f - r) / r <= COUNT_GOAL)
    fig["goals"] = goals
    fig["tile"] = tile
    write_text(demo.out / "realism.json", json.dumps(fig, indent=1, default=float))
    demo.facts["realism"] = fig
    o, a = goals["objects_per_image"], goals["mean_area"]
    return {
        "detail": f"objects per {tile}px tile {o['synthetic']:.2f} vs real {o['real']:.2f}; "
        f"mean area {a['synthetic']:.0f} vs {a['real']:.0f} px; w1_mean {fig['w1_mean']:.3f}",
        "figures": fig,
    }


def _tile_grid(tiles: np.ndarray, cols: int = 8, zoom: int = 2) -> np.ndarray:
    """uint8 N x H x W (x C) tiles in rows of ``cols`` with white 2-px gaps, zoomed."""
    from cellsynth.training.grid import make_grid

    grid = make_grid(tiles, cols, pad=2, fill=255)
    return grid.repeat(zoom, axis=0).repeat(zoom, axis=1)


def stage_finetune_masks(demo: Demo) -> dict:
    from cellsynth.datasets.io import write_image
    from cellsynth.datasets.pack import SIZE_KEY, pack_masks
    from cellsynth.stylegan3.generate import MaskGenerator
    from cellsynth.stylegan3.train import train

    if shipped("stylegan3") is None:
        raise CellsynthError(f"no shipped mask generator {SHIPPED!r} to fine-tune")
    cfg, res_tile = demo.cfg, mask_scale()
    before = MaskGenerator.load(SHIPPED, fp32=True)
    build = before.config["build"]
    zipped = demo.out / "finetune" / "masks.zip"
    packed = pack_masks(
        demo.paths["data"],
        zipped,
        resolution=res_tile[0],
        encoding="fbd",
        transform="tiles",
        tile=res_tile[1],
        stride=res_tile[1] // 2,
        split="train",
        cond=SIZE_KEY if before.num_classes else None,  # the shipped generator's classes
    )
    run = train(
        outdir=str(demo.out / "finetune" / "stylegan"),
        cfg=build["cfg"],
        data=str(zipped),
        batch=cfg.sg3_batch,
        cbase=build["cbase"],
        cmax=build["cmax"],
        map_depth=build["map_depth"],
        z_dim=build["z_dim"],
        w_dim=build["w_dim"],
        gamma=1.0,
        mirror=True,
        ada_kimg=100,
        kimg=1000,
        tick=0.1,
        snap=5,
        resume=SHIPPED,
        cond=bool(before.num_classes),
        max_minutes=demo.budget["finetune-masks"],
        seed=demo.seed,
        workers=0,
    )
    snap = latest(Path(run), "network-snapshot-*.pt")
    if snap is None:
        raise CellsynthError(f"{run}: fine-tuning wrote no snapshot")
    after = MaskGenerator.load(snap, fp32=True)
    grids = {}
    for tag, gen in (("before", before), ("after", after)):
        grids[tag] = demo.out / "finetune" / f"masks_{tag}.png"
        # both at the shipped model's psi (a fresh snapshot records none of its own)
        x = gen.generate(GRID_SEEDS, trunc=before.trunc)
        write_image(grids[tag], _tile_grid(gen.to_uint8(x)))
    demo.paths.update(sg3_run=Path(run), sg3_snapshot=snap, masks_grids=grids)
    return {"detail": f"{packed['items']} real tiles; {snap.name} in {Path(run).name}"}


def stage_finetune_images(demo: Demo) -> dict:
    from cellsynth.datasets.io import write_image
    from cellsynth.datasets.pack import pack_pairs
    from cellsynth.pix2pixhd.options import Options
    from cellsynth.pix2pixhd.training_loop import train
    from cellsynth.pix2pixhd.translator import Translator

    cfg = demo.cfg
    if shipped("pix2pixhd") is None:
        raise CellsynthError(f"no shipped translator {SHIPPED!r} to fine-tune")
    before = Translator.load(SHIPPED)
    pairs = demo.out / "finetune" / "pairs"
    packed = pack_pairs(
        demo.paths["data"],
        pairs,
        size=256,
        transform="tiles",
        tile=256,
        stride=128,
        split="train",
        max_images=cfg.max_train_images,
    )
    opt = Options.from_dict(before.opt.to_dict()).replace(
        name="translator",
        dataroot=str(pairs),
        checkpoints_dir=str(demo.out / "finetune"),
        phase="train",
        seed=demo.seed,
        resize_or_crop="crop",
        loadSize=256,
        fineSize=cfg.p2p_crop,
        batchSize=1,
        gpus=1,
        no_vgg_loss=True,
        load_pretrain=SHIPPED,
        continue_train=False,
        niter=1000,
        niter_decay=0,
        max_minutes=demo.budget["finetune-images"],
        max_iters=None,
        display_freq=1000000,
        print_freq=20,
        save_latest_freq=1000000,
        save_epoch_freq=1000000,
        progress=False,
    )
    run = train(opt)
    if opt.use_features:  # the fine-tuned encoder's clusters and bank, from the same pairs
        from cellsynth.pix2pixhd.clusters import compute_clusters

        compute_clusters(run, dataroot=str(pairs), progress=False)
    after = Translator.load(run)
    from cellsynth.datasets.canonical import CanonicalDataset

    test = CanonicalDataset(demo.paths["data"], "test")
    rows = []
    for i in range(min(3, len(test))):
        lab = test[i].labels[:256, :256]
        real = test[i].image[:256, :256]
        real = real if real.ndim == 2 else real[..., 0]
        made = [t.translate((lab > 0).astype(np.uint8), lab, seed=0) for t in (before, after)]
        made = [m if m.ndim == 2 else m[..., 0] for m in made]
        rows.append(np.concatenate([_as_u8(real), *(_as_u8(m) for m in made)], axis=1))
    grid = demo.out / "finetune" / "images_before_after.png"
    write_image(grid, np.concatenate(rows, axis=0))
    demo.paths.update(p2p_run=Path(run), images_grid=grid)
    n = sum(packed["splits"].values())
    return {"detail": f"{n} real training pairs; {run.name}/latest.pt"}


def _as_u8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    from cellsynth.htmlkit import display_image

    return display_image(img)[..., 0]


def stage_benchmark(demo: Demo) -> dict:
    from cellsynth.benchmark.runner import run_benchmark

    cfg, paths = demo.cfg, demo.paths
    names = [s.strip() for s in cfg.segmenters.split(",") if s.strip()]
    found = {n: shipped("segmenter", n) for n in names}
    trained = [n for n in names if n != "classical" and found[n] is None]
    per = demo.cfg.minutes / max(1, len(trained))
    budgets = {
        n: {"load": str(found[n].path.parent)} if found[n] else {"minutes": per} for n in names
    }
    # every segmenter learns from real images, as the shipped ones did, so the synthetic test set
    # is judged on how it ranks segmenters trained on real data (tuning classical on the
    # synthetic images gave it a home advantage there that it does not have on real images)
    res = run_benchmark(
        paths["data"] / "train",
        [paths["synth_bench"], paths["data"] / "test"],
        names,
        demo.out / "benchmark",
        budgets=budgets,
        options={n: cfg.seg_options.get(n, {}) for n in names},
        cache_dir=demo.out / "benchmark-cache",
        overwrite=True,
        progress=False,
        max_images=cfg.max_real_test,
        n_boot=cfg.n_boot,
        seed=demo.seed,
    )
    loaded = [n for n in names if "load" in budgets[n]]
    return {
        "detail": f"{len(names)} segmenters ({', '.join(loaded) or 'none'} shipped, loaded)",
        "results": res,
    }


# (name, function, the stages it needs), in the order they run
STAGES = [
    ("data", stage_data, ()),
    ("synth", stage_synth, ("data",)),
    ("realism", stage_realism, ("synth",)),
    ("finetune-masks", stage_finetune_masks, ("data",)),
    ("finetune-images", stage_finetune_images, ("data",)),
    ("benchmark", stage_benchmark, ("synth",)),
]
