"""StyleGAN3 training: ADA augmentation, loss pieces, a few CPU steps per config, exact resume,
2-process gloo training, the train command and its errors. Tiny: 32x32, tiny networks, batch 4."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from conftest import make_masks_zip, sg3_options, sg3_train

from cellsynth.errors import CellsynthError


@pytest.fixture(scope="module")
def fbd_zip(tmp_path_factory):
    return make_masks_zip(tmp_path_factory.mktemp("data") / "masks.zip")


@pytest.fixture(scope="module")
def binary_zip(tmp_path_factory):
    return make_masks_zip(tmp_path_factory.mktemp("data") / "bin.zip", encoding="binary")


# --------------------------------------------------------------------------------- ADA
def _pipe(p, **kw):
    from cellsynth.stylegan3.augment import AugmentPipe

    pipe = AugmentPipe(**kw)
    pipe.p.fill_(p)
    return pipe


def test_augment_identity_at_p0_and_shapes():
    from cellsynth.stylegan3.augment import AugmentPipe

    x = torch.randn(5, 3, 16, 16)
    pipe = AugmentPipe.from_preset("geom", 3)
    assert torch.equal(pipe(x), x)
    pipe.p.fill_(0.8)
    torch.manual_seed(0)
    y = pipe(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert not torch.allclose(y, x)


def test_augment_integer_transforms_are_exact():
    torch.manual_seed(1)
    x = torch.randn(16, 1, 8, 8)
    y = _pipe(1.0, xflip=1, rotate90=1)(x)
    # Each output is one of the 8 flips/rotations of its input, exactly (up to float rounding).
    for a, b in zip(x[:, 0], y[:, 0]):
        cands = [torch.rot90(t, k, (0, 1)) for t in (a, a.flip(1)) for k in range(4)]
        assert min(float((c - b).abs().max()) for c in cands) < 1e-5
    z = _pipe(1.0, xint=1)(x)  # integer shifts with reflection: values are a permutation
    for a, b in zip(x, z):
        assert set(np.round(b.numpy().ravel(), 5)) <= set(np.round(a.numpy().ravel(), 5))


def test_augment_gradient_flows_and_double_backward():
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    pipe = _pipe(1.0, xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1)
    y = pipe(x)
    (g,) = torch.autograd.grad((y**2).sum(), x, create_graph=True)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    g.square().sum().backward()  # R1 needs the second derivative
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_resample_matches_grid_sample_to_second_order(device):
    """The augmentation's own resampling against torch's grid_sample: values, gradients and the
    R1-style second derivative (float64; gradcheck and gradgradcheck too). Where torch has no
    native second derivative (torch 2.11 on CUDA), only the first order is compared and the
    second is checked by gradgradcheck."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    import torch.nn.functional as F

    from cellsynth.stylegan3.augment import resample

    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 9, 7, generator=gen, dtype=torch.float64).to(device)
    w = torch.randn(2, 3, 9, 7, generator=gen, dtype=torch.float64).to(device)
    theta = torch.tensor([[0.9, 0.2, 0.1], [-0.3, 1.1, -0.2]], dtype=torch.float64)
    grid = F.affine_grid(theta.repeat(2, 1, 1), [2, 3, 9, 7], align_corners=False).to(device)

    def native(x):
        return F.grid_sample(
            x, grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )

    def orders(fn, second):
        x = x0.clone().requires_grad_()
        y = fn(x)
        (gx,) = torch.autograd.grad((y * w).sin().sum(), x, create_graph=second)
        if not second:
            return y, gx
        (ggx,) = torch.autograd.grad(gx.square().sum(), x)
        return y, gx, ggx

    try:
        ref = orders(native, True)
    except RuntimeError:  # no native derivative of grid_sample's backward here
        ref = orders(native, False)
    for a, b in zip(orders(lambda x: resample(x, grid), len(ref) == 3), ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    x = x0.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: resample(t, grid), x)
    assert torch.autograd.gradgradcheck(lambda t: resample(t, grid), x)
    with pytest.raises(CellsynthError, match="grid"):
        resample(x, grid.clone().requires_grad_())


def test_colour_only_for_three_channels():
    from cellsynth.stylegan3.augment import AugmentPipe

    with pytest.raises(CellsynthError, match="3-channel"):
        AugmentPipe.from_preset("geom+color", 1)
    pipe = _pipe(1.0, brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
    x = torch.zeros(2, 3, 4, 4)  # grey stays grey under hue/saturation; brightness shifts it
    y = pipe(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    with pytest.raises(CellsynthError):
        pipe(torch.zeros(2, 1, 4, 4))


def test_adjust_p_speed():
    from cellsynth.stylegan3.augment import adjust_p

    # 500 kimg to go from 0 to 1: 1000 images move p by 1/500.
    assert adjust_p(0.0, 0.9, 0.6, 1000) == pytest.approx(1 / 500)
    assert adjust_p(0.5, 0.1, 0.6, 1000) == pytest.approx(0.5 - 1 / 500)
    assert adjust_p(0.0, 0.1, 0.6, 1000) == 0.0
    assert adjust_p(1.0, 0.9, 0.6, 10**6) == 1.0


def test_blur_matches_direct_convolution():
    from scipy.ndimage import convolve

    from cellsynth.stylegan3.loss import blur_images

    x = torch.randn(1, 1, 12, 12, dtype=torch.float64)
    sigma = 1.3
    r = math.ceil(3 * sigma)
    t = np.arange(-r, r + 1)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    ref = convolve(x[0, 0].numpy(), np.outer(k, k), mode="constant")
    assert np.allclose(blur_images(x, sigma)[0, 0].numpy(), ref)
    assert torch.equal(blur_images(x, 0.0), x)


# ---------------------------------------------------------------------------- training
@pytest.mark.parametrize("cfg", ["stylegan3-t", "stylegan3-r", "stylegan2"])
def test_few_steps_each_config(cfg, fbd_zip, tmp_path):
    from cellsynth.stylegan3.training_loop import Trainer

    opts = sg3_options(fbd_zip, tmp_path, cfg=cfg, aug="fixed", p=0.5, z_dim=12, w_dim=20)
    tr = Trainer(opts)
    # The options' architecture reaches the networks (latent sizes, mapping depth).
    for G in (tr.G, tr.G_ema):
        assert (G.z_dim, G.w_dim) == (12, 20)
        assert G.mapping.num_layers == 1
    assert tr.G.mapping.layers[0].weight.shape[1] == 12
    before = [p.detach().clone() for p in tr.G.parameters()]
    for _ in range(2):
        tr.step()
    stats = tr._gather_stats()
    for key in ("Loss/G/loss", "Loss/D/loss", "Loss/r1_penalty"):
        assert math.isfinite(stats[key]), key
    if cfg == "stylegan2":
        assert math.isfinite(stats["Loss/pl_penalty"])
    if cfg == "stylegan3-r":
        assert tr.loss.blur_sigma(0) == 10.0 and tr.loss.blur_sigma(10**9) == 0.0
    assert tr.cur_nimg == 8
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.G.parameters()))
    fakes = tr.fakes()
    assert fakes.shape == (32, 3, 32, 32) and torch.isfinite(fakes).all()


@pytest.mark.parametrize("seed", [0, 3])
def test_ada_updates_p_from_real_signs(fbd_zip, tmp_path, seed):
    from cellsynth.stylegan3.training_loop import ADA_INTERVAL, Trainer

    # ada_kimg tiny: one update moves p by 16 images / 1 image -> clipped to 0 or 1.
    tr = Trainer(sg3_options(fbd_zip, tmp_path, cfg="stylegan2", aug="ada", target=0.0, seed=seed))
    tr.ada_kimg = 0.001
    signs = []
    for _ in range(ADA_INTERVAL):
        tr.step()
        signs.append(tr.tick_stats["Loss/signs/real"][0] - sum(signs))
    rt = float(np.mean(signs))
    assert float(tr.augment.p) == (1.0 if rt > 0 else 0.0)
    assert float(tr.ada_stats.abs().sum()) == 0  # reset after the update


def test_resume_gives_identical_steps(fbd_zip, tmp_path):
    common = dict(cfg="stylegan2", aug="fixed", p=0.5, tick=0.008, snap=1)
    whole = sg3_train(fbd_zip, tmp_path / "a", **common, kimg=0.024)
    first = sg3_train(fbd_zip, tmp_path / "b", **common, kimg=0.012)
    snap = first / "network-snapshot-000000.012.pt"
    assert snap.is_file() and (first / "network-snapshot-000000.008.pt").is_file()
    second = sg3_train(fbd_zip, tmp_path / "b", **common, kimg=0.024, resume="latest")
    assert second == first  # resume continues in the same run folder
    a = torch.load(whole / "network-snapshot-000000.024.pt", weights_only=True)
    b = torch.load(second / "network-snapshot-000000.024.pt", weights_only=True)
    assert b["counters"]["cur_nimg"] == a["counters"]["cur_nimg"] == 24
    assert a["sampler"] == b["sampler"]
    assert a["counters"]["batch_idx"] == b["counters"]["batch_idx"] == 6
    for net in ("G", "D", "G_ema"):
        for k, v in a[net].items():
            assert torch.equal(v, b[net][k]), f"{net}.{k}"
    # and an interrupted run really differs from a fresh one with another seed
    c = sg3_train(fbd_zip, tmp_path / "c", **common, kimg=0.024, seed=1)
    c = torch.load(c / "network-snapshot-000000.024.pt", weights_only=True)
    assert any(not torch.equal(v, c["G"][k]) for k, v in a["G"].items())


def test_unconditional_snapshot_starts_a_conditional_run(fbd_zip, tmp_path):
    from cellsynth.stylegan3.training_loop import Trainer

    plain = Trainer(sg3_options(fbd_zip, tmp_path, cfg="stylegan2"))
    plain.step()
    snap = plain.save_snapshot(tmp_path / "plain.pt")
    cond_zip = make_masks_zip(tmp_path / "cond.zip", classes=["a", "b", "c"])
    opts = sg3_options(cond_zip, tmp_path, cfg="stylegan2", cond=True)
    cond = Trainer({**opts, "resume": str(snap)})
    assert cond.c_dim == 3 and cond.fine_tune and cond.cur_nimg == 0
    assert "conditional run started from the unconditional" in cond.resume_note
    assert "mapping.embed.weight" in cond.resume_note and "b4.out.weight" in cond.resume_note
    # the latent's weights are the old ones (rescaled for the wider layer); the class columns
    # are fresh, so each class is an offset of the old first mapping layer
    old_g = torch.load(snap, weights_only=True)["G_ema"]
    w_old, w_new = (
        old_g["mapping.layers.0.weight"],
        cond.G_ema.state_dict()["mapping.layers.0.weight"],
    )
    z_dim = w_old.shape[1]
    scale = math.sqrt(w_new.shape[1] / z_dim)
    assert torch.allclose(w_new[:, :z_dim], w_old * scale)
    assert w_new[:, z_dim:].abs().sum() > 0
    fc = cond.G_ema.mapping.layers[0]
    assert math.isclose(
        fc.weight_gain * scale, plain.G_ema.mapping.layers[0].weight_gain, rel_tol=1e-9
    )
    shared = [
        k for k in old_g if k in cond.G_ema.state_dict() and not k.startswith("mapping.layers.0")
    ]
    assert all(torch.equal(old_g[k], cond.G_ema.state_dict()[k]) for k in shared)
    z = torch.randn(4, plain.G_ema.z_dim)
    with torch.no_grad():
        outs = [
            cond.G_ema(
                z, torch.nn.functional.one_hot(torch.full((4,), k), 3).float(), noise_mode="const"
            )
            for k in range(3)
        ]
    assert all(torch.isfinite(o).all() for o in outs) and not torch.allclose(outs[0], outs[1])
    # the discriminator's trunk is the old one; its class head starts fresh
    old_d = torch.load(snap, weights_only=True)["D"]
    new_d = cond.D.state_dict()
    shared = [k for k in old_d if k in new_d and old_d[k].shape == new_d[k].shape]
    assert len(shared) > 10 and all(torch.equal(old_d[k], new_d[k]) for k in shared)
    # a conditional snapshot does not go back to an unconditional run
    back = Trainer({**opts, "resume": str(cond.save_snapshot(tmp_path / "cond.pt"))})
    assert back.c_dim == 3
    with pytest.raises(CellsynthError, match="c_dim"):
        Trainer(
            {**sg3_options(fbd_zip, tmp_path, cfg="stylegan2"), "resume": str(tmp_path / "cond.pt")}
        )


def test_run_folder_contents(fbd_zip, tmp_path):
    from cellsynth.training.logging import read_stats

    run = sg3_train(
        fbd_zip, tmp_path, kimg=0.008, tick=0.004, snap=1, cfg="stylegan2", metrics="realism"
    )
    assert run.name == "00000-stylegan2-masks-gpus1-batch4-gamma1"
    names = {p.name for p in run.iterdir()}
    assert {
        "training_options.json",
        "log.txt",
        "stats.jsonl",
        "reals.png",
        "fakes000000.000.png",
        "fakes000000.004.png",
    } <= names
    assert {"network-snapshot-000000.004.pt", "network-snapshot-000000.008.pt"} <= names
    assert "metric-realism.jsonl" in names
    assert any(n.startswith("events.out.tfevents") for n in names)
    stats = read_stats(run)
    assert any("Loss/G/loss" in s for s in stats)
    rec = json.loads((run / "metric-realism.jsonl").read_text().splitlines()[-1])
    assert rec["results"]["objects_per_image_real"] > 0
    opts = json.loads((run / "training_options.json").read_text())
    assert opts["cfg"] == "stylegan2" and opts["batch"] == 4


def test_two_process_gloo_run(fbd_zip, tmp_path):
    run = sg3_train(
        fbd_zip, tmp_path, batch=4, gpus=2, kimg=0.008, tick=0.008, snap=1, cfg="stylegan2"
    )
    assert run.name.startswith("00000-stylegan2-masks-gpus2-batch4")
    snap = torch.load(run / "network-snapshot-000000.008.pt", weights_only=True)
    assert snap["counters"]["cur_nimg"] == 8
    assert "tick 1" in (run / "log.txt").read_text()


# ------------------------------------------------------------------------------ errors
def test_resume_with_wrong_channels_is_refused(fbd_zip, binary_zip, tmp_path):
    run = sg3_train(fbd_zip, tmp_path, kimg=0.004, tick=0.004, snap=1)
    snap = run / "network-snapshot-000000.004.pt"
    with pytest.raises(CellsynthError, match="channel"):
        sg3_train(binary_zip, tmp_path, kimg=0.008, resume=str(snap))


def test_resume_latest_skips_partial_files(fbd_zip, tmp_path):
    from cellsynth.stylegan3.snapshot import find_latest

    with pytest.raises(CellsynthError, match="no complete"):
        find_latest(tmp_path)
    run = sg3_train(fbd_zip, tmp_path, kimg=0.004, tick=0.004, snap=1)
    good = run / "network-snapshot-000000.004.pt"
    later = tmp_path / "00009-x"
    later.mkdir()
    (later / ".network-snapshot-000004.pt.abc.tmp").write_bytes(b"half")
    (later / "network-snapshot-000004.pt").write_bytes(good.read_bytes()[:1000])  # truncated
    os.utime(later / "network-snapshot-000004.pt", None)
    assert find_latest(tmp_path) == good


def _cli(args, capsys):
    from cellsynth.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code, capsys.readouterr()


def test_cli_errors(fbd_zip, tmp_path, capsys):
    base = ["stylegan3", "train", "--outdir", str(tmp_path), "--gamma", "1", "--batch", "4"]
    code, out = _cli([*base, "--data", str(tmp_path / "missing.zip")], capsys)
    assert code == 2 and "missing.zip" in out.err and len(out.err.strip().splitlines()) == 1
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    code, out = _cli([*base, "--data", str(fbd_zip), "--resume", str(bad)], capsys)
    assert code == 2 and "bad.pt" in out.err and len(out.err.strip().splitlines()) == 1
    assert not any(p.name[0].isdigit() for p in tmp_path.iterdir())  # no run folder made


def test_cli_train_dry_run_and_short_run(fbd_zip, tmp_path, capsys):
    from cellsynth.cli import main

    args = [
        "stylegan3",
        "train",
        "--outdir",
        str(tmp_path),
        "--data",
        str(fbd_zip),
        "--gamma",
        "1",
        "--batch",
        "4",
        "--cbase",
        "512",
        "--cmax",
        "16",
        "--map-depth",
        "1",
    ]
    main([*args, "--dry-run"])
    assert "dry run" in capsys.readouterr().out and not list(tmp_path.iterdir())
    main(
        [
            *args,
            "--kimg",
            "0.004",
            "--tick",
            "0.004",
            "--snap",
            "1",
            "--cfg",
            "stylegan2",
            "--mirror",
            "--aug",
            "noaug",
        ]
    )
    runs = list(tmp_path.iterdir())
    assert len(runs) == 1 and (runs[0] / "network-snapshot-000000.004.pt").is_file()


def test_data_shards_are_disjoint_and_resumable(fbd_zip):
    from cellsynth.stylegan3.training_loop import MaskData

    d0 = MaskData(fbd_zip, mirror=True, rank=0, world=2, seed=5)
    d1 = MaskData(fbd_zip, mirror=True, rank=1, world=2, seed=5)
    assert d0.total == 16
    a, _ = d0.next_batch(8)
    b, _ = d1.next_batch(8)
    seen = {x.tobytes() for x in np.concatenate([a, b])}
    ref = {img.tobytes() for img in d0.first_images(8)}
    ref |= {img[:, :, ::-1].tobytes() for img in d0.first_images(8)}
    assert seen == ref  # one epoch over both ranks = every image and its mirror, once
    state = d0.state()
    nxt, _ = d0.next_batch(5)
    d2 = MaskData(fbd_zip, mirror=True, rank=0, world=2, seed=5)
    d2.load_state(state)
    assert np.array_equal(d2.next_batch(5)[0], nxt)
