"""Gaussian fluorescent puncta (spots) inside cells, with their exact ground truth.

Per cell a number of spots (Poisson with a mean, or fixed) is placed around the cell centroid
by a 2-D Gaussian: isotropic (``sigma``), stretched like the cell itself (the covariance of its
pixels, times ``scale**2``), or a user 2 x 2 covariance matrix. Spots falling outside their
cell are redrawn (a bounded number of rounds, then placed uniformly in the cell), so every spot
lies in its own cell. Each spot gets an intensity from a distribution, and
:func:`render_spots` draws them as pixel-integrated Gaussian PSFs whose pixel sum equals the
intensity (up to the mass truncated beyond ``truncate`` sigmas or outside the image).

Coordinates: ``x`` is the column, ``y`` the row; pixel ``(r, c)`` covers
``[r - 0.5, r + 0.5) x [c - 0.5, c + 0.5)``, so integer coordinates are pixel centres.
The ground truth is a numpy structured array with fields ``x, y, cell_id, intensity``
(:data:`SPOT_DTYPE`); :func:`spots_to_csv` / :func:`spots_from_csv` convert it to CSV text.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from scipy.special import erf

from cellsynth.errors import CellsynthError, require
from cellsynth.options import normalise, option
from cellsynth.tools.labels import check_labels
from cellsynth.tools.parse import parse_matrix

SPOT_DTYPE = np.dtype([("x", "f8"), ("y", "f8"), ("cell_id", "u4"), ("intensity", "f8")])
SPREADS = ("isotropic", "shape", "matrix")
COUNT_MODES = ("poisson", "fixed")
INTENSITIES = ("lognormal", "gamma", "uniform", "constant")
CSV_HEADER = "x,y,cell_id,intensity"
PREFIX = "spots_"  # keywords spots_count ..., flags --spots-count ... (synth and tools points)


@dataclass
class PunctaOptions:
    """The puncta options, declared once for ``cellsynth synth`` and ``cellsynth tools points``
    (flags ``--spots-NAME``; see :mod:`cellsynth.options`): where spots go
    (:func:`simulate_spots`) and their PSF (:func:`render_spots`)."""

    count: float = option(3.0, help="Puncta per cell (Poisson mean; exact with --spots-fixed).")
    fixed: bool = option(False, help="Exactly --spots-count per cell (not Poisson).")
    spread: str = option("isotropic", choices=SPREADS, help="Spread around the cell centre.")
    sigma: float = option(2.0, help="Isotropic spread: std (px).")
    scale: float = option(0.5, help="Shape spread: factor on the cell's own std.")
    matrix: list | None = option(
        None, text=True, help="Covariance sxx,sxy,syx,syy for --spots-spread matrix."
    )
    intensity: str = option("lognormal", choices=INTENSITIES, help="Intensity distribution.")
    intensity_mean: float = option(3.0, help="Mean integrated intensity of a punctum.")
    intensity_spread: float = option(0.3, help="Coefficient of variation of the intensities.")
    psf_sigma: float = option(1.0, aliases=("psf",), help="PSF sigma (px).")

    def check(self) -> PunctaOptions:
        """Convert (a matrix given as text, numbers given as text) and check, in place; raise
        CellsynthError naming the flag. Returns self."""
        if isinstance(self.matrix, str):
            self.matrix = parse_matrix(self.matrix, "--spots-matrix")
        elif self.matrix is not None:
            m = np.asarray(self.matrix, dtype=float)
            require(m.size == 4, f"--spots-matrix must be 2 x 2, got {m.tolist()}")
            self.matrix = m.reshape(2, 2).tolist()
        normalise(self, PREFIX)
        require(self.count >= 0, f"--spots-count must be >= 0, got {self.count}")
        if self.count > 0:  # the placement options, checked once on a tiny mask
            probe = np.zeros((4, 4), np.uint16)
            probe[1:3, 1:3] = 1
            simulate_spots(probe, 0, **self.placement())
        require(
            not self.fixed or float(self.count).is_integer(),
            "--spots-fixed needs an integer --spots-count",
        )
        return self

    def placement(self) -> dict:
        """The keyword arguments of :func:`simulate_spots`."""
        return {
            "count": self.count,
            "count_mode": "fixed" if self.fixed else "poisson",
            "spread": self.spread,
            "sigma": self.sigma,
            "scale": self.scale,
            "matrix": self.matrix,
            "intensity": self.intensity,
            "intensity_mean": self.intensity_mean,
            "intensity_spread": self.intensity_spread,
        }


def cell_moments(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-cell pixel statistics of instance labels.

    Returns:
        ids (K,) present label values > 0, areas (K,), centroids (K, 2) as (y, x), and
        covariances (K, 2, 2) of the pixel coordinates in (y, x) order.
    """
    labels = check_labels(labels, "points")
    flat = labels.ravel().astype(np.int64)
    top = int(flat.max()) if flat.size else 0
    n = top + 1
    yy, xx = np.indices(labels.shape, dtype=np.float64)
    yy, xx = yy.ravel(), xx.ravel()
    area = np.bincount(flat, minlength=n).astype(np.float64)
    ids = np.nonzero(area)[0]
    ids = ids[ids > 0]
    a = area[ids]
    sy = np.bincount(flat, yy, n)[ids] / a
    sx = np.bincount(flat, xx, n)[ids] / a
    cyy = np.bincount(flat, yy * yy, n)[ids] / a - sy * sy
    cxx = np.bincount(flat, xx * xx, n)[ids] / a - sx * sx
    cyx = np.bincount(flat, yy * xx, n)[ids] / a - sy * sx
    cov = np.stack([np.stack([cyy, cyx], -1), np.stack([cyx, cxx], -1)], -2)
    return ids, a, np.stack([sy, sx], -1), cov


def _draw_intensity(rng, n, kind, mean, spread) -> np.ndarray:
    if kind == "constant" or spread == 0:
        return np.full(n, float(mean))
    if kind == "lognormal":  # mean ``mean``, coefficient of variation ``spread``
        s = np.sqrt(np.log1p(spread**2))
        return mean * rng.lognormal(-0.5 * s * s, s, size=n)
    if kind == "gamma":  # mean ``mean``, coefficient of variation ``spread``
        k = 1.0 / spread**2
        return rng.gamma(k, mean / k, size=n)
    # uniform on mean * [1 - spread, 1 + spread]
    return mean * rng.uniform(1.0 - spread, 1.0 + spread, size=n)


def simulate_spots(
    labels: np.ndarray,
    seed: int,
    count: float = 3.0,
    count_mode: str = "poisson",
    spread: str = "isotropic",
    sigma: float = 2.0,
    scale: float = 0.5,
    matrix=None,
    intensity: str = "lognormal",
    intensity_mean: float = 3.0,
    intensity_spread: float = 0.3,
    max_tries: int = 50,
) -> np.ndarray:
    """Place Gaussian-distributed spots inside every cell.

    Args:
        labels: H x W instance labels (0 background).
        seed: integer seed (``numpy.random.default_rng``).
        count: spots per cell: the Poisson mean (``count_mode="poisson"``) or the exact number
            (``"fixed"``, an integer).
        count_mode: "poisson" or "fixed".
        spread: "isotropic" (covariance ``sigma**2 * I``), "shape" (the cell's own pixel
            covariance times ``scale**2``) or "matrix" (``matrix``).
        sigma: standard deviation in pixels for "isotropic".
        scale: factor on the cell's standard deviations for "shape".
        matrix: 2 x 2 symmetric positive semi-definite covariance in (x, y) order, for "matrix".
        intensity: distribution of spot intensities: "lognormal", "gamma" (both with mean
            ``intensity_mean`` and coefficient of variation ``intensity_spread``), "uniform"
            (``intensity_mean * [1 -+ intensity_spread]``) or "constant".
        intensity_mean: mean integrated intensity of one spot (image full-scale units x pixels).
        intensity_spread: see ``intensity``.
        max_tries: rounds of redrawing spots that fell outside their cell; the rest are placed
            uniformly at random inside the cell.

    Returns:
        structured array (:data:`SPOT_DTYPE`) sorted by cell id: x, y, cell_id, intensity.
    """
    labels = check_labels(labels, "points")
    _check_counts(count, count_mode, intensity, intensity_mean, intensity_spread, max_tries)
    _check_spread(spread, sigma, scale, matrix)
    rng = np.random.default_rng(seed)
    ids, area, centroid, cov = cell_moments(labels)
    k = ids.size
    if count_mode == "poisson":
        counts = rng.poisson(float(count), size=k)
    else:
        counts = np.full(k, int(count))
    total = int(counts.sum())
    out = np.zeros(total, dtype=SPOT_DTYPE)
    if total == 0:
        return out
    owner = np.repeat(np.arange(k), counts)  # index into ids of every spot
    if spread == "isotropic":
        covs = np.broadcast_to(np.eye(2) * float(sigma) ** 2, (k, 2, 2))
    elif spread == "shape":
        covs = cov * float(scale) ** 2
    else:
        m = np.asarray(matrix, dtype=np.float64)
        covs = np.broadcast_to(m[::-1, ::-1], (k, 2, 2))  # (x, y) -> (y, x)
    pos = _place(rng, labels, ids, area, centroid, covs, owner, max_tries)
    out["y"] = pos[:, 0]
    out["x"] = pos[:, 1]
    out["cell_id"] = ids[owner]
    out["intensity"] = _draw_intensity(
        rng, total, intensity, float(intensity_mean), float(intensity_spread)
    )
    return out


def _check_counts(count, count_mode, intensity, intensity_mean, intensity_spread, max_tries):
    """Raise CellsynthError for counts or intensities :func:`simulate_spots` cannot use."""
    if count_mode not in COUNT_MODES:
        raise CellsynthError(f"unknown count mode {count_mode!r}; use {', '.join(COUNT_MODES)}")
    if intensity not in INTENSITIES:
        raise CellsynthError(
            f"unknown intensity distribution {intensity!r}; use {', '.join(INTENSITIES)}"
        )
    require(count >= 0, f"spot count must be >= 0, got {count}")
    require(
        count_mode != "fixed" or float(count).is_integer(),
        f"a fixed spot count must be an integer, got {count}",
    )
    require(intensity_mean >= 0, f"intensity mean must be >= 0, got {intensity_mean}")
    require(intensity_spread >= 0, f"intensity spread must be >= 0, got {intensity_spread}")
    require(
        intensity != "uniform" or intensity_spread <= 1,
        "a uniform intensity spread must be <= 1 (intensities stay >= 0)",
    )
    require(int(max_tries) >= 0, "max_tries must be >= 0")


def _check_spread(spread, sigma, scale, matrix) -> None:
    """Raise CellsynthError for a spread :func:`simulate_spots` cannot use."""
    if spread not in SPREADS:
        raise CellsynthError(f"unknown spread {spread!r}; use {', '.join(SPREADS)}")
    if spread == "isotropic":
        require(sigma >= 0, f"sigma must be >= 0, got {sigma}")
    elif spread == "shape":
        require(scale >= 0, f"scale must be >= 0, got {scale}")
    else:
        m = np.asarray(matrix if matrix is not None else [], dtype=np.float64)
        require(m.shape == (2, 2), f"the spread matrix must be 2 x 2, got {m.tolist()}")
        require(np.allclose(m, m.T), f"the spread matrix must be symmetric, got {m.tolist()}")
        require(
            np.linalg.eigvalsh(m).min() >= -1e-12,
            f"the spread matrix must be positive semi-definite, got {m.tolist()}",
        )


def _place(rng, labels, ids, area, centroid, covs, owner, max_tries) -> np.ndarray:
    """(y, x) of every spot: Gaussian around its cell's centroid with covariance ``covs[cell]``,
    redrawn while outside its cell (``max_tries`` rounds), then uniform inside the cell."""
    # Factor each covariance (eigen-decomposition copes with singular ones).
    vals, vecs = np.linalg.eigh(covs)
    factors = vecs * np.sqrt(np.clip(vals, 0, None))[:, None, :]  # (k, 2, 2): cov = F F^T

    total = owner.size
    h, w = labels.shape
    pos = np.zeros((total, 2))
    todo = np.arange(total)
    for _ in range(int(max_tries) + 1):
        if todo.size == 0:
            break
        z = rng.standard_normal((todo.size, 2))
        p = centroid[owner[todo]] + np.einsum("nij,nj->ni", factors[owner[todo]], z)
        r = np.floor(p[:, 0] + 0.5).astype(np.int64)
        c = np.floor(p[:, 1] + 0.5).astype(np.int64)
        inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        ok = np.zeros(todo.size, dtype=bool)
        ok[inside] = labels[r[inside], c[inside]] == ids[owner[todo[inside]]]
        pos[todo[ok]] = p[ok]
        todo = todo[~ok]
    if todo.size:
        # Fallback: a uniformly drawn pixel of the cell, plus a uniform sub-pixel offset.
        flat = labels.ravel()
        order = np.argsort(flat, kind="stable")
        starts = np.searchsorted(flat[order], ids)
        pick = starts[owner[todo]] + np.floor(rng.uniform(0, 1, todo.size) * area[owner[todo]])
        idx = order[pick.astype(np.int64)]
        off = rng.uniform(-0.5, 0.5, size=(todo.size, 2))
        # keep strictly inside the pixel so rounding maps back to it
        off = np.clip(off, -0.5, 0.5 - 1e-9)
        pos[todo, 0] = idx // w + off[:, 0]
        pos[todo, 1] = idx % w + off[:, 1]
    return pos


def _pixel_mass(centre: np.ndarray, start: np.ndarray, width: int, sigma: float) -> np.ndarray:
    """Mass of a 1-D unit Gaussian (mean ``centre``) on pixels start..start+width-1."""
    edges = start[:, None] + np.arange(width + 1)[None, :] - 0.5
    cdf = 0.5 * erf((edges - centre[:, None]) / (sigma * np.sqrt(2.0)))
    return np.diff(cdf, axis=1)


def render_spots(
    shape, spots: np.ndarray, sigma_psf: float = 1.0, truncate: float = 4.0
) -> np.ndarray:
    """Render spots as pixel-integrated Gaussian PSFs.

    Each spot adds ``intensity * mass(pixel)`` where ``mass`` is the integral of a unit 2-D
    Gaussian (std ``sigma_psf``) over the pixel, for pixels within ``truncate * sigma_psf`` of
    its centre; so a spot's pixel sum equals its intensity up to the truncated tails and the
    part outside the image. ``sigma_psf == 0`` puts each intensity into the pixel holding it.

    Args:
        shape: (H, W) of the output.
        spots: structured array with fields x, y, intensity (e.g. from :func:`simulate_spots`).
        sigma_psf: PSF standard deviation in pixels.
        truncate: window half-width in units of ``sigma_psf``.

    Returns:
        float32 H x W image (the sum of all spots).
    """
    h, w = (int(s) for s in shape)
    require(h > 0 and w > 0, f"shape must be positive, got {shape}")
    require(sigma_psf >= 0, f"sigma_psf must be >= 0, got {sigma_psf}")
    require(truncate > 0, f"truncate must be > 0, got {truncate}")
    spots = np.asarray(spots)
    names = spots.dtype.names or ()
    require(
        {"x", "y", "intensity"} <= set(names),
        "spots need fields x, y, intensity (see cellsynth.tools.points.SPOT_DTYPE)",
    )
    y = spots["y"].astype(np.float64)
    x = spots["x"].astype(np.float64)
    val = spots["intensity"].astype(np.float64)
    require(np.all(np.isfinite(y) & np.isfinite(x) & np.isfinite(val)), "spots must be finite")
    if spots.size == 0:
        return np.zeros((h, w), np.float32)
    if sigma_psf == 0:
        r = np.floor(y + 0.5).astype(np.int64)
        c = np.floor(x + 0.5).astype(np.int64)
        ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        img = np.bincount(r[ok] * w + c[ok], val[ok], minlength=h * w)
        return img.reshape(h, w).astype(np.float32)
    rad = int(np.ceil(truncate * sigma_psf))
    width = 2 * rad + 1
    r0 = np.floor(y + 0.5).astype(np.int64) - rad
    c0 = np.floor(x + 0.5).astype(np.int64) - rad
    gy = _pixel_mass(y, r0, width, sigma_psf)  # (N, width)
    gx = _pixel_mass(x, c0, width, sigma_psf)
    rows = r0[:, None, None] + np.arange(width)[None, :, None]
    cols = c0[:, None, None] + np.arange(width)[None, None, :]
    vals = val[:, None, None] * gy[:, :, None] * gx[:, None, :]
    rows, cols = np.broadcast_arrays(rows, cols)
    ok = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    img = np.bincount((rows * w + cols)[ok], vals[ok], minlength=h * w)
    return img.reshape(h, w).astype(np.float32)


def spots_mask(shape, spots: np.ndarray, radius: float = 1.5) -> np.ndarray:
    """Instance labels of spots as discs of ``radius`` pixels (spot k -> label k + 1; later spots
    win where discs overlap): the spot mask a Pix2PixHD spot model translates into an image.

    Returns:
        uint16 (uint32 for > 65535 spots) H x W labels.
    """
    h, w = (int(s) for s in shape)
    require(radius > 0, f"radius must be > 0, got {radius}")
    spots = np.asarray(spots)
    out = np.zeros((h, w), dtype=np.uint16 if spots.size <= 65535 else np.uint32)
    rad = int(np.ceil(radius))
    off = np.arange(-rad, rad + 1)
    for k, s in enumerate(spots):
        cy, cx = float(s["y"]), float(s["x"])
        r = np.floor(cy + 0.5).astype(np.int64) + off
        c = np.floor(cx + 0.5).astype(np.int64) + off
        rr, cc = np.meshgrid(r, c, indexing="ij")
        ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        ok &= (rr - cy) ** 2 + (cc - cx) ** 2 <= radius * radius
        out[rr[ok], cc[ok]] = k + 1
    return out


def spots_to_csv(spots: np.ndarray) -> str:
    """CSV text with header ``x,y,cell_id,intensity`` (full float precision, one spot a row)."""
    buf = io.StringIO()
    buf.write(CSV_HEADER + "\n")
    for s in np.asarray(spots):
        buf.write(
            f"{float(s['x'])!r},{float(s['y'])!r},{int(s['cell_id'])},{float(s['intensity'])!r}\n"
        )
    return buf.getvalue()


def spots_from_csv(text: str, where: str = "spots CSV") -> np.ndarray:
    """Parse :func:`spots_to_csv` text back into a :data:`SPOT_DTYPE` array."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines or lines[0].replace(" ", "") != CSV_HEADER:
        raise CellsynthError(f"{where}: expected a CSV with header {CSV_HEADER!r}")
    out = np.zeros(len(lines) - 1, dtype=SPOT_DTYPE)
    for i, ln in enumerate(lines[1:]):
        parts = ln.split(",")
        try:
            require(len(parts) == 4, "")
            out[i] = (float(parts[0]), float(parts[1]), int(parts[2]), float(parts[3]))
        except (ValueError, CellsynthError):
            raise CellsynthError(f"{where}: line {i + 2} is not x,y,cell_id,intensity") from None
    return out
