"""Pix2PixHD: network shapes, edge maps, transforms, losses, training, exact resume, gloo,
VGG loading, the Translator, clusters, the CLI and bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from cellsynth.datasets.io import write_image
from cellsynth.errors import CellsynthError
from cellsynth.pix2pixhd import Translator
from cellsynth.pix2pixhd import data as p2p_data
from cellsynth.pix2pixhd.checkerboard import remove_checkerboard
from cellsynth.pix2pixhd.clusters import kmeans, load_appearance, load_clusters, region_classes
from cellsynth.pix2pixhd.losses import GANLoss, VGGLoss, feature_matching_loss, vgg19_features
from cellsynth.pix2pixhd.networks import (
    MultiscaleDiscriminator,
    build_encoder,
    build_generator,
    region_mean,
)
from cellsynth.pix2pixhd.options import DEFAULT_MARGIN, Options
from cellsynth.pix2pixhd.training_loop import Pix2PixHDModel, learning_rate, train
from cellsynth.pix2pixhd.translator import check_margin
from cellsynth.training.checkpoint import load_checkpoint

TINY = dict(
    ngf=8,
    ndf=8,
    n_blocks_global=1,
    n_downsample_global=2,
    n_blocks_local=1,
    nef=4,
    n_downsample_E=2,
    no_vgg_loss=True,
    resize_or_crop="none",
    progress=False,
    print_freq=1,
    display_freq=3,
    save_latest_freq=1000,
)


def make_instances(rng, size=32, n=4):
    """Random rectangles (some touching) as instance ids 1..n."""
    inst = np.zeros((size, size), np.uint16)
    for k in range(1, n + 1):
        top, left = rng.integers(0, size - 8, 2)
        h, w = rng.integers(4, 10, 2)
        inst[top : top + h, left : left + w] = k
    return inst


def make_pairs(root, n_train=4, n_test=2, size=32, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            inst = make_instances(rng, size)
            img = np.where(inst > 0, 170, 30).astype(np.uint8) + rng.integers(0, 40, inst.shape)
            img = img.astype(np.uint8)
            if channels > 1:
                img = np.stack([img] * channels, axis=-1)
            write_image(root / f"{split}_label" / f"s{i}.png", (inst > 0).astype(np.uint8))
            write_image(root / f"{split}_inst" / f"s{i}.png", inst)
            write_image(root / f"{split}_img" / f"s{i}.tif", img)
    info = {
        "label_nc": 2,
        "channels": channels,
        "size": [size, size],
        "splits": {"train": n_train, "test": n_test},
        "source": "test",
    }
    (root / "pairs.json").write_text(json.dumps(info))
    return root


@pytest.fixture
def pairs(tmp_path):
    return make_pairs(tmp_path / "pairs")


def tiny_opt(tmp_path, pairs_root, **kw) -> Options:
    base = dict(TINY, name="run", dataroot=str(pairs_root), checkpoints_dir=str(tmp_path / "ck"))
    base.update(kw)
    return Options(**base).check()


# ---- networks --------------------------------------------------------------------------------
@pytest.mark.parametrize("netG", ["global", "local"])
@pytest.mark.parametrize("feat", [False, True])
@pytest.mark.parametrize(
    "label_nc,no_instance,output_nc", [(0, False, 1), (2, True, 3), (2, False, 1)]
)
def test_generator_shapes(netG, label_nc, no_instance, feat, output_nc):
    opt = Options(
        **dict(
            TINY,
            netG=netG,
            label_nc=label_nc,
            no_instance=no_instance,
            instance_feat=feat,
            output_nc=output_nc,
        )
    ).check()
    torch.manual_seed(0)
    g = build_generator(opt)
    label = torch.randint(0, 2, (2, 32, 32))
    inst = torch.randint(0, 4, (2, 32, 32))
    x = p2p_data.encode_input(label, inst, opt)
    assert x.shape[1] == opt.input_nc_G - (opt.feat_num if feat else 0)
    if feat:
        enc = build_encoder(opt)
        f = enc(torch.rand(2, output_nc, 32, 32) * 2 - 1, inst)
        assert f.shape == (2, opt.feat_num, 32, 32)
        x = torch.cat([x, f], 1)
    y = g(x)
    assert y.shape == (2, output_nc, 32, 32)
    assert float(y.detach().abs().max()) <= 1.0
    d = MultiscaleDiscriminator(opt.input_nc_D, 8, 2, 2)
    out = d(torch.cat([x[:, : opt.input_nc_D - output_nc], y], 1))
    assert len(out) == 2


def _patch_size(n, n_layers):
    """Spatial size after the PatchGAN's 4x4 convs (padding 2): stride 2 n_layers times, then
    stride 1 twice — written out independently of the module."""
    for _ in range(n_layers):
        n = (n + 4 - 4) // 2 + 1
    for _ in range(2):
        n = n + 4 - 4 + 1
    return n


@pytest.mark.parametrize("num_D", [1, 2, 3])
@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_discriminator_shapes(num_D, n_layers):
    d = MultiscaleDiscriminator(input_nc=4, ndf=4, n_layers=n_layers, num_D=num_D)
    out = d(torch.randn(2, 4, 64, 64))
    assert len(out) == num_D
    size = 64
    for k, scale in enumerate(out):
        if k:
            size = (size + 2 - 3) // 2 + 1  # 3x3 average pooling, stride 2, padding 1
        assert len(scale) == n_layers + 2
        assert scale[-1].shape == (2, 1, _patch_size(size, n_layers), _patch_size(size, n_layers))
        assert scale[0].shape[1] == 4
        assert scale[-2].shape[1] == min(4 * 2**n_layers, 512)


def test_local_enhancer_holds_global_fixed(tmp_path, pairs):
    opt = tiny_opt(tmp_path, pairs, netG="local", niter_fix_global=1, label_nc=2, output_nc=1)
    torch.manual_seed(0)
    model = Pix2PixHDModel(opt, torch.device("cpu"))
    batch = p2p_data.load_batch(p2p_data.open_pairs(pairs, "train"), [0], opt, 1, True)
    batch.pop("names")
    g0 = {k: v.clone() for k, v in model.G.global_net.state_dict().items()}
    l0 = {k: v.clone() for k, v in model.G.back.state_dict().items()}
    model.set_epoch(1)
    model.step(batch)
    assert all(torch.equal(g0[k], v) for k, v in model.G.global_net.state_dict().items())
    assert not all(torch.equal(l0[k], v) for k, v in model.G.back.state_dict().items())
    model.set_epoch(2)
    model.step(batch)
    assert not all(torch.equal(g0[k], v) for k, v in model.G.global_net.state_dict().items())


# ---- inputs ----------------------------------------------------------------------------------
def test_edge_map_matches_direct_definition():
    rng = np.random.default_rng(1)
    inst = rng.integers(0, 3, (2, 9, 11))
    edge = p2p_data.edge_map(torch.from_numpy(inst)).numpy()
    assert edge.shape == (2, 1, 9, 11)
    for b in range(2):
        for y in range(9):
            for x in range(11):
                want = 0.0
                for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < 9 and 0 <= xx < 11 and inst[b, yy, xx] != inst[b, y, x]:
                        want = 1.0
                assert edge[b, 0, y, x] == want


def test_region_mean_matches_loop():
    rng = np.random.default_rng(2)
    feat = torch.from_numpy(rng.normal(size=(2, 3, 6, 7)).astype(np.float32))
    regions = torch.from_numpy(rng.integers(0, 4, (2, 6, 7)))
    out = region_mean(feat, regions).numpy()
    for b in range(2):
        for r in np.unique(regions[b].numpy()):
            m = regions[b].numpy() == r
            want = feat[b].numpy()[:, m].mean(axis=1)
            np.testing.assert_allclose(
                out[b][:, m], np.repeat(want[:, None], m.sum(), 1), rtol=1e-5, atol=1e-6
            )


def test_encode_input_one_hot_and_direct():
    opt = Options(**dict(TINY, label_nc=3, output_nc=1)).check()
    label = torch.tensor([[[0, 1], [2, 1]]])
    inst = torch.tensor([[[0, 1], [2, 1]]])
    x = p2p_data.encode_input(label, inst, opt)
    assert x.shape == (1, 4, 2, 2)
    for c in range(3):
        assert torch.equal(x[0, c], (label[0] == c).float())
    with pytest.raises(CellsynthError, match="label_nc"):
        p2p_data.encode_input(torch.tensor([[[0, 3]]]), torch.zeros(1, 1, 2).long(), opt)
    direct = opt.replace(label_nc=0, no_instance=True)
    assert torch.equal(p2p_data.encode_input(label, None, direct)[:, 0], label.float())


@pytest.mark.parametrize("mode", ["crop", "resize_and_crop", "scale_width_and_crop", "none"])
def test_same_transform_for_label_inst_image(tmp_path, mode):
    """The image is a copy of the instance map: after the transform it must still be one."""
    rng = np.random.default_rng(3)
    inst = make_instances(rng, 40, 5)
    item = {
        "name": "a",
        "label": (inst > 0).astype(np.uint8),
        "inst": inst,
        "image": (inst * 40).astype(np.uint8),
    }
    opt = Options(
        **dict(TINY, resize_or_crop=mode, loadSize=40, fineSize=24, label_nc=2, output_nc=1)
    ).check()
    for seed in range(6):
        params = p2p_data.transform_params(opt, (40, 40), np.random.default_rng(seed), True)
        out = p2p_data.prepare_item(item, opt, params)
        img_ids = np.rint((out["image"][0].numpy() + 1) * 127.5 / 40).astype(int)
        expect = (24, 24) if mode != "none" else (40, 40)
        assert out["inst"].shape == expect
        assert np.array_equal(img_ids, out["inst"].numpy())
        assert np.array_equal(out["label"].numpy(), (out["inst"].numpy() > 0).astype(int))
    flips = {
        p2p_data.transform_params(opt, (40, 40), np.random.default_rng(s), True)["flip"]
        for s in range(20)
    }
    assert flips == {True, False}
    assert not p2p_data.transform_params(
        opt.replace(no_flip=True), (40, 40), np.random.default_rng(0), True
    )["flip"]


def test_transform_sizes():
    opt = Options(
        **dict(TINY, resize_or_crop="scale_width", loadSize=64, label_nc=2, output_nc=1)
    ).check()
    p = p2p_data.transform_params(opt, (30, 60), np.random.default_rng(0), False)
    assert p["resize"] == (32, 64) and p["final"] == (32, 64)  # multiples of 4
    p = p2p_data.transform_params(
        opt.replace(resize_or_crop="none"), (30, 61), np.random.default_rng(0), False
    )
    assert p["final"] == (32, 60)
    with pytest.raises(CellsynthError, match="fineSize"):
        p2p_data.transform_params(
            opt.replace(resize_or_crop="crop", fineSize=64),
            (30, 30),
            np.random.default_rng(0),
            True,
        )


# ---- losses ----------------------------------------------------------------------------------
def test_gan_losses_against_formulas():
    pred = torch.tensor([[0.5, -2.0], [1.5, 0.0]]).view(1, 1, 2, 2)
    out = [[torch.zeros(1), pred]]
    p = pred.flatten()
    assert torch.isclose(GANLoss("lsgan")(out, True), ((p - 1) ** 2).mean())
    assert torch.isclose(GANLoss("lsgan")(out, False), (p**2).mean())
    assert torch.isclose(GANLoss("vanilla")(out, True), -torch.log(torch.sigmoid(p)).mean())
    assert torch.isclose(GANLoss("hinge")(out, True), torch.clamp(1 - p, min=0).mean())
    assert torch.isclose(GANLoss("hinge")(out, False), torch.clamp(1 + p, min=0).mean())
    assert torch.isclose(GANLoss("hinge")(out, True, for_discriminator=False), -p.mean())
    two = [[pred], [pred * 2]]
    assert torch.isclose(GANLoss("lsgan")(two, False), (p**2).mean() + ((2 * p) ** 2).mean())
    a = [[torch.ones(2), torch.zeros(3), torch.ones(1)]]
    b = [[torch.zeros(2), torch.ones(3), torch.zeros(1)]]
    assert torch.isclose(feature_matching_loss(a, b, 10.0), torch.tensor(20.0))
    with pytest.raises(CellsynthError):
        GANLoss("wgan")


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A random VGG19 'features' state dict in torchvision's layout (key names and shapes)."""
    torch.manual_seed(0)
    feats = vgg19_features()
    state = {f"features.{k}": v for k, v in feats.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # extra keys (classifier) are ignored
    path = tmp_path_factory.mktemp("vgg") / "vgg19.pth"
    torch.save(state, path)
    return path


def test_vgg_loss_from_file(vgg_file, monkeypatch):
    vgg = VGGLoss.load(str(vgg_file))
    ref = vgg19_features()
    ref.load_state_dict({k[9:]: v for k, v in torch.load(vgg_file).items() if "features" in k})
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    y = torch.rand(1, 1, 32, 32) * 2 - 1
    assert float(vgg(x, x)) == 0.0
    assert float(vgg(x, y)) > 0.0
    # 1 channel -> repeated to 3 with ImageNet normalisation, then the first VGG layers
    x3 = ((x.repeat(1, 3, 1, 1) + 1) / 2 - vgg.mean) / vgg.std
    torch.testing.assert_close(vgg.extract(x)[0], ref[:2](x3))
    monkeypatch.setenv("CELLSYNTH_VGG19", str(vgg_file))
    assert isinstance(VGGLoss.load(None), VGGLoss)


def test_vgg_missing_or_wrong_file(tmp_path, monkeypatch):
    with pytest.raises(CellsynthError, match="no_vgg_loss"):
        VGGLoss.load(str(tmp_path / "nope.pth"))
    monkeypatch.delenv("CELLSYNTH_VGG19", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(CellsynthError, match="--vgg_weights"):
        VGGLoss.load(None, allow_download=False)
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, bad)
    with pytest.raises(CellsynthError, match="VGG19"):
        VGGLoss.load(str(bad))


def test_training_with_vgg_file(tmp_path, pairs, vgg_file):
    opt = tiny_opt(
        tmp_path,
        pairs,
        no_vgg_loss=False,
        vgg_weights=str(vgg_file),
        niter=1,
        niter_decay=0,
        max_iters=2,
    )
    run = train(opt)
    stats = [json.loads(s) for s in (run / "stats.jsonl").read_text().splitlines()]
    assert len(stats) == 2 and all(s["G_VGG"] > 0 for s in stats)
    missing = tiny_opt(
        tmp_path, pairs, name="r2", no_vgg_loss=False, vgg_weights=str(tmp_path / "none.pth")
    )
    with pytest.raises(CellsynthError, match="not found"):
        train(missing)
    assert not (tmp_path / "ck" / "r2").exists()


# ---- training --------------------------------------------------------------------------------
@pytest.mark.parametrize("gan_mode", ["vanilla", "hinge"])
def test_other_gan_losses_train(tmp_path, pairs, gan_mode):
    kw = {"no_lsgan": True} if gan_mode == "vanilla" else {"gan_mode": gan_mode}
    if gan_mode == "hinge":
        kw.update(instance_feat=True, netG="local", num_D=3, n_layers_D=1)
    run = train(tiny_opt(tmp_path, pairs, niter=1, niter_decay=0, max_iters=2, **kw))
    stats = [json.loads(s) for s in (run / "stats.jsonl").read_text().splitlines()]
    assert len(stats) == 2
    for s in stats:
        assert all(np.isfinite(s[k]) for k in ("G_GAN", "G_GAN_Feat", "D_real", "D_fake"))


def test_training_steps(tmp_path, pairs):
    opt = tiny_opt(tmp_path, pairs, niter=1, niter_decay=1)
    run = train(opt)
    stats = [json.loads(s) for s in (run / "stats.jsonl").read_text().splitlines()]
    assert len(stats) == 8
    for s in stats:
        assert all(np.isfinite(s[k]) for k in ("G_GAN", "G_GAN_Feat", "D_real", "D_fake"))
    assert [s["lr"] for s in stats] == [opt.lr] * 4 + [opt.lr / 2] * 4
    assert (run / "latest.pt").is_file() and (run / "epoch_2.pt").is_file()
    assert (run / "web" / "index.html").is_file()
    assert len(list((run / "web" / "images").glob("*.png"))) == 3 * 2  # iterations 3 and 6
    assert json.loads((run / "opt.json").read_text())["label_nc"] == 2
    ckpt = load_checkpoint(run / "latest.pt", kind="pix2pixhd")
    assert ckpt["epoch"] == 3 and ckpt["total_iters"] == 8
    with pytest.raises(CellsynthError, match="continue_train"):
        train(opt)


def test_learning_rate_schedule():
    opt = Options(niter=2, niter_decay=3, lr=1.0).check()
    rates = [learning_rate(opt, e) for e in range(1, 6)]
    assert rates == [1.0, 1.0, 0.75, 0.5, 0.25]


def test_resume_is_exact(tmp_path, pairs):
    common = dict(
        niter=1, niter_decay=1, batchSize=2, resize_or_crop="crop", fineSize=28, loadSize=32
    )
    full = train(tiny_opt(tmp_path, pairs, name="full", **common))
    part = tiny_opt(tmp_path, pairs, name="part", max_iters=1, **common)
    train(part)
    ckpt = load_checkpoint(tmp_path / "ck" / "part" / "latest.pt")
    assert (ckpt["epoch"], ckpt["epoch_iter"], ckpt["total_iters"]) == (1, 1, 1)
    train(part.replace(max_iters=None, continue_train=True))
    a = load_checkpoint(full / "latest.pt")
    b = load_checkpoint(tmp_path / "ck" / "part" / "latest.pt")
    assert a["total_iters"] == b["total_iters"] == 4
    for net in ("G", "D"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), (net, k)
    with pytest.raises(CellsynthError, match="epoch_7"):
        train(part.replace(continue_train=True, which_epoch="7"))


def test_load_pretrain_fine_tunes_a_weights_only_generator(tmp_path, pairs):
    from cellsynth.models import export_weights

    first = train(tiny_opt(tmp_path, pairs, name="first", niter=1, niter_decay=0, max_iters=2))
    weights = export_weights(first / "latest.pt", tmp_path / "g.pt", ("G",), "pix2pixhd")
    ft = train(
        tiny_opt(
            tmp_path,
            pairs,
            name="ft",
            load_pretrain=str(weights),
            lr=1e-12,
            seed=1,
            niter=1,
            niter_decay=0,
            max_iters=1,
        )
    )
    start = load_checkpoint(first / "latest.pt")["G"]
    after = load_checkpoint(ft / "latest.pt")
    assert after["total_iters"] == 1  # a new run: counters start at zero
    fresh = load_checkpoint(
        train(tiny_opt(tmp_path, pairs, name="fresh", max_iters=1, seed=1)) / "latest.pt"
    )
    far = 0.0
    for k, v in start.items():
        if v.is_floating_point():
            assert torch.allclose(after["G"][k], v, atol=2e-3, rtol=2e-3), k  # fp16 + 1e-12 step
            far = max(far, float((fresh["G"][k] - v).abs().max()))
    assert far > 0.05  # a fresh initialisation (seed 1 like the fine-tuned run) is far from it
    with pytest.raises(CellsynthError, match="does not fit these options"):
        train(tiny_opt(tmp_path, pairs, name="bad", ngf=4, load_pretrain=str(weights)))
    assert not (tmp_path / "ck" / "bad").exists()
    with pytest.raises(CellsynthError, match="cannot be combined"):
        tiny_opt(tmp_path, pairs, name="ft", load_pretrain=str(weights), continue_train=True)
    with pytest.raises(CellsynthError, match="nope"):
        train(tiny_opt(tmp_path, pairs, name="x", load_pretrain=str(tmp_path / "nope.pt")))


def test_load_pretrain_widens_a_generator_for_features(tmp_path, pairs):
    """A generator trained without features starts an --instance_feat run: zero weights on the
    feature channels, so it makes exactly what it made whatever the features say; --d_warmup
    keeps G and E fixed while D learns."""
    from cellsynth.models import export_weights
    from cellsynth.pix2pixhd.training_loop import load_pretrained_G, resolve_data

    first = train(tiny_opt(tmp_path, pairs, name="first", niter=1, niter_decay=0, max_iters=2))
    weights = export_weights(first / "latest.pt", tmp_path / "g.pt", ("G",), "pix2pixhd")
    plain = resolve_data(tiny_opt(tmp_path, pairs, name="first"))[0]
    feat_opt = resolve_data(
        tiny_opt(
            tmp_path,
            pairs,
            name="ft",
            instance_feat=True,
            load_pretrain=str(weights),
            n_downsample_E=3,  # training sides: multiples of 8; the generator's: of 4
        )
    )[0]
    assert (feat_opt.size_multiple, feat_opt.generator_multiple) == (8, 4)
    old_g, new_g = build_generator(plain), build_generator(feat_opt)
    old_g.load_state_dict(load_checkpoint(weights)["G"])
    new_g.load_state_dict(load_pretrained_G(feat_opt))
    widened = [k for k, v in new_g.state_dict().items() if v.shape != old_g.state_dict()[k].shape]
    assert widened and all(new_g.state_dict()[k].shape[1] == 3 + 3 for k in widened)
    for k in widened:
        assert torch.count_nonzero(new_g.state_dict()[k][:, 3:]) == 0
    label = torch.randint(0, 2, (1, 32, 32))
    inst = torch.from_numpy(make_instances(np.random.default_rng(1)).astype(np.int64))[None]
    x = p2p_data.encode_input(label, inst, plain)
    with torch.no_grad():
        want = old_g(x)
        for scale in (0.0, 5.0):
            got = new_g(torch.cat([x, scale * torch.randn(1, 3, 32, 32)], dim=1))
            assert torch.allclose(got, want, atol=1e-6)
    # d_warmup: the first 2 iterations change D only; the third moves G (and E) too
    ft = train(feat_opt.replace(d_warmup=2, niter=1, niter_decay=0, max_iters=2, seed=3))
    held = load_checkpoint(ft / "latest.pt")
    start = load_pretrained_G(feat_opt)
    assert all(torch.equal(held["G"][k], v.float()) for k, v in start.items())
    assert held["E"] and held["D"]
    # translating, the widened model pads to its generator's multiple, not the encoder's: a
    # 36 x 36 map comes out as the plain generator makes it, whatever features it draws
    from cellsynth.pix2pixhd.clusters import compute_clusters

    compute_clusters(ft, progress=False)
    inst36 = make_instances(np.random.default_rng(2), 36)
    lab36 = (inst36 > 0).astype(np.uint8)
    a, b = Translator.load(ft, margin=0), Translator.load(weights, margin=0)
    for seed in (0, 1):
        assert np.array_equal(a.translate(lab36, inst36, seed), b.translate(lab36, inst36, seed))
    moved = train(
        feat_opt.replace(name="ft3", d_warmup=2, niter=1, niter_decay=0, max_iters=3, seed=3)
    )
    g3 = load_checkpoint(moved / "latest.pt")["G"]
    assert any(not torch.equal(g3[k], v.float()) for k, v in start.items())
    with pytest.raises(CellsynthError, match="d_warmup"):
        tiny_opt(tmp_path, pairs, d_warmup=-1)


def test_two_processes_gloo(tmp_path, pairs):
    run = train(tiny_opt(tmp_path, pairs, gpus=2, niter=1, niter_decay=0, device="cpu"))
    ckpt = load_checkpoint(run / "latest.pt")
    assert ckpt["total_iters"] == 2  # 4 pairs / (1 per process x 2 processes)
    assert all(torch.isfinite(v).all() for v in ckpt["G"].values())
    stats = [json.loads(s) for s in (run / "stats.jsonl").read_text().splitlines()]
    assert len(stats) == 2 and all(np.isfinite(s["D_real"]) for s in stats)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU message")
def test_fp16_needs_cuda_or_a_bf16_cpu(tmp_path, pairs, monkeypatch):
    from cellsynth import precision

    if torch.cuda.is_available():
        pytest.skip("CUDA present: --fp16 is fp16 AMP there")
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    with pytest.raises(CellsynthError, match="CUDA device or a CPU with native bf16"):
        train(tiny_opt(tmp_path, pairs, fp16=True))
    assert not any(tmp_path.glob("**/*.pt"))


def test_fp16_trains_in_bf16_on_a_bf16_cpu(tmp_path, pairs, monkeypatch):
    from cellsynth import precision

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)  # (emulated where it is not)
    run = train(tiny_opt(tmp_path, pairs, fp16=True, device="cpu", niter=1, niter_decay=0))
    stats = [json.loads(s) for s in (run / "stats.jsonl").read_text().splitlines()]
    assert stats and all(np.isfinite(s["G_GAN"]) and np.isfinite(s["D_real"]) for s in stats)
    assert "bf16" in (run / "log.txt").read_text()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_training_on_cuda(tmp_path, pairs):
    run = train(tiny_opt(tmp_path, pairs, fp16=True, device="cuda", niter=1, niter_decay=0))
    stats = [json.loads(s) for s in (run / "stats.jsonl").read_text().splitlines()]
    assert all(np.isfinite(s["G_GAN"]) for s in stats)
    tr = Translator.load(run, device="cuda")
    assert tr.translate(np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.uint16)).shape == (
        32,
        32,
    )


# ---- translator and clusters -----------------------------------------------------------------
def test_translator(tmp_path, pairs):
    run = train(tiny_opt(tmp_path, pairs, niter=1, niter_decay=0))
    tr = Translator.load(run, margin=0)
    assert (tr.label_nc, tr.output_nc, tr.size) == (2, 1, (32, 32))
    inst = make_instances(np.random.default_rng(9), 32)
    lab = (inst > 0).astype(np.uint8)
    a = tr.translate(lab, inst)
    assert a.shape == (32, 32) and a.dtype == np.uint8
    assert np.array_equal(a, Translator.load(run / "latest.pt", margin=0).translate(lab, inst))
    # the same as running the generator by hand
    x = p2p_data.encode_input(
        torch.from_numpy(lab.astype(np.int64))[None],
        torch.from_numpy(inst.astype(np.int64))[None],
        tr.opt,
    )
    with torch.no_grad():
        y = tr.G(x)[0, 0].numpy()
    raw = Translator.load(run, dechecker=False, margin=0)
    assert raw.checkerboard_period == tr.checkerboard_period == 4 and tr.dechecker
    assert not raw.dechecker
    b = raw.translate(lab, inst)
    assert np.abs(b.astype(int) - np.rint((y + 1) * 127.5).astype(int)).max() <= 1
    # by default the transposed convolutions' period-4 pattern is divided out
    level = np.clip((y + 1) * 127.5, 0, None)
    want = np.rint(np.clip(remove_checkerboard(level, 4), 0, 255)).astype(int)
    assert np.abs(a.astype(int) - want).max() <= 1 and not np.array_equal(a, b)
    odd = tr.translate(lab[:30, :29], inst[:30, :29])  # padded to multiples of 4, cropped back
    assert odd.shape == (30, 29)
    batch = tr.translate_batch([lab, lab[:30, :29]], [inst, inst[:30, :29]])
    assert np.array_equal(batch[0], a) and np.array_equal(batch[1], odd)
    with pytest.raises(CellsynthError, match="0..1"):
        tr.translate(lab * 2, inst)
    with pytest.raises(CellsynthError, match="instance"):
        tr.translate(lab, inst[:10])
    with pytest.raises(CellsynthError, match="integer"):
        tr.translate(lab.astype(np.float32), inst)
    with pytest.raises(CellsynthError, match="no such"):
        Translator.load(tmp_path / "missing")
    with pytest.raises(CellsynthError, match="which_epoch"):
        Translator.load(run, which_epoch=5)


def _by_hand(tr, lab, inst, margin, blur=0.0):
    """The translator's image made by hand: mirror-pad by ``margin`` (then to a multiple of 8
    at the far ends), run the generator, filter the checkerboard, blur, cut the map's place
    out."""
    h, w = lab.shape
    pad = ((margin, margin + (-(h + 2 * margin)) % 8), (margin, margin + (-(w + 2 * margin)) % 8))
    big_lab, big_inst = np.pad(lab, pad, mode="symmetric"), np.pad(inst, pad, mode="symmetric")
    assert big_lab.shape[0] % 8 == 0 and big_lab.shape[1] % 8 == 0
    x = p2p_data.encode_input(
        torch.from_numpy(big_lab.astype(np.int64))[None],
        torch.from_numpy(big_inst.astype(np.int64))[None],
        tr.opt,
    )
    with torch.no_grad():
        y = tr.G(x)[0, 0].numpy()[: h + 2 * margin, : w + 2 * margin]
    level = remove_checkerboard(np.clip((y + 1) * 127.5, 0, None), tr.checkerboard_period)
    if blur:
        from scipy.ndimage import gaussian_filter

        level = gaussian_filter(level, blur, mode="reflect")
    return np.rint(np.clip(level, 0, 255)).astype(int)[margin : margin + h, margin : margin + w]


def test_translator_margin(tmp_path, pairs):
    run = train(tiny_opt(tmp_path, pairs, niter=1, niter_decay=0, n_downsample_global=3))
    inst = make_instances(np.random.default_rng(4), 32)
    lab = (inst > 0).astype(np.uint8)
    tr = Translator.load(run)
    assert tr.margin == DEFAULT_MARGIN > 0 and tr.checkerboard_period == 8
    for margin, (h, w) in ((0, (32, 32)), (12, (32, 32)), (12, (29, 23)), (40, (29, 23))):
        tr.margin = check_margin(margin)  # 40: more than the map, mirrored again
        got = tr.translate(lab[:h, :w], inst[:h, :w])
        assert got.shape == (h, w) and got.dtype == np.uint8
        want = _by_hand(tr, lab[:h, :w], inst[:h, :w], margin)
        assert np.abs(got.astype(int) - want).max() <= 1, (margin, h, w)
    # the context changes the image near the edges more than in the middle
    tr.margin = 0
    a = tr.translate(lab, inst).astype(float)
    tr.margin = 16
    b = tr.translate(lab, inst).astype(float)
    edge = np.ones((32, 32), bool)
    edge[4:-4, 4:-4] = False
    assert np.abs(a - b)[edge].mean() > np.abs(a - b)[~edge].mean()
    for bad in (-1, 2.5, True, "8"):
        with pytest.raises(CellsynthError, match="margin"):
            Translator.load(run, margin=bad)
    # the last smoothing: on the whole output (margin included), before the rounding
    tr.margin, tr.blur = 12, 0.8
    got = tr.translate(lab[:29, :23], inst[:29, :23])
    want = _by_hand(tr, lab[:29, :23], inst[:29, :23], 12, blur=0.8)
    assert np.abs(got.astype(int) - want).max() <= 1
    for bad in (-0.1, float("nan"), float("inf"), True):
        with pytest.raises(CellsynthError, match="blur"):
            Translator.load(run, blur=bad)


def test_kmeans_finds_separated_blobs():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]], float)
    x = np.concatenate([c + rng.normal(0, 0.1, (30, 2)) for c in centres])
    found = kmeans(x, 3, seed=1)
    for c in centres:
        assert np.min(np.linalg.norm(found - c, axis=1)) < 0.1
    assert np.array_equal(found, kmeans(x, 3, seed=1))
    assert kmeans(np.ones((5, 2)), 3).shape == (1, 2)


def test_region_classes():
    regions = np.array([[0, 0, 5], [5, 5, 7]])
    labels = np.array([[0, 0, 1], [1, 0, 2]])
    ids, inverse, classes = region_classes(regions, labels)
    assert ids.tolist() == [0, 5, 7] and classes.tolist() == [0, 1, 2]
    assert np.array_equal(ids[inverse], regions)


def test_clusters_and_feature_sampling(tmp_path, pairs, capsys):
    from cellsynth.cli import main

    run = train(tiny_opt(tmp_path, pairs, instance_feat=True, niter=1, niter_decay=0))
    with pytest.raises(CellsynthError, match="clusters"):
        Translator.load(run)
    main(
        [
            "pix2pixhd",
            "clusters",
            "--name",
            "run",
            "--checkpoints_dir",
            str(tmp_path / "ck"),
            "--n_clusters",
            "3",
            "--no-progress",
        ]
    )
    table = load_clusters(run / "clusters.npz", feat_num=3)
    assert set(table) == {0, 1} and all(v.shape == (3, 3) for v in table.values())
    meta = json.loads((run / "clusters.json").read_text())
    assert meta["classes"] == {"0": 3, "1": 3}
    tr = Translator.load(run, appearance="clusters")
    inst = make_instances(np.random.default_rng(4), 32)
    lab = (inst > 0).astype(np.uint8)
    feats = [tr._features(lab.astype(np.int64), inst.astype(np.int64), s) for s in range(6)]
    for f in feats:  # constant inside each instance, and one of the class's centres
        for r in np.unique(inst):
            vals = f[:, inst == r]
            assert np.all(vals == vals[:, :1])
            cls = int(lab[inst == r][0])
            assert np.any(np.all(np.isclose(table[cls], vals[:, 0]), axis=1))
    assert any(not np.array_equal(feats[0], f) for f in feats[1:])
    assert np.array_equal(tr.translate(lab, inst, seed=2), tr.translate(lab, inst, seed=2))
    # the bank: one row per region of every training image (background + its cells), each the
    # encoder's mean over that region, recomputed here independently
    app = load_appearance(run / "clusters.npz", feat_num=3)
    ckpt = load_checkpoint(run / "latest.pt")
    opt = Options.from_dict(ckpt["config"]["opt"])
    enc = build_encoder(opt)
    enc.load_state_dict(ckpt["E"])
    ds = p2p_data.open_pairs(pairs, "train")
    rows = 0
    for i in range(len(ds)):
        b = p2p_data.load_batch(ds, [i], opt, 0, train=False)
        with torch.no_grad():
            f = enc.eval()(b["image"], b["inst"])[0].numpy()
        mine = app.bank_images == i
        ids = np.unique(b["inst"][0].numpy())
        assert mine.sum() == len(ids)
        for r, vec, cls in zip(ids, app.bank_features[mine], app.bank_classes[mine]):
            where = b["inst"][0].numpy() == r
            assert np.allclose(f[:, where].mean(axis=1), vec, atol=1e-5)
            assert cls == (0 if r == 0 else 1)
        rows += len(ids)
    assert rows == len(app.bank_features)
    # appearance "image" (the default with a bank): every region of a map takes a region of its
    # class in one and the same training image
    tr = Translator.load(run)
    assert tr.appearance == "image"
    drawn = set()
    for s in range(12):
        f = tr._features(lab.astype(np.int64), inst.astype(np.int64), s)
        sources = []
        for r in np.unique(inst):
            vec = f[:, inst == r][:, 0]
            cls = 0 if r == 0 else 1
            hit = np.flatnonzero(
                np.all(np.isclose(app.bank_features, vec), axis=1) & (app.bank_classes == cls)
            )
            assert len(hit)
            sources.append(set(app.bank_images[hit].tolist()))
        common = set.intersection(*sources)
        assert common
        drawn |= common
    assert len(drawn) > 1  # seeds draw different training images
    assert np.array_equal(tr.translate(lab, inst, seed=5), tr.translate(lab, inst, seed=5))
    with pytest.raises(CellsynthError, match="unknown appearance"):
        Translator.load(run, appearance="nearest")
    np.savez(tmp_path / "centres.npz", **{f"class_{c}": v for c, v in table.items()})
    assert Translator.load(run, clusters=tmp_path / "centres.npz").appearance == "clusters"
    with pytest.raises(CellsynthError, match="feature bank"):
        Translator.load(run, clusters=tmp_path / "centres.npz", appearance="image")
    np.savez(tmp_path / "half.npz", class_0=table[0], bank_features=app.bank_features)
    with pytest.raises(CellsynthError, match="bank needs"):
        Translator.load(run, clusters=tmp_path / "half.npz")
    # a weights-only export carries the clusters and the bank: it draws the same features in
    # a folder without clusters.npz, and loads with weights_only
    out = tmp_path / "shipped" / "translator.pt"
    out.parent.mkdir()
    args = ["models", "export", "--kind", "pix2pixhd", "--checkpoint", str(run), "--fp32"]
    main([*args, "--out", str(out)])
    torch.load(out, weights_only=True)
    shipped = Translator.load(out)
    assert shipped.appearance == "image"
    for s in (0, 7):
        assert np.array_equal(shipped.translate(lab, inst, seed=s), tr.translate(lab, inst, seed=s))
    # it keeps the encoder too: a fine-tune from it goes on with the same features
    assert set(load_checkpoint(out)["E"]) == set(ckpt["E"])
    ft = train(
        tiny_opt(
            tmp_path,
            pairs,
            name="ft",
            instance_feat=True,
            load_pretrain=str(out),
            d_warmup=1,
            max_iters=1,
            niter=1,
            niter_decay=0,
        )
    )
    e = load_checkpoint(ft / "latest.pt")["E"]
    assert all(torch.equal(e[k], v) for k, v in ckpt["E"].items())
    (run / "clusters.npz").rename(tmp_path / "moved.npz")
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main([*args, "--out", str(tmp_path / "none.pt")])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1 and "clusters" in err
    assert not (tmp_path / "none.pt").exists()


# ---- data errors and the CLI -------------------------------------------------------------------
def test_unpaired_and_mismatched_pairs(tmp_path, pairs):
    reader = p2p_data.open_pairs  # the pairs reader of cellsynth.datasets.pack, cached
    (pairs / "train_img" / "s1.tif").rename(pairs / "train_img" / "zz.tif")
    with pytest.raises(CellsynthError, match="unpaired"):
        reader(pairs, "train")
    (pairs / "train_img" / "zz.tif").rename(pairs / "train_img" / "s1.tif")
    write_image(pairs / "train_img" / "s1.tif", np.zeros((32, 16), np.uint8))
    ds = reader(pairs, "train")
    with pytest.raises(CellsynthError, match="size mismatch|sizes differ"):
        ds[1]
    shutil.rmtree(pairs / "test_label")
    with pytest.raises(CellsynthError, match="test_label"):
        reader(pairs, "test")


def test_bad_channels_and_label_ids(tmp_path):
    rgb = make_pairs(tmp_path / "rgb", channels=3)
    with pytest.raises(CellsynthError, match="channels"):
        train(tiny_opt(tmp_path, rgb, output_nc=1))
    run = train(tiny_opt(tmp_path, rgb, name="rgb", niter=1, niter_decay=0, max_iters=1))
    assert Translator.load(run).output_nc == 3
    bad = make_pairs(tmp_path / "bad")
    write_image(bad / "train_label" / "s0.png", np.full((32, 32), 5, np.uint8))
    with pytest.raises(CellsynthError, match="label_nc"):
        train(tiny_opt(tmp_path, bad, name="bad"))


def test_cli_train_test_and_errors(tmp_path, pairs, capsys):
    from cellsynth.cli import main

    ck = str(tmp_path / "ck")
    args = [
        "pix2pixhd",
        "train",
        "--name",
        "c",
        "--dataroot",
        str(pairs),
        "--checkpoints_dir",
        ck,
        "--ngf",
        "8",
        "--ndf",
        "8",
        "--n_blocks_global",
        "1",
        "--n_downsample_global",
        "2",
        "--niter",
        "1",
        "--niter_decay",
        "0",
        "--no_vgg_loss",
        "--resize_or_crop",
        "none",
        "--no-progress",
    ]
    main(args)
    res = str(tmp_path / "res")
    test_args = [
        "pix2pixhd",
        "test",
        "--name",
        "c",
        "--checkpoints_dir",
        ck,
        "--results_dir",
        res,
        "--how_many",
        "1",
        "--no-progress",
    ]
    main(test_args)
    out = tmp_path / "res" / "c" / "test_latest"
    assert (out / "index.html").is_file()
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        "s0_input_label.png",
        "s0_real_image.png",
        "s0_synthesized_image.png",
    ]
    assert (out / "synthesized" / "s0.tif").is_file()
    capsys.readouterr()
    for bad in (
        test_args,
        ["pix2pixhd", "test", "--name", "nope", "--checkpoints_dir", ck],
        args[:-1] + ["--resize_or_crop", "none"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(bad)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err


def test_options_checked():
    for bad in (
        {"resize_or_crop": "zoom"},
        {"netG": "huge"},
        {"gan_mode": "wgan"},
        {"which_epoch": "best"},
        {"ngf": 0},
        {"output_nc": 5},
    ):
        with pytest.raises(CellsynthError, match=next(iter(bad))):
            Options(**bad).check()
    with pytest.raises(CellsynthError, match="unknown"):
        Options.from_dict({"ngf": 8, "bogus": 1}, strict=True)
    opt = Options(label_nc=3, output_nc=1, instance_feat=True, netG="local")
    assert opt.input_nc_G == 3 + 1 + 3 and opt.input_nc_D == 3 + 1 + 1
    assert opt.size_multiple == 2 ** (4 + 1)
    assert Options.from_dict(json.loads(opt.to_json())) == opt


def test_time_budget_and_dataset_size(tmp_path, pairs):
    run = train(tiny_opt(tmp_path, pairs, max_minutes=0.0, max_dataset_size=2, niter=3))
    ckpt = load_checkpoint(run / "latest.pt")
    assert (ckpt["epoch"], ckpt["epoch_iter"], ckpt["total_iters"]) == (1, 1, 1)
    run = train(tiny_opt(tmp_path, pairs, name="small", max_dataset_size=2, niter=1, niter_decay=0))
    assert load_checkpoint(run / "latest.pt")["total_iters"] == 2
