"""StyleGAN2/3 generators and the StyleGAN2 discriminator: shapes, rebuilds, truncation,
equivariance of the alias-free configs, errors. Tiny networks at 32x32 (CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from cellsynth.errors import CellsynthError
from cellsynth.stylegan3.networks import CONFIGS, Discriminator, Generator, build_networks
from cellsynth.stylegan3.networks_stylegan2 import MinibatchStdLayer

R = 32
TINY = dict(cbase=128, cmax=8, z_dim=16, w_dim=16)


def _z(n, seed=0, dim=16):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def _rel_err(a, b):
    return float((a - b).norm() / (a - a.mean()).norm())


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_finite_and_backward(cfg, channels):
    G, D = build_networks(cfg, R, channels, c_dim=2, seed=1, **TINY)
    c = torch.eye(2)[[0, 1]]
    ws = G.mapping(_z(2), c)
    assert ws.shape == (2, G.num_ws, 16)
    img = G.synthesis(ws, noise_mode="random")
    assert img.shape == (2, channels, R, R) and img.dtype == torch.float32
    assert torch.isfinite(img).all() and img.std() > 0
    logits = D(img, c)
    assert logits.shape == (2, 1) and torch.isfinite(logits).all()
    logits.sum().backward()
    grads = [p.grad for p in G.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert G.num_ws == (16 if cfg != "stylegan2" else 2 * 5 - 2)
    # the conditioning changes the output
    with torch.no_grad():
        other = G(_z(2), torch.eye(2)[[1, 0]])
    assert not torch.allclose(other, img.detach())


def test_build_networks_defaults():
    G3, D3 = build_networks("stylegan3-t", R, 1, seed=0, **TINY)
    Gr, Dr = build_networks("stylegan3-r", R, 1, seed=0, **TINY)
    G2, _ = build_networks("stylegan2", R, 1, seed=0, **TINY)
    assert G3.init_kwargs["cbase"] == TINY["cbase"] and Gr.init_kwargs["cbase"] == 2 * TINY["cbase"]
    assert Gr.init_kwargs["cmax"] == 2 * TINY["cmax"] and Dr.init_kwargs["cmax"] == TINY["cmax"]
    assert len(G3.mapping.layers) == 2 and len(G2.mapping.layers) == 8
    assert G3.synthesis.layers[0].conv_kernel == 3 and Gr.synthesis.layers[0].conv_kernel == 1
    assert Gr.synthesis.layers[0].down_filter.ndim == 2  # radial (jinc) filter
    assert G3.synthesis.layers[0].down_filter.ndim == 1  # separable sinc filter
    # -r really has twice the channels of -t (cmax-bound here)
    assert Gr.synthesis.layers[0].in_channels == 2 * G3.synthesis.layers[0].in_channels
    # same seed -> same weights; the global RNG is left alone
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    G3b, _ = build_networks("stylegan3-t", R, 1, seed=0, **TINY)
    assert torch.equal(torch.rand(1), before)
    for a, b in zip(G3.state_dict().values(), G3b.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_init_kwargs_rebuild(cfg):
    G, D = build_networks(cfg, R, 1, c_dim=3, seed=2, **TINY)
    G2 = Generator(**json.loads(json.dumps(G.init_kwargs)))
    D2 = Discriminator(**json.loads(json.dumps(D.init_kwargs)))
    G2.load_state_dict(G.state_dict())
    D2.load_state_dict(D.state_dict())
    z, c = _z(2), torch.eye(3)[[0, 2]]
    with torch.no_grad():
        img = G(z, c, noise_mode="const")
        assert torch.equal(img, G2(z, c, noise_mode="const"))
        assert torch.equal(D(img, c), D2(img, c))


@pytest.mark.parametrize("cfg", CONFIGS)
def test_truncation(cfg):
    G, _ = build_networks(cfg, R, 1, seed=3, **TINY)
    with torch.no_grad():
        for i in range(3):  # track w_avg
            G.mapping(_z(8, seed=10 + i), None, update_emas=True)
        assert G.mapping.w_avg.abs().sum() > 0
        ws = G.mapping(_z(4), None, truncation_psi=0)
        assert torch.allclose(ws, G.mapping.w_avg.expand_as(ws))
        imgs = G(_z(2), None, truncation_psi=0, noise_mode="const")
        ref = G.synthesis(G.mapping.w_avg.expand(1, G.num_ws, -1), noise_mode="const")
        assert torch.allclose(imgs, ref.expand_as(imgs), atol=1e-5)
        # cutoff: only the first layers are truncated
        ws_full = G.mapping(_z(4), None)
        ws_cut = G.mapping(_z(4), None, truncation_psi=0.5, truncation_cutoff=2)
        assert torch.allclose(ws_cut[:, :2], G.mapping.w_avg.lerp(ws_full[:, :2], 0.5))
        assert torch.equal(ws_cut[:, 2:], ws_full[:, 2:])


def test_noise_modes_stylegan2():
    G, _ = build_networks("stylegan2", R, 1, seed=4, **TINY)
    with torch.no_grad():
        for layer in G.synthesis.modules():
            if hasattr(layer, "noise_strength"):
                layer.noise_strength.fill_(0.5)
        z = _z(2)
        const1, const2 = G(z, noise_mode="const"), G(z, noise_mode="const")
        assert torch.equal(const1, const2)
        torch.manual_seed(0)
        rand1 = G(z, noise_mode="random")
        torch.manual_seed(1)
        rand2 = G(z, noise_mode="random")
        assert not torch.allclose(rand1, rand2)
        assert not torch.allclose(G(z, noise_mode="none"), const1)
        with pytest.raises(CellsynthError, match="noise_mode"):
            G(z, noise_mode="bogus")


def test_fused_and_unfused_modconv_agree():
    for cfg in ("stylegan3-r", "stylegan2"):
        G, _ = build_networks(cfg, R, 1, seed=5, **TINY)
        G_f = Generator(**G.init_kwargs, fused_modconv=True)
        G_u = Generator(**G.init_kwargs, fused_modconv=False)
        G_f.load_state_dict(G.state_dict())
        G_u.load_state_dict(G.state_dict())
        with torch.no_grad():
            a, b = G_f(_z(2)), G_u(_z(2))
        assert torch.allclose(a, b, atol=1e-5 * float(a.abs().max()) + 1e-6), cfg


def test_magnitude_ema_update():
    G, _ = build_networks("stylegan3-t", R, 1, seed=6, **TINY)
    layer = G.synthesis.layers[0]
    assert float(layer.magnitude_ema) == 1.0
    with torch.no_grad():
        G(_z(2), update_emas=True)
    assert float(layer.magnitude_ema) != 1.0


def test_translation_equivariance_stylegan3_vs_stylegan2():
    """A stylegan3-t generator shifted through its Fourier input shifts its image (random init);
    a stylegan2 generator whose 4x4 constant is rolled by one sample does not."""
    m = 6
    z = _z(2)
    G, _ = build_networks("stylegan3-t", R, 1, seed=3, **TINY)
    with torch.no_grad():
        a = G(z)
        errs = {}
        for s in (1, 8):
            G.set_input_transform(translate=(s / R, 0))
            b = G(z)
            errs[s] = _rel_err(b[..., m:-m, m + s : -m], a[..., m:-m, m : -m - s])
            assert errs[s] < 0.02, (s, errs[s])
            assert _rel_err(b[..., m:-m, m:-m], a[..., m:-m, m:-m]) > 10 * errs[s]
        G.set_input_transform(translate=(0, 3 / R))  # the y axis too
        b = G(z)
        assert _rel_err(b[..., m + 3 : -m, m:-m], a[..., m : -m - 3, m:-m]) < 0.02
    G2, _ = build_networks("stylegan2", R, 1, seed=3, **TINY)
    with torch.no_grad():
        a2 = G2(z, noise_mode="none")
        const = G2.synthesis.blocks[0].const
        const.copy_(torch.roll(const, 1, dims=2))  # one 4x4 sample = 8 output pixels
        b2 = G2(z, noise_mode="none")
    s = 8
    err2 = _rel_err(b2[..., m:-m, m + s : -m], a2[..., m:-m, m : -m - s])
    assert err2 > 10 * errs[8], (err2, errs[8])
    with pytest.raises(CellsynthError, match="stylegan3"):
        G2.set_input_transform(translate=(0.1, 0))


def test_rotation_stylegan3_r():
    """Rotating stylegan3-r's input by 90 degrees rotates its image; -t is not built for it."""
    m = 6
    z = _z(2)
    errs = {}
    for cfg in ("stylegan3-r", "stylegan3-t"):
        G, _ = build_networks(cfg, R, 1, seed=3, **TINY)
        with torch.no_grad():
            a = G(z)
            G.set_input_transform(rotate=90)
            b = G(z)
        errs[cfg] = _rel_err(b[..., m:-m, m:-m], torch.rot90(a, 1, dims=(2, 3))[..., m:-m, m:-m])
    assert errs["stylegan3-r"] < 0.01, errs
    assert errs["stylegan3-t"] > 10 * errs["stylegan3-r"], errs


def test_minibatch_std_against_loop():
    x = torch.randn(8, 4, 3, 3)
    layer = MinibatchStdLayer(group_size=4, num_channels=2)
    y = layer(x)
    assert y.shape == (8, 6, 3, 3)
    assert torch.equal(y[:, :4], x)
    groups_per_batch = 8 // 4
    for i in range(8):
        members = [j for j in range(8) if j % groups_per_batch == i % groups_per_batch]
        for f in range(2):
            sub = x[members][:, 2 * f : 2 * f + 2]
            std = (sub.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
            assert torch.allclose(y[i, 4 + f], std.expand(3, 3), atol=1e-6)
    with pytest.raises(CellsynthError, match="divisible"):
        layer(torch.randn(6, 4, 3, 3))


def test_discriminator_conditioning_and_double_backward():
    _, D = build_networks("stylegan2", R, 1, c_dim=2, seed=7, **TINY)
    img = torch.randn(4, 1, R, R, requires_grad=True)
    c = torch.eye(2)[[0, 1, 0, 1]]
    out = D(img, c)
    assert not torch.allclose(out, D(img, torch.eye(2)[[1, 0, 1, 0]]))
    (grad,) = torch.autograd.grad(out.sum(), img, create_graph=True)
    r1 = grad.square().sum()
    r1.backward()  # R1 penalty needs the double backward through every op
    assert all(torch.isfinite(p.grad).all() for p in D.parameters() if p.grad is not None)


def test_bad_arguments():
    with pytest.raises(CellsynthError, match="config"):
        Generator(16, 0, 16, R, 1, cfg="stylegan4")
    with pytest.raises(CellsynthError, match="power of two"):
        Generator(16, 0, 16, 48, 1, cbase=256, cmax=16)
    with pytest.raises(CellsynthError, match="power of two"):
        Discriminator(0, 30, 1, cbase=256, cmax=16)
    G, D = build_networks("stylegan3-t", R, 1, c_dim=2, seed=0, **TINY)
    with pytest.raises(CellsynthError, match="c must be"):
        G(_z(2), None)
    with pytest.raises(CellsynthError, match="z must be"):
        G(torch.randn(2, 5), torch.zeros(2, 2))
    with pytest.raises(CellsynthError, match="ws must be"):
        G.synthesis(torch.randn(2, 3, 16))
    with pytest.raises(CellsynthError, match="discriminator expects"):
        D(torch.randn(2, 3, R, R), torch.zeros(2, 2))
    with pytest.raises(CellsynthError, match="option"):
        Generator(16, 0, 16, R, 1, cfg="stylegan2", cbase=256, cmax=16, margin_size=3)
