"""Choose among translator checkpoints on the TRAIN split (a fine-tune's epochs, the shipped one).

    OMP_NUM_THREADS=2 python perf/pick_translator.py CKPT [CKPT ...]
        [--data ../shared/data/dsb2018-fluo] [--pairs PAIRS_DIR] [--num 60] [--blur 0.5]
        [--appearance auto|image|clusters]

Each CKPT is a checkpoint file, a run folder (its ``latest.pt``) or a shipped name. A checkpoint
with a feature encoder first gets its clusters and feature bank (``pix2pixhd clusters`` on the
pairs folder it was trained on, or ``--pairs``), written beside it as ``<stem>_clusters.npz``
unless that file exists. Then the masks of ``--num`` train images (every k-th, so each kind of
the split is there) are translated as ``synth`` does (checkerboard filter, 32-px mirrored
margin, the given last blur; the i-th image with seed i), and the script prints one JSON line
per checkpoint: the Wasserstein-1 distances of the per-nucleus mean intensities and of the
per-image background intensities between the translated and the real images of those masks,
their medians, and the classical probe's pooled AP@0.5 on the translations over the real
images. The test split is not read.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from pretrained_goals import ROOT, gray, intensities, read_split, translate_all


def clusters_for(ckpt: Path, pairs: str | None) -> Path | None:
    """The clusters file of a checkpoint with a feature encoder (computed once); None for a
    checkpoint without one or one that carries its own (an export)."""
    from cellsynth.pix2pixhd.clusters import compute_clusters
    from cellsynth.pix2pixhd.options import Options
    from cellsynth.training.checkpoint import load_checkpoint

    data = load_checkpoint(ckpt, kind="pix2pixhd")
    if not Options.from_dict(data["config"]["opt"]).use_features or "appearance" in data:
        return None
    out = ckpt.with_name(f"{ckpt.stem}_clusters.npz")
    if not out.is_file():
        compute_clusters(ckpt, dataroot=pairs, out=out, progress=False)
    return out


def main() -> None:
    from cellsynth.pix2pixhd.clusters import APPEARANCE_CHOICES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/dsb2018-fluo"))
    ap.add_argument("--pairs", default=None, help="pairs folder for the clusters [as trained]")
    ap.add_argument("--num", type=int, default=60, help="train images used")
    ap.add_argument("--blur", type=float, default=0.5, help="last smoothing of every candidate")
    ap.add_argument("--appearance", choices=APPEARANCE_CHOICES, default="auto")
    args = ap.parse_args()
    from scipy.stats import wasserstein_distance

    from cellsynth.benchmark.segmenters import make_segmenter
    from cellsynth.benchmark.segmenters._fitting import pooled_ap50
    from cellsynth.pix2pixhd.checkpoints import resolve_checkpoint
    from cellsynth.pix2pixhd.translator import Translator
    from cellsynth.precision import cpu_kind

    train = read_split(Path(args.data), "train")
    step = max(1, len(train) // max(1, args.num))
    samples = train[::step][: args.num]
    truth = [s.labels for s in samples]
    real = [s.image for s in samples]
    probe = make_segmenter("classical")
    ap_real = pooled_ap50(truth, [probe.predict(gray(im)) for im in real])
    n_real, b_real = intensities(zip(real, truth))
    for spec in args.checkpoints:
        ckpt = resolve_checkpoint(spec)
        t0 = time.perf_counter()
        clusters = clusters_for(ckpt, args.pairs)
        tr = Translator.load(ckpt, clusters=clusters, blur=args.blur, appearance=args.appearance)
        synth = translate_all(tr, truth)
        n_syn, b_syn = intensities(zip(synth, truth))
        ap_syn = pooled_ap50(truth, [probe.predict(gray(im)) for im in synth])
        row = {
            "checkpoint": str(spec),
            "appearance": tr.appearance,
            "blur": tr.blur,
            "num_train_images": len(samples),
            "nucleus_w1": round(float(wasserstein_distance(n_real, n_syn)), 3),
            "background_w1": round(float(wasserstein_distance(b_real, b_syn)), 3),
            "nucleus_median": [round(float(np.median(x)), 2) for x in (n_real, n_syn)],
            "background_median": [round(float(np.median(x)), 2) for x in (b_real, b_syn)],
            "probe_ap50": [round(ap_real, 4), round(ap_syn, 4)],
            "probe_ratio": round(ap_syn / ap_real, 4) if ap_real else None,
            "seconds": round(time.perf_counter() - t0, 1),
            "cpu": cpu_kind(),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
