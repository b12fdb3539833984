"""The stages of the demo, in order (each a function of the :class:`Demo` it works on):

1. data      the user's canonical dataset, or the embedded default data (the simulator)
2. pack      masks zip (StyleGAN3) and pairs folder (Pix2PixHD)
3. stylegan3 a small mask generator trained within its share of the time budget
4. pix2pixhd a small mask-to-image translator trained within its share
5. synth     a synthetic training set and a synthetic test set, with puncta
6. realism   morphology of decoded generated masks against the real ones
7. benchmark segmenters trained on synthetic data, tested on synthetic and held-out real data

Each returns a dict whose "detail" is the line shown for it (other keys stay in the stage's
outputs); what later stages need goes into ``Demo.paths``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cellsynth.atomic import write_text
from cellsynth.demo.presets import Preset
from cellsynth.errors import CellsynthError


@dataclass
class Demo:
    """One demo run: where it writes, its sizes, and the paths the stages made."""

    out: Path
    cfg: Preset
    seed: int = 0
    user_data: str | None = None  # a canonical dataset; None: simulate one
    paths: dict = field(default_factory=dict)

    def __post_init__(self):
        data = self.user_data
        self.paths["data"] = Path(data) if data is not None else self.out / "data"

    @property
    def budget(self) -> dict[str, float]:
        return self.cfg.budget()


def latest(folder: Path, pattern: str) -> Path | None:
    """The last (by name) file under ``folder`` matching ``pattern``."""
    found = sorted(Path(folder).rglob(pattern))
    return found[-1] if found else None


def stage_data(demo: Demo) -> dict:
    data = demo.paths["data"]
    if demo.user_data is not None:
        from cellsynth.datasets.canonical import CanonicalDataset

        n = {s: len(CanonicalDataset(data, s)) for s in ("train", "test")}
        return {"detail": f"user data {data}: {n}"}
    from cellsynth.datasets.simulate import simulate_dataset

    cfg = demo.cfg
    counts = simulate_dataset(
        data,
        n_train=cfg.n_train,
        n_test=cfg.n_test,
        seed=demo.seed,
        size=(cfg.size, cfg.size),
        density=cfg.density,
        mean_radius=cfg.mean_radius,
    )
    return {"detail": f"simulated {counts}"}


def stage_pack(demo: Demo) -> dict:
    from cellsynth.datasets.pack import pack_masks, pack_pairs

    paths = demo.paths
    paths["masks_zip"] = demo.out / "packed" / "masks.zip"
    paths["pairs"] = demo.out / "packed" / "pairs"
    m = pack_masks(
        paths["data"],
        paths["masks_zip"],
        resolution=demo.cfg.mask_res,
        encoding="fbd",
        transform="tiles",
        split="train",
    )
    p = pack_pairs(paths["data"], paths["pairs"], size=demo.cfg.size, split="train")
    return {"detail": f"masks zip: {m['items']} tiles; pairs: {p['splits']}"}


def stage_stylegan3(demo: Demo) -> dict:
    from cellsynth.stylegan3.train import train

    cfg = demo.cfg
    run = train(
        outdir=str(demo.out / "runs" / "stylegan3"),
        cfg=cfg.sg3_cfg,
        data=str(demo.paths["masks_zip"]),
        batch=cfg.sg3_batch,
        cbase=cfg.sg3_cbase,
        cmax=cfg.sg3_cmax,
        gamma=1.0,
        mirror=True,
        kimg=1000,
        tick=0.1,
        snap=5,
        max_minutes=demo.budget["stylegan3"],
        seed=demo.seed,
        workers=0,
    )
    snap = latest(Path(run), "network-snapshot-*.pt")
    if snap is None:
        raise CellsynthError(f"{run}: training wrote no snapshot")
    demo.paths["sg3_run"], demo.paths["sg3_snapshot"] = Path(run), snap
    return {"detail": f"{snap.name} in {Path(run).name}"}


def stage_pix2pixhd(demo: Demo) -> dict:
    from cellsynth.pix2pixhd.options import Options
    from cellsynth.pix2pixhd.training_loop import train

    cfg = demo.cfg
    opt = Options(
        name="demo",
        dataroot=str(demo.paths["pairs"]),
        checkpoints_dir=str(demo.out / "runs" / "pix2pixhd"),
        seed=demo.seed,
        resize_or_crop="none",
        loadSize=cfg.size,
        fineSize=cfg.size,
        ngf=cfg.p2p_ngf,
        ndf=cfg.p2p_ndf,
        n_downsample_global=cfg.p2p_down,
        n_blocks_global=cfg.p2p_blocks,
        num_D=2,
        n_layers_D=2,
        no_vgg_loss=True,
        niter=1000,
        niter_decay=0,
        max_minutes=demo.budget["pix2pixhd"],
        display_freq=50,
        print_freq=50,
        save_latest_freq=50,
        save_epoch_freq=1000,
        progress=False,
    )
    run = train(opt)
    demo.paths["p2p_run"] = Path(run)
    demo.paths["p2p_ckpt"] = Path(run) / "latest.pt"
    return {"detail": f"{demo.paths['p2p_ckpt']}"}


def stage_synth(demo: Demo) -> dict:
    from cellsynth.synth import synth

    paths, cfg = demo.paths, demo.cfg
    common = dict(
        masks=f"stylegan3:{paths['sg3_snapshot']}",
        images=f"pix2pixhd:{paths['p2p_ckpt']}",
        spots_count=cfg.spots,
        min_size=15,
        progress=False,
    )
    paths["synth_train"] = demo.out / "synthetic" / "train"
    paths["synth_test"] = demo.out / "synthetic" / "test"
    a = synth(paths["synth_train"], seeds=f"0-{cfg.synth_train - 1}", **common)
    b = synth(paths["synth_test"], seeds=f"100000-{100000 + cfg.synth_test - 1}", **common)
    return {"detail": f"train {a['written']} pairs, test {b['written']} pairs"}


def stage_realism(demo: Demo) -> dict:
    from cellsynth.datasets.canonical import CanonicalDataset
    from cellsynth.datasets.pack import MaskZipDataset
    from cellsynth.stylegan3.metrics import realism
    from cellsynth.tools.codec import decode_mask

    zipped = MaskZipDataset(demo.paths["masks_zip"])
    real = [
        decode_mask(np.moveaxis(zipped[i][0], 0, -1), zipped.encoding)
        for i in range(min(len(zipped), 200))
    ]
    fake = [s.labels for s in CanonicalDataset(demo.paths["synth_train"])]
    figures = realism(real, fake)
    write_text(demo.out / "realism.json", json.dumps(figures, indent=1, default=float))
    return {"detail": f"w1_mean {figures['w1_mean']:.3f}", "figures": figures}


def stage_benchmark(demo: Demo) -> dict:
    from cellsynth.benchmark.runner import run_benchmark

    cfg, paths = demo.cfg, demo.paths
    names = [s for s in cfg.segmenters.split(",") if s]
    per = demo.budget["benchmark"] / max(1, sum(n != "classical" for n in names))
    res = run_benchmark(
        paths["synth_train"],
        [paths["synth_test"], paths["data"] / "test"],
        names,
        demo.out / "benchmark",
        budgets={n: {"minutes": per} for n in names},
        options={n: cfg.seg_options.get(n, {}) for n in names},
        cache_dir=demo.out / "benchmark-cache",
        overwrite=True,
        progress=False,
    )
    return {"detail": f"{len(names)} segmenters", "results": res}


# (name, function, the stages it needs), in the order they run
STAGES = [
    ("data", stage_data, ()),
    ("pack", stage_pack, ("data",)),
    ("stylegan3", stage_stylegan3, ("pack",)),
    ("pix2pixhd", stage_pix2pixhd, ("pack",)),
    ("synth", stage_synth, ("stylegan3", "pix2pixhd")),
    ("realism", stage_realism, ("synth",)),
    ("benchmark", stage_benchmark, ("synth",)),
]
