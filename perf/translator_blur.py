"""Choose a translator's last smoothing (``models export --blur``) on the TRAIN split.

    OMP_NUM_THREADS=2 python perf/translator_blur.py [--images dsb2018-nuclei] [--clusters NPZ]
        [--data ../shared/data/dsb2018-fluo] [--num 60] [--sigmas 0,0.3,0.4,0.5,0.6,0.7]

The masks of ``--num`` train images (every k-th image, so all kinds of the split are there) are
translated as ``synth`` does (checkerboard filter, mirrored margin; the i-th image with seed i),
once per Gaussian sigma of the last smoothing. For each image and sigma the script measures the
fine-grained texture: the
standard deviation of the image minus its own Gaussian blur (sigma 1.5 px), inside the nuclei
(eroded by 2 px) and in the background (over 6 px from any nucleus), on the translated and on
the real image of the same mask. It prints one JSON line per sigma, with the median over images
of translated / real, and last the sigma whose nucleus texture ratio is closest to 1 (in log).
The test split is not read.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from pretrained_goals import ROOT, comma_list, gray, read_split, translate_all

TEXTURE_SIGMA = 1.5  # px: what counts as fine-grained texture
ERODE = 2  # px taken off each nucleus's rim
FAR = 6  # px: background this far from any nucleus
MIN_PIXELS = 500  # an image with fewer pixels in a region has no figure for it


def texture(image: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(inside nuclei, background) std of the image minus its Gaussian blur; NaN where the
    region has fewer than MIN_PIXELS pixels."""
    from scipy import ndimage as ndi

    x = gray(image)
    fine = x - ndi.gaussian_filter(x, TEXTURE_SIGMA)
    inside = ndi.binary_erosion(labels > 0, iterations=ERODE)
    far = ndi.distance_transform_edt(labels == 0) > FAR
    return tuple(float(fine[m].std()) if m.sum() >= MIN_PIXELS else math.nan for m in (inside, far))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default="dsb2018-nuclei", help="translator (name or path)")
    ap.add_argument("--clusters", default=None, help="its clusters file [its own or beside it]")
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/dsb2018-fluo"))
    ap.add_argument("--num", type=int, default=60, help="train images used")
    ap.add_argument(
        "--sigmas",
        type=comma_list(float),
        default=[0.0, 0.3, 0.4, 0.5, 0.6, 0.7],
    )
    args = ap.parse_args()
    from cellsynth.pix2pixhd.translator import Translator
    from cellsynth.precision import cpu_kind

    train = read_split(Path(args.data), "train")
    step = max(1, len(train) // max(1, args.num))
    samples = train[::step][: args.num]
    real = np.array([texture(s.image, s.labels) for s in samples])
    tr = Translator.load(args.images, blur=0.0, clusters=args.clusters)
    print(
        json.dumps(
            {
                "cpu": cpu_kind(),
                "images": len(samples),
                "margin": tr.margin,
                "dechecker": tr.dechecker_period,
            }
        ),
        flush=True,
    )
    rows = []
    for sigma in args.sigmas:
        tr.blur = sigma
        made = translate_all(tr, [s.labels for s in samples])
        syn = np.array([texture(img, s.labels) for img, s in zip(made, samples)])
        row = {"blur": sigma}
        for k, region in enumerate(("nucleus", "background")):
            ok = np.isfinite(real[:, k]) & np.isfinite(syn[:, k]) & (real[:, k] > 0)
            row[f"{region}_texture_ratio"] = round(float(np.median(syn[ok, k] / real[ok, k])), 3)
            row[f"{region}_images"] = int(ok.sum())
        rows.append(row)
        print(json.dumps(row), flush=True)
    best = min(rows, key=lambda r: abs(math.log(r["nucleus_texture_ratio"])))
    print(json.dumps({"best": best}), flush=True)


if __name__ == "__main__":
    main()
