"""The goal figures of the shipped DSB2018 nuclei models, measured on the held-out test split.

    OMP_NUM_THREADS=2 python perf/pretrained_goals.py [--masks dsb2018-nuclei]
        [--images dsb2018-nuclei] [--num 1000] [--trunc PSI] [--marker-thresh LEVEL] [--data ../shared/data/dsb2018-fluo]
        [--debias auto|on|off] [--skip-masks] [--skip-images] [--dechecker both|on|off] [--margin PX,...]
        [--blur SIGMA,...] [--appearance auto|image|clusters] [--grid-dir DIR]
        [--probe-model NAME=DIR ...]

Prints one JSON object. Masks: ``--num`` generated tiles decoded to instances against the real
test tiles at the generator's scale (the tiles ``dataset pack`` makes from the test split:
``--tile`` px crops, no overlap, empty tiles skipped, nearest-neighbour down to the generator's
resolution), with the same figures between the real train and test tiles as the reference:
objects per tile (and of them, those cut by the tile's edge), mean area, the fraction of
nuclei touching another one, the share of near-duplicate pairs of tiles (diversity:
foreground IoU > 0.5), and each normalised
Wasserstein-1 morphology distance of the realism measure, with its ratio to the train-vs-test
reference (goal <= 1.2). Images: every real test mask translated to an image (the i-th with
seed i: a translator with encoded features draws each image's appearance from its training
bank, never from the test image); the fixed probe
(the classical segmenter with its default options) scores pooled AP@0.5 on the translated and
on the real images of the same masks (goal >= 95 %); per-nucleus mean intensity and per-image
background intensity as distributions against the real test images, with the real train images
as the reference distance (goal <= 1.2x), and the same distance at the translated set's
sample size (``same_size_ref``: as many real train images as there are test images, drawn
1,000 times, seeded; its median and 10-90 % range, and how many of those draws of real images
came closer to the test images than the translation did). The image figures come twice by
default, with the translator's checkerboard filter (``images``, what ``synth`` does) and without it
(``images_no_dechecker``); ``--margin`` and ``--blur`` add variants with other mirrored margins
and last smoothings (keys ``..._marginM``, ``..._blurS``) beside synth's defaults.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def comma_list(cast):
    """An argparse type: comma-separated values ("0,32") -> ``cast`` of each; one usage line
    for anything else."""

    def parse(text: str) -> list:
        try:
            return [cast(t) for t in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a comma list of numbers: {text!r}") from None

    return parse


def gray(img) -> np.ndarray:
    """An image as float64 H x W (its first channel when it has several)."""
    img = np.asarray(img, dtype=np.float64)
    return img if img.ndim == 2 else img[..., 0]


def read_split(root: Path, split: str):
    from cellsynth.datasets.canonical import CanonicalDataset

    ds = CanonicalDataset(root / split)
    return [ds[i] for i in range(len(ds))]


def label_tiles(samples, res: int, tile: int) -> list[np.ndarray]:
    from cellsynth.tools.codec import label_tiles as tiles

    return tiles((s.labels for s in samples), res, tile)


def near_duplicate_share(labels_list, limit: int = 300, iou: float = 0.5) -> float:
    """Diversity: the share of pairs of tiles (the first ``limit``) whose foregrounds overlap
    with IoU above ``iou``. Real DSB2018 train tiles: about 0.0002; a generator that repeats
    its layouts (mode collapse) scores far higher, whatever its per-object figures."""
    tiles = list(labels_list)[:limit]
    if len(tiles) < 2:
        return 0.0
    f = np.stack([np.asarray(t) > 0 for t in tiles]).reshape(len(tiles), -1).astype(np.float32)
    inter = f @ f.T
    area = f.sum(1)
    union = area[:, None] + area[None] - inter
    ratio = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    upper = np.triu_indices(len(tiles), 1)
    return float((ratio[upper] > iou).mean())


def touching_fraction(labels_list) -> float:
    """Fraction of objects with a pixel 8-adjacent to a pixel of another object."""
    from cellsynth.tools.labels import touching_objects

    total = touching = 0
    for lab in labels_list:
        n = int(lab.max(initial=0))
        if n == 0:
            continue
        ids = np.unique(lab[lab > 0])
        total += len(ids)
        touching += len(touching_objects(lab))
    return touching / total if total else 0.0


def mask_figures(args, train, test) -> dict:
    from cellsynth.stylegan3.generate import MaskGenerator
    from cellsynth.stylegan3.metrics import realism

    gen = MaskGenerator.load(args.masks, fp32=args.fp32)
    res = gen.resolution
    real_test = label_tiles(test, res, args.tile)
    real_train = label_tiles(train, res, args.tile)
    t0 = time.perf_counter()
    fake, first = [], None
    seeds = list(range(args.num))
    opts = {"min_size": args.min_size, "marker_thresh": args.marker_thresh}
    for i in range(0, len(seeds), 50):
        x = gen.generate(
            seeds[i : i + 50], batch=25, trunc=args.trunc, debias=args.debias, decode_opts=opts
        )
        first = gen.to_uint8(x[:16]) if first is None else first
        fake += gen.decode(x, **opts)
    gen_s = time.perf_counter() - t0
    if args.grid_dir:
        write_mask_grid(Path(args.grid_dir) / "masks_real_vs_generated.png", real_test, first)
    ref = realism(real_test, real_train)
    got = realism(real_test, fake)
    out = {
        "generator": str(args.masks),
        "resolution": res,
        "scale": res / args.tile,
        "precision": gen.config.get("precision"),
        "trunc": gen.trunc_for(args.trunc),
        "debias": gen.debiases(args.debias),
        "num_generated": len(fake),
        "num_real_test_tiles": len(real_test),
        "num_real_train_tiles": len(real_train),
        "generate_decode_s": round(gen_s, 1),
        "decode": gen.decode_kwargs(min_size=args.min_size, marker_thresh=args.marker_thresh),
    }
    out["objects_per_tile"] = {
        "real_test": got["objects_per_image_real"],
        "generated": got["objects_per_image_fake"],
        "real_train": ref["objects_per_image_fake"],
    }
    out["mean_area"] = {
        "real_test": got["mean_area_real"],
        "generated": got["mean_area_fake"],
        "real_train": ref["mean_area_fake"],
    }
    out["touching_fraction"] = {
        "real_test": touching_fraction(real_test),
        "generated": touching_fraction(fake),
        "real_train": touching_fraction(real_train),
    }
    out["edge_objects_per_tile"] = {
        "real_test": got["edge_objects_per_image_real"],
        "generated": got["edge_objects_per_image_fake"],
        "real_train": ref["edge_objects_per_image_fake"],
    }
    out["near_duplicate_share"] = {
        "real_test": near_duplicate_share(real_test),
        "generated": near_duplicate_share(fake),
        "real_train": near_duplicate_share(real_train),
    }
    goals = {}
    for key in ("objects_per_tile", "mean_area", "touching_fraction"):
        real, g = out[key]["real_test"], out[key]["generated"]
        rel = abs(g - real) / real if real else float("inf")
        out[key]["rel_diff"] = round(rel, 3)
        goals[key] = bool(rel <= (0.25 if key == "touching_fraction" else 0.15))
    w1 = {}
    for f in ("area", "perimeter", "eccentricity", "solidity", "count"):
        g, r = got[f"w1_{f}"], ref[f"w1_{f}"]
        ratio = None if g is None or not r else g / r
        w1[f] = {"generated": g, "train_ref": r, "ratio": ratio}
        goals[f"w1_{f}"] = bool(ratio is not None and ratio <= 1.2)
    out["w1"] = w1
    out["goals_met"] = goals
    if gen.num_classes and gen.classes:
        out["per_class"] = per_class_figures(gen, test, fake, args)
    return out


def per_class_figures(gen, test, fake, args) -> dict:
    """A conditional generator: per class, its share, objects per tile and mean area of the
    generated tiles against the real test tiles of the images of that class (the class
    ``dataset pack --cond nucleus_size`` gives an image)."""
    from cellsynth.datasets.pack import size_class

    drawn = gen.seed_classes(list(range(len(fake))))
    real_by_class = {
        name: label_tiles(
            [s for s in test if size_class(s.labels) == name], gen.resolution, args.tile
        )
        for name in gen.classes
    }
    total_real = max(sum(len(v) for v in real_by_class.values()), 1)
    out = {}
    for k, name in enumerate(gen.classes):
        real = real_by_class[name]
        mine = [f for f, c in zip(fake, drawn) if c == k]
        row = {"share_generated": round(len(mine) / max(len(fake), 1), 3)}
        row["share_real_test"] = round(len(real) / total_real, 3)
        for key, tiles in (("real_test", real), ("generated", mine)):
            n = [int(t.max(initial=0)) for t in tiles]
            areas = np.concatenate([np.bincount(t.ravel())[1:] for t in tiles] or [np.zeros(0)])
            areas = areas[areas > 0]
            row[f"objects_per_tile_{key}"] = round(float(np.mean(n)), 2) if n else None
            row[f"mean_area_{key}"] = round(float(areas.mean()), 1) if areas.size else None
        out[name] = row
    return out


def image_intensities(img, lab) -> tuple[np.ndarray, np.ndarray]:
    """(each nucleus's mean intensity, the mean background intensity as a 0- or 1-vector) of
    one image and its instance labels."""
    img = gray(img)
    ids = np.asarray(lab).ravel()
    sums = np.bincount(ids, weights=img.ravel())
    cnt = np.bincount(ids)
    keep = cnt[1:] > 0
    bg = img[lab == 0]
    return sums[1:][keep] / cnt[1:][keep], np.asarray([bg.mean()] if bg.size else [])


def intensities(pairs) -> tuple[np.ndarray, np.ndarray]:
    """(every nucleus's mean intensity, every image's mean background intensity) of
    (image, instance labels) pairs."""
    per = [image_intensities(img, lab) for img, lab in pairs]
    return tuple(np.concatenate([p[k] for p in per] or [np.zeros(0)]) for k in (0, 1))


def same_size_distances(real, per_train, k: int, draws: int = 1000, seed: int = 0) -> np.ndarray:
    """The real-vs-real distance at the sample size of the translated set, ``draws`` times.

    The reference of the goal compares all the train images with the test images; the
    translated set has only as many images as the test split, so its distance carries the
    noise of that smaller sample. Here ``k`` train images (as many as the translated set has)
    are drawn ``draws`` times (seeded, without replacement) and each draw's distribution is
    compared with the test images' (``real``: the measure of the test images; ``per_train``:
    the same measure of each train image, a list of arrays).
    """
    from scipy.stats import wasserstein_distance

    n = len(per_train)
    rng = np.random.default_rng(seed)
    return np.asarray(
        [
            wasserstein_distance(
                real, np.concatenate([per_train[i] for i in rng.choice(n, k, False)])
            )
            for _ in range(draws)
        ]
    )


def matched_reference(dist: np.ndarray, got: float) -> dict:
    """The 10th, 50th and 90th percentiles of the :func:`same_size_distances` ``dist``, the
    translated set's distance ``got`` as a ratio to their median, and the share of draws of
    real images that came closer to the test images than the translated set did."""
    q10, q50, q90 = np.percentile(dist, [10, 50, 90])
    return {
        "draws": len(dist),
        "w1_q10": round(float(q10), 3),
        "w1_median": round(float(q50), 3),
        "w1_q90": round(float(q90), 3),
        "ratio_to_median": round(float(got / q50), 3) if q50 else None,
        "share_of_real_draws_closer": round(float((dist < got).mean()), 3),
    }


def translate_all(tr, truth) -> list[np.ndarray]:
    """Each instance map translated, the i-th with seed i (a translator that draws encoded
    features gets a different draw per image, as synth's seeds give it)."""
    return [
        tr.translate((lab > 0).astype(np.uint8), lab.astype(np.uint16), seed=i)
        for i, lab in enumerate(truth)
    ]


def image_figures(args, train, test, variants) -> dict[str, dict]:
    """The image figures of each ``(key, dechecker, margin, blur)`` variant of the translator
    (blur None: the file's); what the real images give (the classical probe, the intensity
    distributions, the trained probes' predictions) is computed once for all of them."""
    from scipy.stats import wasserstein_distance

    from cellsynth.benchmark.segmenters import make_segmenter
    from cellsynth.benchmark.segmenters._fitting import pooled_ap50
    from cellsynth.pix2pixhd.translator import Translator

    probe = make_segmenter("classical")
    truth = [s.labels for s in test]
    real_images = [s.image for s in test]
    ap_real = pooled_ap50(truth, [probe.predict(gray(im)) for im in real_images])
    n_real, b_real = intensities(zip(real_images, truth))
    per_train = [image_intensities(s.image, s.labels) for s in train]
    n_tr, b_tr = (np.concatenate([p[k] for p in per_train]) for k in (0, 1))
    # the same-size reference depends on the real images only: drawn once for every variant
    same_size = [
        same_size_distances(real, [p[j] for p in per_train], len(truth))
        for j, real in enumerate((n_real, b_real))
    ]
    trained = [load_probe(spec, real_images) for spec in args.probe_model]
    tr = Translator.load(args.images, appearance=args.appearance)
    results = {}
    recorded = tr.blur
    for key, dechecker, margin, blur in variants:
        tr.dechecker, tr.margin = dechecker, margin
        tr.blur = recorded if blur is None else blur
        t0 = time.perf_counter()
        synth = translate_all(tr, truth)
        tr_s = time.perf_counter() - t0
        ap_synth = pooled_ap50(truth, [probe.predict(gray(im)) for im in synth])
        n_syn, b_syn = intensities(zip(synth, truth))
        out = {
            "translator": str(args.images),
            "dechecker": tr.dechecker_period,
            "margin": tr.margin,
            "blur": tr.blur,
            "appearance": tr.appearance,
            "num_test_images": len(test),
            "translate_s": round(tr_s, 1),
            "probe": "classical (default options)",
            "probe_ap50_real": round(ap_real, 4),
            "probe_ap50_translated": round(ap_synth, 4),
            "probe_ratio": round(ap_synth / ap_real, 4) if ap_real else None,
        }
        goals = {"probe_ratio": bool(ap_real and ap_synth / ap_real >= 0.95)}
        for name, folder, seg in trained:
            ratio = trained_probe(folder, seg, synth, real_images, truth)
            out[f"probe_{name}"] = ratio
            goals[f"probe_ratio_{name}"] = bool(ratio["ratio"]["ap50"] >= 0.95)
        for j, (name, real, syn, ref) in enumerate(
            (
                ("nucleus_mean_intensity", n_real, n_syn, n_tr),
                ("background_intensity", b_real, b_syn, b_tr),
            )
        ):
            d, r = wasserstein_distance(real, syn), wasserstein_distance(real, ref)
            out[name] = {
                "real_test_mean": round(float(real.mean()), 2),
                "translated_mean": round(float(syn.mean()), 2),
                "real_train_mean": round(float(ref.mean()), 2),
                "w1_translated": round(float(d), 3),
                "w1_train_ref": round(float(r), 3),
                "ratio": round(float(d / r), 3) if r else None,
                "same_size_ref": {
                    "images_per_draw": len(truth),
                    **matched_reference(same_size[j], d),
                },
            }
            goals[name] = bool(r and d / r <= 1.2)
        out["goals_met"] = goals
        if args.grid_dir:
            name = "images_test_grid.png" if key == "images" else f"{key}_test_grid.png"
            write_image_grid(Path(args.grid_dir) / name, test, synth)
        results[key] = out
    return results


def write_mask_grid(path: Path, real_tiles, generated, n: int = 16, zoom: int = 3) -> None:
    """Two blocks of n tiles, encoded as the generator sees them (R foreground, G boundary, B
    distance): real test tiles on top (every len/n-th), generated tiles (seeds 0..n-1) below."""
    from cellsynth.datasets.io import write_image
    from cellsynth.tools.codec import encode_mask

    step = max(1, len(real_tiles) // n)
    real = [encode_mask(t, "fbd") for t in real_tiles[::step][:n]]
    gen = [np.moveaxis(g, 0, -1) if g.shape[0] in (1, 3) else g for g in generated[:n]]
    res = real[0].shape[0]
    cols = 8

    def block(tiles):
        rows = []
        for r in range(0, len(tiles), cols):
            row = np.zeros((res, cols * (res + 2), 3), np.uint8)
            for k, t in enumerate(tiles[r : r + cols]):
                row[:, k * (res + 2) : k * (res + 2) + res] = t
            rows.append(row)
        return np.concatenate(rows, axis=0)

    sep = np.full((4, cols * (res + 2), 3), 255, np.uint8)
    grid = np.concatenate([block(real), sep, block(gen)], axis=0)
    grid = grid.repeat(zoom, axis=0).repeat(zoom, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, grid)


def write_image_grid(path: Path, test, synth, n: int = 6, crop: int = 256) -> None:
    """mask | real | translated, one row per test image (top-left crops)."""
    from cellsynth.datasets.io import write_image

    rows = []
    for s, im in list(zip(test, synth))[:n]:
        lab = s.labels[:crop, :crop]
        real = np.asarray(s.image)[:crop, :crop]
        syn = np.asarray(im)[:crop, :crop]
        real = real if real.ndim == 2 else real[..., 0]
        syn = syn if syn.ndim == 2 else syn[..., 0]
        h, w = lab.shape
        cells = [
            np.where(lab > 0, 255, 0).astype(np.uint8),
            real.astype(np.uint8),
            syn.astype(np.uint8),
        ]
        row = np.zeros((crop, 3 * crop + 8), np.uint8)
        for k, c in enumerate(cells):
            row[:h, k * (crop + 4) : k * (crop + 4) + w] = c
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, np.concatenate(rows, axis=0))


class RealOnce:
    """A segmenter whose predictions on the real test images (the same arrays every time) are
    made once and reused for every translator variant's paired fidelity."""

    def __init__(self, seg, real_images):
        self.seg, self.real = seg, {id(im) for im in real_images}
        self.cache: dict[int, np.ndarray] = {}

    def predict(self, image):
        key = id(image)
        if key not in self.real:
            return self.seg.predict(image)
        if key not in self.cache:
            self.cache[key] = self.seg.predict(image)
        return self.cache[key]


def load_probe(spec: str, real_images) -> tuple[str, str, RealOnce]:
    """``NAME=DIR``: the segmenter ``NAME`` saved in ``DIR`` (e.g. the model folder a
    ``perf/segmenters_learn.py`` run keeps), loaded once."""
    from cellsynth.benchmark.segmenters import get_segmenter_class

    name, _, folder = spec.partition("=")
    if not folder:
        raise SystemExit(f"--probe-model wants NAME=DIR, got {spec!r}")
    return name, folder, RealOnce(get_segmenter_class(name).load(folder), real_images)


def trained_probe(folder, seg, synth, real_images, truth) -> dict:
    """A trained probe scored on the translated and the real test images against the same
    masks (paired fidelity, with its paired-bootstrap interval)."""
    from cellsynth.benchmark.validity import paired_fidelity

    res = paired_fidelity(synth, real_images, truth, seg)
    keep = ("n_images", "translated", "real", "ratio", "ratio_ci")
    return {"model": folder, **{k: res[k] for k in keep}}


def main():
    from cellsynth.pix2pixhd.clusters import APPEARANCE_CHOICES
    from cellsynth.stylegan3.generate import DEBIAS_CHOICES

    ap = argparse.ArgumentParser()
    ap.add_argument("--masks", default="dsb2018-nuclei")
    ap.add_argument("--images", default="dsb2018-nuclei")
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/dsb2018-fluo"))
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--tile", type=int, default=128, help="crop size before the down-scaling")
    ap.add_argument("--min-size", type=int, default=0, help="decode: drop smaller objects")
    ap.add_argument("--fp32", action="store_true", help="generate in float32 (default: mixed)")
    ap.add_argument(
        "--debias",
        default="auto",
        choices=DEBIAS_CHOICES,
        help="undo the generator's crowded-tile repeats (default: when its file records them)",
    )
    ap.add_argument(
        "--trunc", type=float, default=None, help="truncation psi (default: the network's own)"
    )
    ap.add_argument(
        "--marker-thresh", type=float, default=None, help="decoder seed level (default: the file's)"
    )
    ap.add_argument(
        "--dechecker",
        choices=("both", "on", "off"),
        default="both",
        help="images: with the translator's checkerboard filter, without, or both side by side",
    )
    ap.add_argument(
        "--margin",
        type=comma_list(int),
        default=None,
        help="images: the translator's mirrored margins to measure, comma-separated (default: "
        "synth's)",
    )
    ap.add_argument(
        "--blur",
        type=comma_list(float),
        default=None,
        help="images: the translator's last smoothing (Gaussian sigma, px) to measure, "
        "comma-separated (default: the one the file records)",
    )
    ap.add_argument(
        "--appearance",
        choices=APPEARANCE_CHOICES,
        default="auto",
        help="a translator with encoded features: how it draws them (synth --appearance)",
    )
    ap.add_argument("--skip-masks", action="store_true")
    ap.add_argument("--skip-images", action="store_true")
    ap.add_argument("--grid-dir", default=None)
    ap.add_argument(
        "--probe-model",
        action="append",
        default=[],
        help="NAME=DIR: a trained segmenter saved in DIR, as a second probe (repeatable)",
    )
    args = ap.parse_args()
    from cellsynth.precision import cpu_kind

    data = Path(args.data)
    train, test = read_split(data, "train"), read_split(data, "test")
    out = {"data": str(data), "cpu": cpu_kind()}
    if not args.skip_masks:
        out["masks"] = mask_figures(args, train, test)
    if not args.skip_images:
        from cellsynth.pix2pixhd.translator import DEFAULT_MARGIN

        keep = {"both": (True, False), "on": (True,), "off": (False,)}[args.dechecker]
        variants = []
        for blur in args.blur or [None]:
            for margin in args.margin or [DEFAULT_MARGIN]:
                for on in keep:
                    key = "images" + ("" if on else "_no_dechecker")
                    key += "" if margin == DEFAULT_MARGIN else f"_margin{margin}"
                    key += "" if blur is None else f"_blur{blur:g}"
                    variants.append((key, on, margin, blur))
        out.update(image_figures(args, train, test, variants))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
