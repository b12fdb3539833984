"""Shared fixtures and helpers: the real data beside the project (skipped cleanly when absent),
CPU threads, tiny StyleGAN data and snapshots, and the slow numpy references of the ops.

Test modules import the helpers with ``from conftest import ...`` (never from each other)."""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CELLSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not present at {path} (set CELLSYNTH_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def dsb2018_dir() -> Path:
    """../shared/data/dsb2018-fluo (canonical layout with train/ and test/)."""
    return _need(SHARED_DATA / "dsb2018-fluo")


@pytest.fixture(scope="session")
def livecell_dir() -> Path:
    """../shared/data/livecell-val (images/ + livecell_coco_val.json)."""
    return _need(SHARED_DATA / "livecell-val")


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch

        torch.set_num_threads(1)  # tiny test networks: threads only add overhead
    except ImportError:
        pass
    yield


def has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def disks_labels(seed: int, size: int = 64, n: int = 6):
    """``n`` non-overlapping disks (radius 4-7) as uint16 labels: the segmenter tests' cells."""

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    lab = np.zeros((size, size), np.uint16)
    for i in range(n):
        cy, cx = rng.integers(8, size - 8, 2)
        r = rng.integers(4, 8)
        lab[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (lab == 0)] = i + 1
    return lab


def labels_with_disks(specs, size: int = 48):
    """uint16 labels with disk i+1 at ``specs[i] = (cy, cx, r)`` (later disks on top)."""
    lab = np.zeros((size, size), np.uint16)
    yy, xx = np.ogrid[:size, :size]
    for i, (cy, cx, r) in enumerate(specs, 1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    return lab


def disks_sample(seed: int, size: int = 64, n: int = 6):
    """A Sample of :func:`disks_labels` as bright disks on a noisy background."""

    from cellsynth.datasets.canonical import Sample

    lab = disks_labels(seed, size, n)
    noise = np.random.default_rng(seed + 100).normal(30, 10, lab.shape)
    img = np.clip((lab > 0) * 150.0 + noise, 0, 255).astype(np.uint8)
    return Sample(f"s{seed}", img, lab)


def disks_dataset(root: Path, n: int):
    """The ``train`` split of a canonical dataset of ``n`` :func:`disks_sample` written at
    ``root``, opened (what the segmenter tests train on)."""
    from cellsynth.datasets.canonical import CanonicalDataset, write_dataset

    write_dataset(root, {"train": [disks_sample(i) for i in range(n)]})
    return CanonicalDataset(root, "train")


@pytest.fixture(scope="module")
def disks(tmp_path_factory):
    """A :func:`disks_dataset` of 6 images, written once for each test module that uses it."""
    return disks_dataset(tmp_path_factory.mktemp("disks") / "ds", 6)


def fit_segmenter(tmp_path_factory, data, name: str, epochs: int, **options):
    """Segmenter ``name`` made with ``options`` and fitted on ``data`` for ``epochs`` in a fresh
    work folder (which keeps its model under ``model/``): (segmenter, work folder)."""
    from cellsynth.benchmark.segmenters import make_segmenter

    seg = make_segmenter(name, **options)
    work = tmp_path_factory.mktemp(f"{name}-work")
    seg.fit(data, work, epochs=epochs, progress=False)
    return seg, work


def check_labels(lab, shape):
    """``lab`` is a uint16 or uint32 label image of ``shape``, its objects numbered 1..N."""
    assert lab.dtype in (np.uint16, np.uint32) and lab.shape == shape
    ids = np.unique(lab[lab > 0])
    assert np.array_equal(ids, np.arange(1, len(ids) + 1))


def check_odd_inputs(seg, image, tiled=None):
    """``seg`` gives valid labels of the right shape for a 50 x 45 crop of ``image`` (odd sizes),
    for ``image`` with a trailing channel axis and, with ``tiled`` (H, W), for ``image`` repeated
    2 x 3 times and cut to H x W (an image of several tiles)."""
    odd = np.ascontiguousarray(image[:50, :45])
    check_labels(seg.predict(odd), odd.shape)
    check_labels(seg.predict(image[..., None]), image.shape)
    if tiled is not None:
        big = np.tile(image, (2, 3))[: tiled[0], : tiled[1]]
        check_labels(seg.predict(big), big.shape)


def check_reload(seg, folder: Path, image, expected) -> None:
    """The saved model in ``folder`` holds only tensors, loads back with ``seg``'s options and
    predicts ``expected`` for ``image``."""
    import torch

    state = torch.load(folder / "weights.pt", weights_only=True)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    again = type(seg).load(folder)
    assert again.options == seg.options
    np.testing.assert_array_equal(again.predict(image), expected)


def check_refused(name: str, *cases) -> None:
    """``make_segmenter(name, **options)`` raises a CellsynthError matching ``match`` for each
    ``(match, options)`` of ``cases``."""
    from cellsynth.benchmark.segmenters import make_segmenter
    from cellsynth.errors import CellsynthError

    for match, options in cases:
        with pytest.raises(CellsynthError, match=match):
            make_segmenter(name, **options)


def check_untrained(seg, folder: Path, can_fit: bool = True) -> None:
    """Untrained ``seg`` refuses to predict, its class finds no saved model in empty ``folder``
    and (where it can train at all: ``can_fit``) it refuses to fit an empty training set."""
    from cellsynth.errors import CellsynthError

    with pytest.raises(CellsynthError, match="not trained"):
        seg.predict(np.zeros((32, 32), np.uint8))
    with pytest.raises(CellsynthError, match=f"no saved {seg.name}"):
        type(seg).load(folder)
    if not can_fit:
        return
    with pytest.raises(CellsynthError, match="empty"):
        seg.fit([], folder, epochs=1, progress=False)


def tiny_sam_encoder(img_size: int, out_chans: int, window_size: int):
    """segment_anything's ViT image encoder at test size: 32 wide, 2 blocks (one windowed, one
    global), 16-pixel patches; random weights (the micro-sam and Cellpose-SAM tests)."""
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT

    return ImageEncoderViT(
        img_size=img_size,
        patch_size=16,
        embed_dim=32,
        depth=2,
        num_heads=2,
        mlp_ratio=2.0,
        out_chans=out_chans,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=window_size,
        global_attn_indexes=(1,),
    )


# A Mask R-CNN small enough to train on 64 x 64 disks on the CPU in seconds (each test file adds
# its own detection limits and learning rate).
SMALL_MASKRCNN = dict(
    arch="resnet18_fpn",
    crop=64,
    batch_size=2,
    rpn_post_nms_top_n_train=200,
    rpn_pre_nms_top_n_test=200,
    rpn_post_nms_top_n_test=100,
)


@pytest.fixture(scope="session")
def tiny_masks_zip(tmp_path_factory) -> Path:
    """A masks zip of 8 random 32x32 fbd masks (:func:`make_masks_zip`)."""
    return make_masks_zip(tmp_path_factory.mktemp("masks-zip") / "masks.zip")


@pytest.fixture(scope="session")
def sg2_snapshot(tmp_path_factory) -> Path:
    """An untrained tiny StyleGAN2 snapshot (32x32 fbd masks) written by the trainer itself
    (:func:`sg3_snapshot`)."""
    return sg3_snapshot(tmp_path_factory.mktemp("sg2-snapshot"), "stylegan2")


# ---- StyleGAN: tiny masks zips, options and snapshots ----------------------------------------
SG3_TINY = dict(
    cbase=512, cmax=16, map_depth=1, z_dim=16, w_dim=16, batch=4, gamma=1.0, device="cpu", workers=1
)


def make_masks_zip(path, n=8, res=32, encoding="fbd", seed=0, classes=None, repeat_crowded=None):
    """A masks zip in the agreed format (random disks, encoded with the codec)."""
    from PIL import Image

    from cellsynth.tools.codec import encode_mask

    rng = np.random.default_rng(seed)
    labels = []
    with zipfile.ZipFile(path, "w") as z:
        for i in range(n):
            lab = np.zeros((res, res), np.uint16)
            yy, xx = np.ogrid[:res, :res]
            for k in range(1, int(rng.integers(2, 5)) + 1):
                cy, cx = rng.integers(5, res - 5, 2)
                r = int(rng.integers(2, 5))
                lab[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (lab == 0)] = k
            buf = io.BytesIO()
            Image.fromarray(encode_mask(lab, encoding)).save(buf, format="PNG")
            name = f"00000/img{i:08d}.png"
            z.writestr(name, buf.getvalue())
            labels.append([name, i % len(classes)] if classes else None)
        z.writestr("dataset.json", json.dumps({"labels": labels if classes else None}))
        meta = {
            "encoding": encoding,
            "channels": 3 if encoding == "fbd" else 1,
            "resolution": res,
            "classes": classes,
            "source": "test",
        }
        if repeat_crowded is not None:
            meta["repeat_crowded"] = repeat_crowded
        z.writestr("cellsynth.json", json.dumps(meta))
    return path


def sg3_options(data, outdir, **kw):
    """Checked StyleGAN training options at the tiny sizes of :data:`SG3_TINY`."""
    from cellsynth.stylegan3.train import check_options, default_options

    return check_options(default_options(data=str(data), outdir=str(outdir), **{**SG3_TINY, **kw}))


def sg3_train(data, outdir, **kw):
    """A StyleGAN training run at the tiny sizes of :data:`SG3_TINY` (``kw`` overrides them);
    returns its run folder."""
    from cellsynth.stylegan3.train import train

    return train(data=str(data), outdir=str(outdir), **{**SG3_TINY, **kw})


def sg3_snapshot(tmp, cfg, encoding="fbd", classes=None, repeat_crowded=None):
    """An (untrained) snapshot written by the trainer itself."""
    from cellsynth.stylegan3.training_loop import Trainer

    data = make_masks_zip(
        tmp / f"{cfg}-{encoding}.zip",
        encoding=encoding,
        classes=classes,
        repeat_crowded=repeat_crowded,
    )
    tr = Trainer(sg3_options(data, tmp, cfg=cfg, cond=bool(classes)))
    return tr.save_snapshot(tmp / f"{cfg}-{encoding}{'-cond' if classes else ''}.pt")


# ---- ops: slow numpy references and random cases ---------------------------------------------
def np_upfirdn(x, f, up, down, pad, flip, gain):
    """Zero-insert, pad/crop, convolve with explicit tap loops, decimate."""
    x = np.asarray(x, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64)
    if f.ndim == 1:
        f = np.outer(f, f)
    f = f * gain
    if not flip:
        f = f[::-1, ::-1]  # true convolution = correlation with the flipped filter
    n, c, h, w = x.shape
    z = np.zeros((n, c, h * up, w * up))
    z[:, :, ::up, ::up] = x
    px0, px1, py0, py1 = pad
    zp = np.zeros((n, c, h * up + max(py0, 0) + max(py1, 0), w * up + max(px0, 0) + max(px1, 0)))
    zp[:, :, max(py0, 0) : max(py0, 0) + h * up, max(px0, 0) : max(px0, 0) + w * up] = z
    zp = zp[
        :, :, max(-py0, 0) : zp.shape[2] - max(-py1, 0), max(-px0, 0) : zp.shape[3] - max(-px1, 0)
    ]
    fh, fw = f.shape
    oh, ow = zp.shape[2] - fh + 1, zp.shape[3] - fw + 1
    out = np.zeros((n, c, oh, ow))
    for a in range(fh):
        for b in range(fw):
            out += zp[:, :, a : a + oh, b : b + ow] * f[a, b]
    return out[:, :, ::down, ::down]


def np_act(x, act, alpha, gain, clamp):
    """The activations of bias_act, in numpy."""
    if act == "linear":
        y = x
    elif act == "relu":
        y = np.maximum(x, 0)
    elif act == "lrelu":
        y = np.where(x > 0, x, x * alpha)
    elif act == "tanh":
        y = np.tanh(x)
    elif act == "sigmoid":
        y = 1 / (1 + np.exp(-x))
    elif act == "elu":
        y = np.where(x > 0, x, np.expm1(x))
    elif act == "selu":
        a, s = 1.6732632423543772, 1.0507009873554805
        y = s * np.where(x > 0, x, a * np.expm1(x))
    elif act == "softplus":
        y = np.log1p(np.exp(x))
    elif act == "swish":
        y = x / (1 + np.exp(-x))
    y = y * gain
    if clamp is not None:
        y = np.clip(y, -clamp, clamp)
    return y


def rand_filter(rng, taps, separable):
    """A random filter from setup_filter (sometimes a general 2-D one)."""
    import torch

    from cellsynth.stylegan3.ops import upfirdn2d

    f = upfirdn2d.setup_filter(torch.as_tensor(rng.uniform(0.1, 1.0, taps)), separable=separable)
    if not separable and rng.random() < 0.3:  # a general (non-rank-1) 2-D filter
        f = upfirdn2d.setup_filter(torch.as_tensor(rng.uniform(-0.2, 1.0, (taps, taps + 1))))
    return f


def random_upfirdn_cases(n, seed):
    """``n`` random valid upfirdn2d cases: (f, up, down, pad, h, w, flip, gain)."""
    from cellsynth.stylegan3.ops.common import get_filter_size

    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < n:
        taps = int(rng.integers(1, 13))
        separable = bool(rng.random() < 0.5)
        f = rand_filter(rng, taps, separable)
        up, down = int(rng.choice([1, 2, 4])), int(rng.choice([1, 2, 4]))
        pad = [int(p) for p in rng.integers(-2, 7, size=4)]
        h, w = int(rng.integers(3, 12)), int(rng.integers(3, 12))
        fw, fh = get_filter_size(f)
        if h * up + pad[2] + pad[3] < fh or w * up + pad[0] + pad[1] < fw:
            continue
        cases.append(
            (f, up, down, pad, h, w, bool(rng.random() < 0.5), float(rng.choice([1, 2.5])))
        )
    return cases


def random_flrelu_cases(n, seed):
    """``n`` random valid filtered_lrelu cases:
    (fu, fd, up, down, pad, h, w, gain, slope, clamp, flip)."""
    from cellsynth.stylegan3.ops.filtered_lrelu import output_size

    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < n:
        up, down = int(rng.choice([1, 2, 4])), int(rng.choice([1, 2, 4]))
        fu = rand_filter(rng, int(rng.integers(1, 13)), bool(rng.random() < 0.6))
        fd = rand_filter(rng, int(rng.integers(1, 13)), bool(rng.random() < 0.6))
        pad = [int(p) for p in rng.integers(-1, 9, size=4)]
        h, w = int(rng.integers(4, 11)), int(rng.integers(4, 11))
        if min(output_size((h, w), fu, fd, up, down, pad)) < 1:
            continue
        if min(h * up + pad[2] + pad[3], w * up + pad[0] + pad[1]) < 12:
            continue
        gain = float(rng.choice([1.0, math.sqrt(2)]))
        slope = float(rng.choice([0.2, 1.0]))
        clamp = None if rng.random() < 0.5 else 0.7
        cases.append((fu, fd, up, down, pad, h, w, gain, slope, clamp, bool(rng.random() < 0.3)))
    return cases


def tiny_translator(tmp_path, output_nc=1, label_nc=2, name="p", features=False):
    """An untrained tiny Pix2PixHD generator saved as a checkpoint the translator loads; with
    ``features``, an --instance_feat model carrying made-up clusters and a bank of 3 training
    images (as ``models export`` writes them)."""
    import torch

    from cellsynth.pix2pixhd.networks import build_generator
    from cellsynth.pix2pixhd.options import Options
    from cellsynth.training.checkpoint import save_checkpoint

    opt = Options(
        ngf=8,
        n_blocks_global=1,
        n_downsample_global=2,
        label_nc=label_nc,
        output_nc=output_nc,
        resize_or_crop="none",
        instance_feat=features,
    ).check()
    torch.manual_seed(0)
    gen = build_generator(opt)
    state = {"G": gen.state_dict()}
    if features:  # image k: a background of level 3k and two cells of levels 3k + 1, 3k + 2
        levels = torch.arange(9, dtype=torch.float32)
        state["appearance"] = {
            "class_0": torch.tensor([[0.0, 0.0, 0.0], [3.0, 3.0, 3.0]]),
            "class_1": torch.tensor([[1.0, 1.0, 1.0], [5.0, 5.0, 5.0]]),
            "bank_features": levels[:, None].repeat(1, 3),
            "bank_classes": torch.tensor([0, 1, 1] * 3, dtype=torch.int32),
            "bank_images": torch.arange(9, dtype=torch.int32) // 3,
        }
    path = tmp_path / f"{name}.pt"
    save_checkpoint(path, state, "pix2pixhd", {"opt": opt.to_dict(), "size": [32, 32]})
    return path


# ---- Dask: one small LocalCluster for the tests of --dask ------------------------------------
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for 'no scheduler there' cases)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dir_files(d: Path) -> list[str]:
    """Relative paths of the files below ``d``, sorted."""
    return sorted(str(p.relative_to(d)) for p in Path(d).rglob("*") if p.is_file())


@pytest.fixture(scope="session")
def dask_cluster():
    """A client of a LocalCluster of 2 worker processes with 1 thread each (started once per
    session; a test may kill a worker, its nanny starts a new one). Skips without Dask."""
    distributed = pytest.importorskip(
        "distributed", reason="dask.distributed is not installed (pip install 'cellsynth[dask]')"
    )
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def worker_pids(client) -> dict[str, int]:
    """Worker address -> PID of the workers of a Dask client."""
    return client.run(os.getpid)


def kill_busy_worker(client, when, timeout: float = 120.0) -> dict:
    """Once ``when()`` is true, kill (SIGKILL, by PID) a worker of ``client`` that is running a
    task. Returns {"pid", "address"} of the killed worker ({} if none was busy in time)."""
    import signal
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end and not when():
        time.sleep(0.01)
    while time.monotonic() < end:
        busy = [w for w, keys in client.processing().items() if keys]
        pids = worker_pids(client)
        busy = [w for w in busy if w in pids]
        if busy:
            os.kill(pids[busy[0]], signal.SIGKILL)
            return {"pid": pids[busy[0]], "address": busy[0]}
        time.sleep(0.01)
    return {}
