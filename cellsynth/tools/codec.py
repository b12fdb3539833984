"""The mask codec: instance labels <-> the image a GAN learns, so touching cells stay separable.

Encodings (``ENCODINGS`` maps each to its channel count):

- ``"binary"`` (1 channel): 255 on cells, 0 elsewhere. Decoded by threshold + connected
  components, so touching cells merge.
- ``"fbd"`` (3 channels, RGB): foreground, boundary, distance.
  R = foreground (255 on cells);
  G = boundary: cell pixels within ``width`` pixels (Chebyshev) of a *different* cell, i.e. a
  band on both sides of every contact, except in each cell's core (normalised distance >= 0.5)
  so every cell keeps a seed;
  B = per-instance normalised distance transform: Euclidean distance to the nearest pixel that is
  not in the same cell, divided by its maximum inside that cell (1 at the cell's centre).
  Decoded by a seeded watershed: seeds are the connected parts of (distance >= 0.4) minus the
  boundary (the encoder makes each cell have exactly one, never touching another cell's seed), flooded over (boundary - distance) inside the foreground; foreground pieces that got no
  seed become their own objects.

Packing a GAN training set crops and down-scales the labels with nearest neighbour *before*
encoding: :func:`transform_labels` / :func:`downscale_encode` do exactly what
``cellsynth dataset pack`` does. numpy / scipy / scikit-image only.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from cellsynth.errors import CellsynthError
from cellsynth.tools.combine import fraction_of_full_scale
from cellsynth.tools.labels import check_labels, drop_small_objects, relabel_sequential
from cellsynth.tools.parse import parse_size

ENCODINGS = {"binary": 1, "fbd": 3}
TRANSFORMS = ("center-crop", "tiles", "resize")
CORE_LEVEL = 0.5  # normalised distance of a cell's core (never in the band beyond the contact)
SEED_LEVEL = 0.4  # seeds: normalised distance >= this and not boundary (decoder default too)


def check_encoding(encoding: str) -> int:
    """Return the channel count of ``encoding``; raise CellsynthError for an unknown one."""
    if encoding not in ENCODINGS:
        raise CellsynthError(
            f"unknown mask encoding {encoding!r}; use one of {', '.join(sorted(ENCODINGS))}"
        )
    return ENCODINGS[encoding]


def instance_distance(labels: np.ndarray) -> np.ndarray:
    """Per-instance normalised distance transform.

    Args: labels 2-D integer instance labels.
    Returns float32 H x W: for each cell pixel the Euclidean distance to the nearest pixel outside
    that cell (image borders count as inside), divided by the cell's maximum; 0 on background.
    """
    labels = check_labels(labels, "instance_distance")
    out = np.zeros(labels.shape, dtype=np.float32)
    for idx, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        # pad the box by one pixel towards the inside of the image only, so the image border
        # does not count as an edge of the cell
        ys, xs = box
        y0, y1 = max(ys.start - 1, 0), min(ys.stop + 1, labels.shape[0])
        x0, x1 = max(xs.start - 1, 0), min(xs.stop + 1, labels.shape[1])
        cell = labels[y0:y1, x0:x1] == idx
        pad = (
            (1 if y0 == 0 else 0, 1 if y1 == labels.shape[0] else 0),
            (1 if x0 == 0 else 0, 1 if x1 == labels.shape[1] else 0),
        )
        edt = ndi.distance_transform_edt(np.pad(cell, pad, mode="edge"))
        edt = edt[pad[0][0] : edt.shape[0] - pad[0][1], pad[1][0] : edt.shape[1] - pad[1][1]]
        top = edt[cell].max()
        region = out[y0:y1, x0:x1]
        region[cell] = edt[cell] / top
    return out


def boundary_map(labels: np.ndarray, width: int = 2, core: np.ndarray | None = None) -> np.ndarray:
    """Cell pixels within ``width`` pixels (Chebyshev) of a different, non-zero label.

    Args: labels 2-D integer instance labels; width band half-width in pixels (>= 1);
    core optional bool mask of pixels that are never boundary.
    Returns a bool H x W array (a band of about 2 * width pixels along every contact).
    """
    labels = check_labels(labels, "boundary_map")
    if int(width) < 1:
        raise CellsynthError(f"boundary_map: width must be >= 1, got {width}")
    size = 2 * int(width) + 1
    lab = labels.astype(np.int64)
    big = int(lab.max()) + 1
    hi = ndi.maximum_filter(lab, size=size, mode="nearest")
    lo = ndi.minimum_filter(np.where(lab == 0, big, lab), size=size, mode="nearest")
    edge = (lab > 0) & ((hi > lab) | (lo < lab))
    if core is not None:
        edge &= ~core
    return edge


def fbd_channels(labels: np.ndarray, width: int = 2) -> tuple:
    """The three fbd planes of instance labels (see the module docstring).

    Args: labels 2-D integer instance labels; width half-width of the boundary band (>= 1).
    Returns (foreground bool, boundary bool, normalised distance float32), each H x W.
    Every pixel 8-adjacent to another cell is boundary; the band beyond that spares each cell's
    core; where the rest (the seed) of a cell falls apart, only its largest piece stays a seed and
    the other pieces are marked boundary; a cell left with no seed pixel (tiny, fully in contact) keeps its most central pixel
    that is not next to another cell's seed, so seeds of different cells never touch.
    """
    labels = check_labels(labels, "fbd_channels")
    fg = labels > 0
    dist = instance_distance(labels)
    edge = boundary_map(labels, 1)
    if width > 1:
        edge |= boundary_map(labels, width) & (dist < CORE_LEVEL)
    seed = fg & ~edge & (dist >= SEED_LEVEL)
    # one seed per cell: pieces of a cell's seed other than its largest become boundary
    eight = np.ones((3, 3), dtype=bool)
    for idx, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        own = seed[box] & (labels[box] == idx)
        pieces, k = ndi.label(own, structure=eight)
        if k > 1:
            sizes = np.bincount(pieces.ravel())
            sizes[0] = 0
            extra = own & (pieces != int(np.argmax(sizes)))
            edge[box][extra] = True
            seed[box][extra] = False
    n = int(labels.max())
    has_seed = np.zeros(n + 1, dtype=bool)
    has_seed[labels[seed]] = True
    present = np.zeros(n + 1, dtype=bool)
    present[labels[fg]] = True
    missing = np.flatnonzero(present & ~has_seed)
    if missing.size:
        H, W = labels.shape
        boxes = ndi.find_objects(labels)
        for idx in missing:
            ys, xs = boxes[idx - 1]
            yy, xx = np.nonzero(labels[ys, xs] == idx)
            yy, xx = yy + ys.start, xx + xs.start
            for k in np.argsort(-dist[yy, xx], kind="stable"):
                y, x = int(yy[k]), int(xx[k])
                win = (slice(max(y - 1, 0), min(y + 2, H)), slice(max(x - 1, 0), min(x + 2, W)))
                if not np.any(seed[win] & (labels[win] != idx)):
                    edge[y, x] = False
                    seed[y, x] = True
                    break
    return fg, edge, dist


def encode_mask(labels: np.ndarray, encoding: str = "fbd", boundary_width: int = 2) -> np.ndarray:
    """Encode instance labels as the uint8 image a GAN learns.

    Args: labels 2-D integer instance labels (0 = background); encoding "binary" or "fbd";
    boundary_width half-width of the fbd boundary band in pixels.
    Returns uint8 H x W (binary: 0/255) or H x W x 3 (fbd: foreground, boundary, distance).
    """
    check_encoding(encoding)
    labels = check_labels(labels, "encode_mask")
    if encoding == "binary":
        return np.where(labels > 0, 255, 0).astype(np.uint8)
    fg, edge, dist = fbd_channels(labels, boundary_width)
    out = np.zeros(labels.shape + (3,), dtype=np.uint8)
    out[..., 0] = np.where(fg, 255, 0)
    out[..., 1] = np.where(edge, 255, 0)
    out[..., 2] = np.rint(dist * 255.0).astype(np.uint8)
    return out


def _as_float01(encoded: np.ndarray, channels: int) -> np.ndarray:
    """uint8 / uint16 / float [0, 1] image -> float32 H x W x C in [0, 1] (checked)."""
    x = np.asarray(encoded)
    if x.ndim == 3 and x.shape[0] in (1, 3) and x.shape[-1] not in (1, 3):
        x = np.moveaxis(x, 0, -1)  # channels first (a network output)
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3:
        raise CellsynthError(f"decode_mask: expected an H x W (x C) image, got shape {x.shape}")
    if x.shape[-1] != channels:
        if channels == 1:
            x = x[..., :1]
        else:
            raise CellsynthError(
                f"decode_mask: fbd needs 3 channels (foreground, boundary, distance), "
                f"got shape {x.shape}; was this packed with --encoding binary?"
            )
    scaled = fraction_of_full_scale(x)
    if scaled is not None:
        return scaled
    if not np.issubdtype(x.dtype, np.floating):
        raise CellsynthError(f"decode_mask: expected uint8 or float in [0, 1], got {x.dtype}")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise CellsynthError("decode_mask: image has NaN or infinite values")
    if x.min() < -0.1 or x.max() > 1.1:
        raise CellsynthError(
            f"decode_mask: float input must be in [0, 1], got [{x.min():.3g}, {x.max():.3g}] "
            "(convert a [-1, 1] network output with cellsynth.datasets.io.network_to_image)"
        )
    return x.clip(0.0, 1.0)


def decode_mask(
    encoded: np.ndarray,
    encoding: str = "fbd",
    fg_thresh: float = 0.5,
    boundary_thresh: float = 0.5,
    marker_thresh: float = SEED_LEVEL,
    smooth: float = 0.0,
    min_size: int = 0,
    connectivity: int | None = None,
) -> np.ndarray:
    """Decode an encoded mask (real or generated) to instance labels.

    Args: encoded H x W (x C) uint8, or float in [0, 1] (a GAN output converted; channels first
    is accepted too); encoding "binary" or "fbd"; fg_thresh foreground level; boundary_thresh
    and marker_thresh (fbd) the boundary level and the normalised-distance level of the seeds;
    smooth Gaussian sigma applied first (0 = none; helps with noisy GAN output); min_size
    objects with fewer pixels are dropped; connectivity 1 or 2 of the components (default 1 for
    binary, as plain connected components; 2 for the fbd seeds and flooding, safe because the
    encoder never lets seeds of different cells touch, even diagonally).
    Returns uint16 instance labels 1..N (uint32 when N > 65535).
    """
    channels = check_encoding(encoding)
    x = _as_float01(encoded, channels)
    if smooth > 0:
        x = ndi.gaussian_filter(x, sigma=(smooth, smooth, 0))
    if connectivity is None:
        connectivity = 1 if encoding == "binary" else 2
    if connectivity not in (1, 2):
        raise CellsynthError(f"decode_mask: connectivity must be 1 or 2, got {connectivity}")
    structure = ndi.generate_binary_structure(2, connectivity)
    fg = x[..., 0] > fg_thresh
    if encoding == "binary":
        labels, _ = ndi.label(fg, structure=structure)
        return relabel_sequential(drop_small_objects(labels, min_size))

    from skimage.segmentation import watershed

    edge = x[..., 1]
    dist = x[..., 2]
    seeds = fg & (dist >= marker_thresh) & (edge < boundary_thresh)
    markers, n = ndi.label(seeds, structure=structure)
    labels = watershed(edge - dist, markers=markers, mask=fg, connectivity=connectivity)
    rest, m = ndi.label(fg & (labels == 0), structure=structure)
    if m:  # foreground pieces without a seed become objects of their own
        labels = np.where(rest > 0, rest + n, labels)
    return relabel_sequential(drop_small_objects(labels, min_size))


def resize_labels(labels: np.ndarray, size) -> np.ndarray:
    """Nearest-neighbour resize of instance labels (pixel-centre sampling; ids are kept).

    Args: labels 2-D integer array; size int (square) or (height, width).
    Returns an array of the same dtype and the new size.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise CellsynthError(f"resize_labels: labels must be 2-D, got shape {labels.shape}")
    h, w = parse_size(size)
    rows = np.minimum(
        ((np.arange(h) + 0.5) * labels.shape[0] / h).astype(np.int64), labels.shape[0] - 1
    )
    cols = np.minimum(
        ((np.arange(w) + 0.5) * labels.shape[1] / w).astype(np.int64), labels.shape[1] - 1
    )
    return labels[rows[:, None], cols[None, :]]


def keep_largest_pieces(labels: np.ndarray) -> np.ndarray:
    """Keep, for every label, only its largest 8-connected piece (crumbs become background).

    Cropping and nearest-neighbour down-scaling can cut a cell into pieces; a decoder can only
    give each piece its own object, so packing keeps the main piece. Returns a copy.
    """
    labels = check_labels(labels, "keep_largest_pieces")
    out = labels.copy()
    eight = np.ones((3, 3), dtype=bool)
    for idx, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        cell = labels[box] == idx
        pieces, n = ndi.label(cell, structure=eight)
        if n > 1:
            sizes = np.bincount(pieces.ravel())
            sizes[0] = 0
            region = out[box]
            region[cell & (pieces != int(np.argmax(sizes)))] = 0
    return out


def crop_windows(shape, size, transform: str = "center-crop", tile=None, stride=None) -> list:
    """The windows (y, x, height, width) of an image that packing turns into items of ``size``.

    Args: shape (H, W, ...) of the image; size int or (h, w) of the items; transform
    "center-crop" (largest centred window with the aspect of ``size``), "resize" (the whole
    image) or "tiles" (a grid of ``tile`` windows, default ``size``, every ``stride`` pixels,
    default ``tile``, i.e. non-overlapping; the grid is centred in the image).
    Returns a list of windows (empty when the image is smaller than a tile).
    """
    H, W = int(shape[0]), int(shape[1])
    h, w = parse_size(size)
    if transform == "resize":
        return [(0, 0, H, W)]
    if transform == "center-crop":
        scale = min(H / h, W / w)
        ch, cw = min(H, max(1, round(h * scale))), min(W, max(1, round(w * scale)))
        return [((H - ch) // 2, (W - cw) // 2, ch, cw)]
    if transform == "tiles":
        th, tw = parse_size(tile) if tile is not None else (h, w)
        sy, sx = parse_size(stride) if stride is not None else (th, tw)
        if th > H or tw > W:
            return []
        ny, nx = (H - th) // sy + 1, (W - tw) // sx + 1
        oy = (H - (th + (ny - 1) * sy)) // 2
        ox = (W - (tw + (nx - 1) * sx)) // 2
        return [(oy + i * sy, ox + j * sx, th, tw) for i in range(ny) for j in range(nx)]
    raise CellsynthError(f"unknown transform {transform!r}; use one of {', '.join(TRANSFORMS)}")


def transform_labels(
    labels: np.ndarray,
    size,
    transform: str = "center-crop",
    tile=None,
    stride=None,
    keep_empty: bool = False,
    clean: bool = True,
) -> list:
    """Crop and nearest-resize instance labels the way packing does.

    Args: labels 2-D integer instance labels; size, transform, tile, stride as in
    :func:`crop_windows`; keep_empty keep tiles without cells (other transforms always keep
    their one item).
    clean keep only the largest piece of each cell (:func:`keep_largest_pieces`).
    Returns a list of (window, labels) with labels renumbered 1..N (uint16/uint32) of ``size``.
    """
    labels = check_labels(labels, "transform_labels")
    out = []
    for win in crop_windows(labels.shape, size, transform, tile, stride):
        y, x, h, w = win
        small = resize_labels(labels[y : y + h, x : x + w], size)
        small = relabel_sequential(keep_largest_pieces(small) if clean else small)
        if transform == "tiles" and not keep_empty and not small.any():
            continue
        out.append((win, small))
    return out


def label_tiles(labels_list, size, tile) -> list[np.ndarray]:
    """The tiles packing makes of each labels image: ``tile`` crops without overlap, empty ones
    skipped, nearest-resized to ``size`` (:func:`transform_labels` with ``"tiles"``).

    Args: labels_list iterable of 2-D instance labels; size, tile as in :func:`crop_windows`.
    Returns one list of all the tiles' labels, in order.
    """
    return [
        np.asarray(small)
        for labels in labels_list
        for _, small in transform_labels(labels, size, "tiles", tile, tile, False)
    ]


def downscale_encode(
    labels: np.ndarray,
    size,
    encoding: str = "fbd",
    transform: str = "center-crop",
    tile=None,
    stride=None,
    keep_empty: bool = False,
    boundary_width: int = 2,
    clean: bool = True,
) -> list:
    """Exactly what ``cellsynth dataset pack --kind masks`` does to one mask.

    Crop/resize with nearest neighbour (:func:`transform_labels`), then :func:`encode_mask`.
    Returns a list of (window, labels, encoded uint8).
    """
    check_encoding(encoding)
    return [
        (win, small, encode_mask(small, encoding, boundary_width))
        for win, small in transform_labels(labels, size, transform, tile, stride, keep_empty, clean)
    ]
