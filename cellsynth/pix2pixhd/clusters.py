"""Per-cell appearance features: their k-means clusters and the bank of training images.

After training with ``--instance_feat`` (or ``--label_feat``), the encoder turns every training
image into one ``feat_num``-vector per instance (per semantic region with ``label_feat``).
Two ways to give a new map its features (:data:`APPEARANCE`):

- ``clusters`` (the original Pix2PixHD): the vectors of each semantic class are clustered with
  k-means (``n_clusters``) and each region gets a cluster centre of its class, drawn on its own.
- ``image``: one training image is drawn for the whole map, and each region gets the vector of
  a region of the same class in that image. Cells of one image share their stain and exposure,
  and the image's background comes with them, so the images keep the training set's spread of
  brightness from image to image and its coherence within an image.

Saved as ``clusters.npz`` (arrays ``class_<id>``: k x feat_num float32, and the bank:
``bank_features`` R x feat_num, ``bank_classes`` and ``bank_images`` R) + ``clusters.json`` —
no pickle. An exported translator carries the same arrays in its weights file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
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


APPEARANCE = ("image", "clusters")
APPEARANCE_CHOICES = ("auto", *APPEARANCE)  # what callers may ask for; auto: image with a bank
BANK_KEYS = ("bank_features", "bank_classes", "bank_images")


@dataclass
class Appearance:
    """The features a feature model draws from: k-means centres per class and, optionally, the
    bank of every training region (its vector, class and image)."""

    clusters: dict[int, np.ndarray]
    bank_features: np.ndarray | None = None
    bank_classes: np.ndarray | None = None
    bank_images: np.ndarray | None = None
    _members: dict = field(default=None, init=False, repr=False, compare=False)

    @property
    def has_bank(self) -> bool:
        return self.bank_features is not None and len(self.bank_features) > 0

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays :meth:`from_arrays` reads (the npz keys)."""
        out = {f"class_{int(c)}": np.asarray(v, np.float32) for c, v in self.clusters.items()}
        if self.has_bank:
            out["bank_features"] = np.asarray(self.bank_features, np.float32)
            out["bank_classes"] = np.asarray(self.bank_classes, np.int32)
            out["bank_images"] = np.asarray(self.bank_images, np.int32)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict, feat_num: int | None, where) -> Appearance:
        """Check and wrap arrays (numpy or torch) keyed as :meth:`arrays` writes them."""
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        unknown = [
            k
            for k in arrays
            if k not in BANK_KEYS and not (k.startswith("class_") and k[6:].isdigit())
        ]
        if unknown:
            raise CellsynthError(f"{where}: unknown appearance arrays {', '.join(unknown)}")
        table = {}
        for key in (k for k in arrays if k.startswith("class_")):
            v = arrays[key].astype(np.float32)
            if v.ndim != 2 or (feat_num is not None and v.shape[1] != feat_num):
                raise CellsynthError(
                    f"{where}: class {key[6:]} clusters have shape {v.shape}, expected k x "
                    f"{feat_num}"
                )
            table[int(key[6:])] = v
        present = [k for k in BANK_KEYS if k in arrays]
        if not present:
            return cls(table)
        if len(present) != len(BANK_KEYS):
            raise CellsynthError(f"{where}: the feature bank needs {', '.join(BANK_KEYS)}")
        feats = arrays["bank_features"].astype(np.float32)
        classes = arrays["bank_classes"].astype(np.int64)
        images = arrays["bank_images"].astype(np.int64)
        rows = len(feats)
        if (
            feats.ndim != 2
            or (feat_num is not None and feats.shape[1] != feat_num)
            or classes.shape != (rows,)
            or images.shape != (rows,)
        ):
            raise CellsynthError(
                f"{where}: the feature bank's arrays disagree (features {feats.shape}, classes "
                f"{classes.shape}, images {images.shape}; feat_num {feat_num})"
            )
        return cls(table, feats, classes, images)

    def members(self) -> dict[int, dict[int, np.ndarray]]:
        """{training image: {class: bank rows}} (built once)."""
        if self._members is None:
            groups: dict[int, dict[int, list]] = {}
            for row, (img, cls_id) in enumerate(zip(self.bank_images, self.bank_classes)):
                groups.setdefault(int(img), {}).setdefault(int(cls_id), []).append(row)
            self._members = {
                img: {c: np.asarray(r) for c, r in by_class.items()}
                for img, by_class in sorted(groups.items())
            }
        return self._members

    def draw(self, classes, rng: np.random.Generator, mode: str = "image") -> list:
        """A feature vector (or None: no features for that class) for each region of a map,
        given the regions' classes in order; ``mode`` one of :data:`APPEARANCE`. ``image``
        draws one training image holding every class the map needs (with no such image, or no
        bank, it draws as ``clusters`` does)."""
        if mode not in APPEARANCE:
            raise CellsynthError(f"unknown appearance {mode!r}; use one of {', '.join(APPEARANCE)}")
        classes = [int(c) for c in classes]
        if mode == "image" and self.has_bank:
            need = set(classes)
            images = [i for i, by in self.members().items() if need <= set(by)]
            if images:
                by_class = self.members()[images[int(rng.integers(len(images)))]]
                picks = []
                for c in classes:
                    rows = by_class[c]
                    picks.append(self.bank_features[rows[int(rng.integers(len(rows)))]])
                return picks
        picks = []
        for c in classes:
            centres = self.clusters.get(c)
            if centres is None or len(centres) == 0:
                picks.append(None)
            else:
                picks.append(centres[int(rng.integers(len(centres)))])
        return picks


def save_clusters(
    path: str | os.PathLike, clusters: dict[int, np.ndarray] | Appearance, info: dict
) -> Path:
    """Write ``clusters.npz`` (+ ``clusters.json`` beside it) atomically; ``clusters`` a table
    of centres per class or an :class:`Appearance` (with its bank)."""
    path = Path(path)
    table = clusters if isinstance(clusters, Appearance) else Appearance(dict(clusters))
    arrays = table.arrays()
    clusters = table.clusters
    if table.has_bank:
        info = dict(
            info,
            bank_regions=int(len(table.bank_features)),
            bank_images=int(len(np.unique(table.bank_images))),
        )
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    meta = dict(info, classes={str(c): int(len(v)) for c, v in clusters.items()})
    write_text(path.with_suffix(".json"), json.dumps(meta, indent=2))
    return path


def load_clusters(path: str | os.PathLike, feat_num: int | None = None) -> dict[int, np.ndarray]:
    """Read the centres :func:`save_clusters` wrote: {class id: k x feat_num float32}."""
    return load_appearance(path, feat_num).clusters


def load_appearance(path: str | os.PathLike, feat_num: int | None = None) -> Appearance:
    """Read what :func:`save_clusters` wrote: the centres and, when saved, the bank."""
    path = Path(path)
    if not path.is_file():
        raise CellsynthError(
            f"{path}: no feature clusters; run `cellsynth pix2pixhd clusters --name NAME` first"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:
        raise CellsynthError(f"{path}: unreadable clusters file ({type(exc).__name__})") from None
    return Appearance.from_arrays(arrays, feat_num, path)


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
    bank_rows, bank_classes, bank_images = [], [], []
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
                vector = flat[:, first_pixel[k]]
                per_class.setdefault(int(cls_id), []).append(vector)
                bank_rows.append(vector)
                bank_classes.append(int(cls_id))
                bank_images.append(i)
    k = int(n_clusters or opt.n_clusters)
    clusters = Appearance(
        {c: kmeans(np.stack(v), k, seed) for c, v in sorted(per_class.items())},
        np.stack(bank_rows).astype(np.float32),
        np.asarray(bank_classes),
        np.asarray(bank_images),
    )
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
