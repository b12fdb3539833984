"""``cellsynth pix2pixhd test``: translate the label maps of a pairs split with a trained model
and write an HTML page of (input label, real image, synthesised image).

Output folder ``RESULTS/NAME/{phase}_{which_epoch}/``: ``images/NAME_{input_label,real_image,
synthesized_image}.png``, ``synthesized/NAME.tif`` (the images at full bit depth as the model
makes them, uint8) and ``index.html``. Images are translated at their own size.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from cellsynth.atomic import atomic_dir
from cellsynth.datasets.io import image_to_network, write_image
from cellsynth.errors import CellsynthError
from cellsynth.pix2pixhd import data as p2p_data
from cellsynth.pix2pixhd.training_loop import label_visual, visual, write_web_page
from cellsynth.pix2pixhd.translator import Translator


def run_test(
    name: str,
    checkpoints_dir: str | os.PathLike = "./checkpoints",
    which_epoch: str = "latest",
    how_many: int = 50,
    results_dir: str | os.PathLike = "./results",
    dataroot: str | None = None,
    phase: str = "test",
    device: str = "cpu",
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Translate up to ``how_many`` pairs of ``phase``; returns the output folder."""
    from tqdm import tqdm

    if how_many < 1:
        raise CellsynthError("--how_many must be >= 1")
    run_dir = Path(checkpoints_dir) / name
    translator = Translator.load(run_dir, device=device, which_epoch=which_epoch)
    root = dataroot or translator.opt.dataroot
    if not root:
        raise CellsynthError("--dataroot is needed (the model does not record one)")
    dataset = p2p_data.open_pairs(root, phase)
    out = Path(results_dir) / name / f"{phase}_{which_epoch}"
    count = min(how_many, len(dataset))
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for i in tqdm(range(count), desc="translating", disable=not progress):
            item = dataset[i]
            stem = item["name"]
            fake = translator.translate(item["label"], item["inst"], seed=seed + i)
            real = np.asarray(item["image"])
            inst = torch.from_numpy(np.asarray(item["inst"]).astype(np.int64))
            label = torch.from_numpy(np.asarray(item["label"]).astype(np.int64))
            write_image(tmp / "synthesized" / f"{stem}.tif", fake)
            write_image(
                tmp / "images" / f"{stem}_input_label.png",
                label_visual(label, inst, translator.label_nc),
            )
            write_image(
                tmp / "images" / f"{stem}_real_image.png",
                visual(torch.from_numpy(image_to_network(real))),
            )
            write_image(
                tmp / "images" / f"{stem}_synthesized_image.png",
                visual(torch.from_numpy(image_to_network(fake))),
            )
        write_web_page(tmp, f"pix2pixhd {name}: {phase}, epoch {which_epoch}")
    return out
