"""Quality metrics of a mask generator.

- FID and KID on Inception-v3 pool features (2048-D). The Inception weights cannot be
  downloaded here: give a torchvision ``inception_v3`` state dict with ``--inception PATH`` or
  the environment variable ``CELLSYNTH_INCEPTION``.
- Mask realism, which needs no pretrained network: generated and real masks are decoded to
  instances and the distributions of per-object morphology (area, perimeter, eccentricity,
  solidity) and of objects per image are compared with the 1-D Wasserstein distance divided by
  the real spread (standard deviation), plus the Kolmogorov-Smirnov statistic.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cellsynth.errors import CellsynthError

MORPHOLOGY = ("area", "perimeter", "eccentricity", "solidity")
INCEPTION_HELP = (
    "FID/KID need Inception-v3 weights: save torchvision's inception_v3 ImageNet weights "
    "(torchvision.models.Inception_V3_Weights.IMAGENET1K_V1, file inception_v3_google-0cc3c7bd.pth, "
    "from https://download.pytorch.org/models/) and pass --inception PATH or set CELLSYNTH_INCEPTION"
)


# ---------------------------------------------------------------------------- FID and KID
def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two N x D feature sets.

    ``|mu_r - mu_f|^2 + tr(S_r) + tr(S_f) - 2 tr((S_r S_f)^(1/2))``; the trace of the matrix
    square root is taken from the eigenvalues of ``S_r^(1/2) S_f S_r^(1/2)`` (symmetric PSD).
    """
    real, fake = _features(real, "real"), _features(fake, "fake")
    if real.shape[1] != fake.shape[1]:
        raise CellsynthError(f"feature sizes differ: {real.shape[1]} vs {fake.shape[1]}")
    mu_r, mu_f = real.mean(0), fake.mean(0)
    s_r = np.cov(real, rowvar=False)
    s_f = np.cov(fake, rowvar=False)
    w, v = np.linalg.eigh(s_r)
    sqrt_r = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = sqrt_r @ s_f @ sqrt_r
    ev = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_sqrt = np.sqrt(np.clip(ev, 0, None)).sum()
    return float(np.sum((mu_r - mu_f) ** 2) + np.trace(s_r) + np.trace(s_f) - 2 * tr_sqrt)


def kid_from_features(
    real: np.ndarray,
    fake: np.ndarray,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
) -> float:
    """Kernel inception distance: the unbiased MMD^2 with kernel ``(x.y / d + 1)^3``.

    Averaged over ``num_subsets`` random subsets of ``m = min(n_real, n_fake,
    max_subset_size)`` features from each set (drawn without replacement).
    """
    real, fake = _features(real, "real"), _features(fake, "fake")
    d = real.shape[1]
    m = min(len(real), len(fake), max_subset_size)
    if m < 2:
        raise CellsynthError("KID needs at least 2 real and 2 generated samples")
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = fake[rng.choice(len(fake), m, replace=False)]
        y = real[rng.choice(len(real), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        a = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        total += a - 2 * kxy.mean()
    return float(total / num_subsets)


def _features(x, name) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise CellsynthError(f"{name} features must be N x D with N >= 2, got shape {x.shape}")
    return x


def inception_path(path=None) -> Path:
    """The Inception weights file from ``path`` or ``$CELLSYNTH_INCEPTION``; clear error if absent."""
    path = path or os.environ.get("CELLSYNTH_INCEPTION")
    if not path:
        raise CellsynthError(INCEPTION_HELP)
    path = Path(path)
    if not path.is_file():
        raise CellsynthError(f"{path}: no such Inception weights file. {INCEPTION_HELP}")
    return path


def load_inception(path=None, device="cpu"):
    """Inception-v3 (torchvision layout) from a local state dict, as a pool-feature extractor.

    Returns a callable: uint8 N x C x H x W array/tensor -> float64 N x 2048 numpy features.
    """
    import torch
    import torchvision

    path = inception_path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CellsynthError(
            f"{path}: cannot read Inception weights ({type(exc).__name__}); {INCEPTION_HELP}"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    net = torchvision.models.inception_v3(
        weights=None, aux_logits=True, init_weights=False, transform_input=False
    )
    try:
        net.load_state_dict(state, strict=False)
        missing = set(net.state_dict()) - set(state)
        missing = {k for k in missing if not k.startswith("AuxLogits") and "num_batches" not in k}
        if missing:
            raise RuntimeError(f"missing keys {sorted(missing)[:3]}")
    except Exception as exc:
        raise CellsynthError(
            f"{path}: not a torchvision inception_v3 state dict ({str(exc).splitlines()[0]}); "
            f"{INCEPTION_HELP}"
        ) from None
    net.fc = torch.nn.Identity()
    net.eval().requires_grad_(False).to(device)
    return ImageFeatures(net, size=299, device=device)


class ImageFeatures:
    """Wrap a network mapping N x 3 x S x S normalised images to N x D features.

    Calling it with uint8 N x C x H x W images (C = 1 or 3) resizes to ``size``, repeats a
    single channel to RGB, applies the ImageNet normalisation and returns float64 numpy features.
    """

    def __init__(self, net, size: int = 299, device="cpu", batch: int = 32):
        self.net, self.size, self.device, self.batch = net, size, device, batch

    def __call__(self, images) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        images = torch.as_tensor(np.asarray(images))
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise CellsynthError(f"features need N x 1|3 x H x W images, got {tuple(images.shape)}")
        mean = torch.tensor([0.485, 0.456, 0.406], device=self.device).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], device=self.device).view(1, 3, 1, 1)
        out = []
        with torch.no_grad():
            for chunk in images.split(self.batch):
                x = chunk.to(self.device).float() / 255
                if x.shape[1] == 1:
                    x = x.repeat(1, 3, 1, 1)
                x = F.interpolate(
                    x, size=(self.size, self.size), mode="bilinear", align_corners=False
                )
                out.append(self.net((x - mean) / std).double().cpu())
        return torch.cat(out).numpy()


# ------------------------------------------------------------------------------ realism
def object_features(labels_list) -> dict:
    """Per-object morphology of a list of instance-label images.

    Returns dict: ``area``, ``perimeter``, ``eccentricity``, ``solidity`` and ``edge`` (1 for an
    object that touches the image's edge, else 0) as 1-D arrays over all objects, and ``count``
    (objects per image).
    """
    from skimage.measure import regionprops

    feats = {k: [] for k in (*MORPHOLOGY, "edge")}
    counts = []
    for lab in labels_list:
        lab = np.asarray(lab)
        if lab.ndim != 2:
            raise CellsynthError(f"instance labels must be 2-D, got shape {lab.shape}")
        props = regionprops(lab.astype(np.int64))
        counts.append(len(props))
        h, w = lab.shape
        for p in props:
            feats["area"].append(p.area)
            feats["perimeter"].append(p.perimeter)
            feats["eccentricity"].append(p.eccentricity)
            feats["solidity"].append(p.solidity)
            r0, c0, r1, c1 = p.bbox
            feats["edge"].append(r0 == 0 or c0 == 0 or r1 == h or c1 == w)
    out = {k: np.asarray(v, dtype=np.float64) for k, v in feats.items()}
    out["count"] = np.asarray(counts, dtype=np.float64)
    return out


def realism(real_labels, fake_labels) -> dict:
    """Compare the object morphology of generated masks with real masks.

    Returns a flat dict: for each feature f in area, perimeter, eccentricity, solidity, count:
    ``w1_f`` (Wasserstein-1 distance / real std; None when no object was generated) and
    ``ks_f`` (KS statistic, 1 then); ``w1_mean`` and
    ``ks_mean`` over the features; ``objects_per_image_real/fake``, of them
    ``edge_objects_per_image_real/fake`` (objects cut by the image's edge: a generator whose
    objects keep away from the edges has too few of these), ``mean_area_real/fake``,
    ``num_objects_real/fake``, ``num_images_real/fake``.
    """
    from scipy.stats import ks_2samp, wasserstein_distance

    real, fake = object_features(real_labels), object_features(fake_labels)
    if len(real["area"]) == 0:
        raise CellsynthError("the real masks hold no objects; cannot compare morphology")
    out = {}
    w1s, kss = [], []
    for key in (*MORPHOLOGY, "count"):
        r, f = real[key], fake[key]
        if len(f) == 0:  # nothing generated to compare: W1 undefined, KS at its maximum
            w1, ks = None, 1.0
        else:
            spread = r.std() if r.std() > 0 else 1.0
            w1 = float(wasserstein_distance(r, f) / spread)
            ks = float(ks_2samp(r, f).statistic)
        out[f"w1_{key}"], out[f"ks_{key}"] = w1, ks
        w1s.append(w1)
        kss.append(ks)
    out["w1_mean"] = None if None in w1s else float(np.mean(w1s))
    out["ks_mean"] = float(np.mean(kss))
    for name, d in (("real", real), ("fake", fake)):
        images = len(d["count"])
        out[f"objects_per_image_{name}"] = float(d["count"].mean()) if images else 0.0
        out[f"edge_objects_per_image_{name}"] = float(d["edge"].sum() / images) if images else 0.0
        out[f"mean_area_{name}"] = float(d["area"].mean()) if len(d["area"]) else 0.0
        out[f"num_objects_{name}"] = int(len(d["area"]))
        out[f"num_images_{name}"] = images
    return out


# ------------------------------------------------------------------------------ drivers
def _real_images(data_path, limit=None) -> np.ndarray:
    from cellsynth.datasets.pack import MaskZipDataset

    if not Path(data_path).is_file():
        raise CellsynthError(f"{data_path}: no such masks zip")
    ds = MaskZipDataset(data_path)
    n = len(ds) if limit is None else min(len(ds), limit)
    return np.stack([np.asarray(ds[i][0], dtype=np.uint8) for i in range(n)])


def _fake_images(G, n, device, seed, batch=16, class_sampler=None) -> np.ndarray:
    """uint8 N x C x R x R images of G (z from a seeded generator; const noise)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    c_dim = int(getattr(G, "c_dim", 0))
    out = []
    with torch.no_grad():
        for i in range(0, n, batch):
            k = min(batch, n - i)
            z = torch.randn([k, G.z_dim], generator=g).to(device)
            c = torch.zeros([k, c_dim], device=device)
            if c_dim:
                idx = torch.randint(0, c_dim, [k], generator=g)
                c[torch.arange(k), idx.to(device)] = 1
            img = G.synthesis(G.mapping(z, c, truncation_psi=1), noise_mode="const")
            out.append(((img.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu())
    return torch.cat(out).numpy()


def decode_all(images: np.ndarray, encoding: str) -> list[np.ndarray]:
    """Decode uint8 N x C x R x R encoded masks to instance labels."""
    from cellsynth.tools.codec import decode_mask

    if not encoding:
        raise CellsynthError("mask realism needs the mask encoding (binary or fbd) of the data")
    return [
        decode_mask(im[0] if im.shape[0] == 1 else np.moveaxis(im, 0, -1), encoding)
        for im in images
    ]


def compute_metric(
    name, G, data_path, device="cpu", encoding=None, inception=None, seed=0, num_gen=None
) -> dict:
    """Evaluate metric ``name`` (realism, fid50k_full, kid50k_full, fid5k, kid5k) of ``G``.

    Returns a dict of floats (realism: see :func:`realism`; FID/KID: ``{"fid": x}``/``{"kid": x}``).
    """
    if name == "realism":
        reals = _real_images(data_path)
        n = num_gen or int(min(max(len(reals), 64), 1000))
        fakes = _fake_images(G, n, device, seed)
        return realism(decode_all(reals, encoding), decode_all(fakes, encoding))
    if name in ("fid50k_full", "kid50k_full", "fid5k", "kid5k"):
        feat = load_inception(inception, device=device)
        reals = _real_images(data_path)
        n = num_gen or (50000 if "50k" in name else 5000)
        f_real = feat(reals)
        f_fake = np.concatenate(
            [feat(_fake_images(G, min(1000, n - i), device, seed + i)) for i in range(0, n, 1000)]
        )
        if name.startswith("fid"):
            return {"fid": fid_from_features(f_real, f_fake)}
        return {"kid": kid_from_features(f_real, f_fake, seed=seed)}
    raise CellsynthError(f"unknown metric {name!r}")
