"""Per-cell appearance features and their k-means clusters (multimodal, controllable output).

After training with ``--instance_feat`` (or ``--label_feat``), the encoder turns every training
image into one ``feat_num``-vector per instance (per semantic region with ``label_feat``);
the vectors of each semantic class are clustered with k-means (``n_clusters``), and at test
time each instance gets a cluster centre of its class drawn with a seed. Saved as
``clusters.npz`` (arrays ``class_<id>``: k x feat_num float32) + ``clusters.json`` — no pickle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cellsynth.atomic import atomic_path, file_sha256, write_text
from cellsynth.errors import CellsynthError
from cellsynth.pix2pixhd.checkpoints import resolve_checkpoint


def region_classes(regions: np.ndarray, labels: np.ndarray):
    """Ids of the regions of ``regions`` (sorted), the inverse index of every pixel, and each
    region's semantic class (the most frequent label inside it).

    Args: ``regions``, ``labels``: H x W integer arrays. Returns (ids, inverse (H x W), classes).
    """
    regions = np.asarray(regions)
    labels = np.asarray(labels).astype(np.int64)
    ids, inverse = np.unique(regions, return_inverse=True)
    inverse = inverse.reshape(regions.shape)
    n_cls = int(labels.max()) + 1 if labels.size else 1
    counts = np.zeros((len(ids), n_cls), np.int64)
    np.add.at(counts, (inverse.ravel(), labels.ravel()), 1)
    return ids, inverse, counts.argmax(axis=1)


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 100) -> np.ndarray:
    """k-means (k-means++ start, Lloyd iterations) of the rows of ``x``; returns k x D centres.

    ``k`` is lowered to the number of distinct rows. Seeded and deterministic.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise CellsynthError(f"k-means needs a non-empty N x D array, got shape {x.shape}")
    k = int(min(k, len(np.unique(x, axis=0))))
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = np.min(((x[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
        total = d2.sum()
        pick = rng.choice(len(x), p=d2 / total) if total > 0 else rng.integers(len(x))
        centres.append(x[pick])
    centres = np.asarray(centres)
    for _ in range(iters):
        assign = ((x[:, None, :] - centres[None]) ** 2).sum(-1).argmin(axis=1)
        new = centres.copy()
        for j in range(k):
            members = x[assign == j]
            if len(members):
                new[j] = members.mean(axis=0)
        if np.allclose(new, centres):
            break
        centres = new
    return centres.astype(np.float32)


def save_clusters(path: str | os.PathLike, clusters: dict[int, np.ndarray], info: dict) -> Path:
    """Write ``clusters.npz`` (+ ``clusters.json`` beside it) atomically."""
    path = Path(path)
    arrays = {f"class_{int(c)}": np.asarray(v, np.float32) for c, v in clusters.items()}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    meta = dict(info, classes={str(c): int(len(v)) for c, v in clusters.items()})
    write_text(path.with_suffix(".json"), json.dumps(meta, indent=2))
    return path


def load_clusters(path: str | os.PathLike, feat_num: int | None = None) -> dict[int, np.ndarray]:
    """Read what :func:`save_clusters` wrote: {class id: k x feat_num float32}."""
    path = Path(path)
    if not path.is_file():
        raise CellsynthError(
            f"{path}: no feature clusters; run `cellsynth pix2pixhd clusters --name NAME` first"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            table = {int(k.split("_", 1)[1]): z[k].astype(np.float32) for k in z.files}
    except Exception as exc:
        raise CellsynthError(f"{path}: unreadable clusters file ({type(exc).__name__})") from None
    for c, v in table.items():
        if v.ndim != 2 or (feat_num is not None and v.shape[1] != feat_num):
            raise CellsynthError(
                f"{path}: class {c} clusters have shape {v.shape}, expected k x {feat_num}"
            )
    return table


def compute_clusters(
    run: str | os.PathLike,
    which_epoch: str | int = "latest",
    dataroot: str | None = None,
    split: str = "train",
    n_clusters: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """Encode every ``split`` image of the pairs folder, cluster the per-region features of
    each class and save them (default: ``clusters.npz`` in the run folder). Returns the path."""
    import torch
    from tqdm import tqdm

    from cellsynth.pix2pixhd import data as p2p_data
    from cellsynth.pix2pixhd.networks import build_encoder
    from cellsynth.pix2pixhd.options import Options
    from cellsynth.training.checkpoint import load_checkpoint

    ckpt_path = resolve_checkpoint(run, which_epoch)
    ckpt = load_checkpoint(ckpt_path, kind="pix2pixhd")
    opt = Options.from_dict(ckpt["config"]["opt"])
    if not opt.use_features:
        raise CellsynthError(
            f"{ckpt_path}: this model has no feature encoder (train with --instance_feat or "
            "--label_feat to use clusters)"
        )
    encoder = build_encoder(opt)
    encoder.load_state_dict(ckpt["E"])
    encoder.eval().requires_grad_(False).to(device)
    dataset = p2p_data.open_pairs(dataroot or opt.dataroot, split)
    per_class: dict[int, list[np.ndarray]] = {}
    with torch.no_grad():
        for i in tqdm(range(len(dataset)), desc="encoding", disable=not progress):
            batch = p2p_data.load_batch(dataset, [i], opt, 0, train=False)
            label, inst = batch["label"], batch["inst"]
            regions = p2p_data.feature_regions(label, inst, opt)
            feat = encoder(batch["image"].to(device), regions.to(device))[0].cpu().numpy()
            ids, inverse, classes = region_classes(regions[0].numpy(), label[0].numpy())
            flat = feat.reshape(feat.shape[0], -1)
            first_pixel = np.unique(inverse.ravel(), return_index=True)[1]
            for k, cls_id in enumerate(classes):
                per_class.setdefault(int(cls_id), []).append(flat[:, first_pixel[k]])
    k = int(n_clusters or opt.n_clusters)
    clusters = {c: kmeans(np.stack(v), k, seed) for c, v in sorted(per_class.items())}
    out = Path(out) if out else ckpt_path.parent / "clusters.npz"
    info = {
        "checkpoint": ckpt_path.name,
        "checkpoint_sha256": file_sha256(ckpt_path),
        "feat_num": opt.feat_num,
        "n_clusters": k,
        "seed": seed,
        "split": split,
        "regions": "instances" if opt.instance_feat else "labels",
    }
    return save_clusters(out, clusters, info)
