"""`cellsynth synth`: seeds, filters, the pipeline with simulate / folder / GAN sources, COCO,
resume, shards + merge, determinism and bad input."""

from __future__ import annotations

import filecmp
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_translator

from cellsynth.datasets import CanonicalDataset, read_image, read_labels
from cellsynth.datasets.simulate import simulate_dataset, simulate_labels
from cellsynth.errors import CellsynthError
from cellsynth.synth import filter_cells, merge_shards, parse_seeds, parse_shard, synth
from cellsynth.tools.points import spots_from_csv

KW = dict(size=48, mean_radius=6, density=0.6, spots_count=2)


def _files(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


def _same_files(a: Path, b: Path, ignore=()):
    fa = [f for f in _files(a) if f not in ignore]
    fb = [f for f in _files(b) if "shard" not in f]
    assert fa == fb
    for f in fa:
        assert filecmp.cmp(a / f, b / f, shallow=False), f


def test_parse_seeds_and_shard():
    assert parse_seeds("0-3,10,2") == [0, 1, 2, 3, 10]
    assert parse_seeds(7) == [7] and parse_seeds([3, 1]) == [3, 1]
    assert parse_seeds("4294967295") == [2**32 - 1]
    for bad in ("-1", "5-2", "a", "", "4294967296", "1,,2", "0-4294967296"):
        with pytest.raises(CellsynthError):
            parse_seeds(bad)
    assert parse_shard("1/4") == (1, 4) and parse_shard(None) is None
    for bad in ("4/4", "x", "1/0"):
        with pytest.raises(CellsynthError):
            parse_shard(bad)


def test_filter_cells_matches_direct():
    lab = simulate_labels(0, 64, density=0.7, mean_radius=6)
    out = filter_cells(lab, min_size=60, border="drop")
    keep = []
    for i in range(1, int(lab.max()) + 1):
        own = lab == i
        edge = own[0].any() or own[-1].any() or own[:, 0].any() or own[:, -1].any()
        if own.sum() >= 60 and not edge:
            keep.append(i)
    assert int(out.max()) == len(keep) and len(keep) > 0
    for k, i in enumerate(keep, start=1):
        assert np.array_equal(out == k, lab == i)
    assert np.array_equal(filter_cells(lab), lab)
    with pytest.raises(CellsynthError, match="border"):
        filter_cells(lab, border="maybe")


def test_simulate_run_contents(tmp_path):
    out = tmp_path / "s"
    summary = synth(out, seeds="3,1-2", channels=2, bit_depth=16, **KW)
    assert summary["written"] == 3
    ds = CanonicalDataset(out)
    assert ds.names == ["seed000001", "seed000002", "seed000003"]
    for seed, s in zip((1, 2, 3), ds):
        ref = simulate_labels(seed, 48, density=0.6, mean_radius=6)
        assert np.array_equal(s.labels, ref)
        assert s.image.shape == (48, 48, 2) and s.image.dtype == np.uint16
        spots = spots_from_csv((out / "spots" / f"{s.name}.csv").read_text())
        r = np.floor(spots["y"] + 0.5).astype(int)
        c = np.floor(spots["x"] + 0.5).astype(int)
        assert np.all(s.labels[r, c] == spots["cell_id"])
    man = json.loads((out / "manifest.json").read_text())
    assert [r["seed"] for r in man["samples"]] == [3, 1, 2]  # order of --seeds
    assert man["options"]["seeds"] == "3,1-2" and man["count"] == 3
    assert man["cellsynth_version"]
    assert not (out / ".partial").exists()


def test_coco_rles_decode_to_labels(tmp_path):
    from pycocotools.coco import COCO

    out = tmp_path / "c"
    synth(out, seeds="0-2", border="drop", min_size=10, **KW)
    coco = COCO(str(out / "annotations.json"))
    assert len(coco.getImgIds()) == 3
    for img in coco.loadImgs(coco.getImgIds()):
        labels = read_labels(out / img["file_name"].replace("images", "masks"))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        assert len(anns) == int(labels.max())
        for a in anns:
            assert np.array_equal(coco.annToMask(a).astype(bool), labels == a["instance_id"])
            assert a["area"] == int((labels == a["instance_id"]).sum())
        assert img["height"] == labels.shape[0]


def test_resume_shards_workers_give_identical_files(tmp_path):
    one = tmp_path / "one"
    synth(one, seeds="0-5", **KW)
    # shards + merge
    sh = tmp_path / "sh"
    synth(sh, seeds="0-5", shard="1/2", **KW)
    with pytest.raises(CellsynthError, match="missing"):
        merge_shards(sh)
    synth(sh, seeds="0-5", shard="0/2", **KW)
    merge_shards(sh)
    _same_files(one, sh)
    # resume after a killed run: samples 3-5 never made, sample 1 lost its mask (killed
    # before the rename), no manifest or annotations yet
    re = tmp_path / "re"
    synth(re, seeds="0-5", **KW)
    for s in (1, 3, 4, 5):
        os.remove(re / "masks" / f"seed{s:06d}.tif")
    for s in (3, 4, 5):
        os.remove(re / "images" / f"seed{s:06d}.tif")
        os.remove(re / "spots" / f"seed{s:06d}.csv")
    os.remove(re / "manifest.json")
    os.remove(re / "annotations.json")
    with pytest.raises(CellsynthError, match="--resume"):
        synth(re, seeds="0-5", **KW)
    summary = synth(re, seeds="0-5", resume=True, **KW)
    assert summary["skipped"] == 2 and summary["written"] == 4
    _same_files(one, re)
    # worker processes
    wk = tmp_path / "wk"
    synth(wk, seeds="0-5", workers=2, **KW)
    _same_files(one, wk)


def test_dir_masks_source(tmp_path):
    simulate_dataset(tmp_path / "real", 3, size=40, mean_radius=5, seed=2)
    out = tmp_path / "o"
    synth(out, masks=str(tmp_path / "real" / "train"), seeds="0-3")
    src = CanonicalDataset(tmp_path / "real", "train")
    man = json.loads((out / "manifest.json").read_text())
    for rec in man["samples"]:
        k = rec["seed"] % 3
        assert rec["mask_source"] == f"{src.names[k]}.tif"
        assert np.array_equal(read_labels(out / "masks" / f"{rec['name']}.tif"), src[k].labels)
        assert (out / "spots" / f"{rec['name']}.csv").read_text() == "x,y,cell_id,intensity\n"
    img0 = read_image(out / "images" / "seed000000.tif")
    img3 = read_image(out / "images" / "seed000003.tif")
    assert not np.array_equal(img0, img3)  # same mask, another seed: another rendering


def test_bad_input_leaves_nothing(tmp_path):
    out = tmp_path / "x"
    cases = [
        (dict(masks="stylegan3:" + str(tmp_path / "nope.pt")), "no such stylegan3"),
        (dict(images="pix2pixhd:" + str(tmp_path / "nope.pt")), "no such pix2pixhd"),
        (dict(images="gan"), "--images"),
        (dict(seeds="-3"), "out of range"),
        (dict(seeds="0-x"), "malformed"),
        (dict(masks=str(tmp_path / "missing")), "no such dataset"),
        (dict(border="cut"), "border"),
        (dict(spots_count=2, spots_channel=3), "channel"),
        (dict(spots_count=1, spots_spread="matrix"), "2 x 2"),
        (dict(class_idx=1), "--class"),
    ]
    for kwargs, match in cases:
        with pytest.raises(CellsynthError, match=match):
            synth(out, **{**dict(size=32, mean_radius=5, seeds="0"), **kwargs})
        assert not out.exists(), kwargs
    # a wrong-kind checkpoint
    import torch

    from cellsynth.training.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "w.pt", {"a": torch.zeros(1)}, "something", {})
    with pytest.raises(CellsynthError):
        synth(out, masks=f"stylegan3:{tmp_path / 'w.pt'}", seeds="0")
    assert not out.exists()
    # existing folders: not ours, or other options
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(CellsynthError, match="not a `cellsynth synth` output"):
        synth(other, seeds="0", overwrite=True, size=32, mean_radius=5)
    assert (other / "keep.txt").read_text() == "mine"
    run = tmp_path / "run"
    synth(run, seeds="0", size=32, mean_radius=5)
    with pytest.raises(CellsynthError, match="other options"):
        synth(run, seeds="0-1", size=32, mean_radius=6, resume=True)
    synth(run, seeds="1", size=32, mean_radius=6, overwrite=True)
    assert _files(run / "masks") == ["seed000001.tif"]


def test_cli(tmp_path):
    from click.testing import CliRunner

    from cellsynth.cli import cli, main

    out = tmp_path / "c"
    args = [
        "synth",
        "--out",
        str(out),
        "--seeds",
        "0-3",
        "--size",
        "32",
        "--mean-radius",
        "5",
        "--spots-count",
        "1",
        "--no-progress",
    ]
    res = CliRunner().invoke(cli, args + ["--shard", "0/2"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, args + ["--shard", "1/2"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["synth", "merge", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "manifest.json").read_text())["count"] == 4
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--out", str(tmp_path / "d"), "--seeds", "5-1"])
    assert exc.value.code == 2 and not (tmp_path / "d").exists()


# ---- options: declared once --------------------------------------------------------------------
def test_options_are_declared_once(tmp_path):
    """Every option field gives a keyword, a CLI flag and a manifest entry; old spellings map to
    the same fields; the options passed as an object give the same run as keywords."""
    from click.testing import CliRunner

    from cellsynth.cli import cli
    from cellsynth.options import keyword_map, named_fields
    from cellsynth.synth import SynthOptions

    kws = keyword_map(SynthOptions.GROUPS)
    assert kws["spots_psf"] == kws["spots_psf_sigma"] == ("spots", "psf_sigma")
    assert kws["spots_scale_image"] == kws["spots_image_scale"] == ("spots", "image_scale")
    assert kws["photons"] == ("spots", "photons") and kws["class_idx"] == ("gan", "class_idx")
    help_text = CliRunner().invoke(cli, ["synth", "--help"]).output
    stored = SynthOptions().check().manifest()
    for group, (cls, prefix) in SynthOptions.GROUPS.items():
        for n in named_fields(cls, prefix):
            assert n.flag in help_text, n.flag
            if group == "spots":
                assert n.key in stored["spots"]
            elif group in ("sources", "gan", "decode", "cells"):
                assert n.key in stored, n.key
    assert set(stored) >= {"simulate", "render", "spots"} and "batch" not in stored
    with pytest.raises(TypeError, match="no_such_option"):
        synth(tmp_path / "x", no_such_option=1)
    opts = SynthOptions.from_kwargs(seeds="0-1", size=32, mean_radius=5, spots_psf=1.5)
    synth(tmp_path / "obj", options=opts)
    synth(tmp_path / "kw", seeds="0-1", size=32, mean_radius=5, spots_psf_sigma=1.5)
    _same_files(tmp_path / "obj", tmp_path / "kw")
    for bad, match in (({"bit_depth": 12}, "--bit-depth"), ({"upscale": 1.5}, "whole number")):
        with pytest.raises(CellsynthError, match=match):
            synth(tmp_path / "y", seeds="0", size=32, **bad)


# ---- GAN sources (tiny untrained networks written by the test) -------------------------------
@pytest.fixture
def one_thread():
    """Tiny networks run faster on one thread (and do not fight other processes)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_gan(tmp_path, channels=3, encoding="fbd", c_dim=0, classes=None):
    pytest.importorskip("cellsynth.stylegan3.generate", reason="stylegan3 not built")
    from cellsynth.stylegan3.networks import build_networks
    from cellsynth.stylegan3.snapshot import save_snapshot

    build = dict(
        cfg="stylegan2",
        img_resolution=32,
        img_channels=channels,
        c_dim=c_dim,
        cbase=256,
        cmax=32,
        z_dim=16,
        w_dim=16,
        map_depth=2,
        num_fp16_res=0,
        seed=0,
    )
    G, _ = build_networks(**build)
    path = tmp_path / f"g-{channels}-{encoding}-{c_dim}.pt"
    cfg = {
        "build": build,
        "resolution": 32,
        "channels": channels,
        "encoding": encoding,
        "num_classes": c_dim,
    }
    if classes:  # names -> fraction of the training set
        cfg["classes"], cfg["class_weights"] = list(classes), list(classes.values())
        path = path.with_name(path.stem + "-w.pt")
    save_snapshot(path, {"G_ema": G.state_dict()}, cfg)
    return path


def _tiny_translator(tmp_path, output_nc=1, label_nc=2, name="p", features=False):
    pytest.importorskip("cellsynth.pix2pixhd.translator", reason="pix2pixhd not built")
    return tiny_translator(tmp_path, output_nc, label_nc, name, features)


def test_gan_sources(tmp_path, one_thread):
    from cellsynth.pix2pixhd.translator import Translator
    from cellsynth.stylegan3.generate import MaskGenerator
    from cellsynth.tools.codec import decode_mask

    g = _tiny_gan(tmp_path)
    p = _tiny_translator(tmp_path)
    out = tmp_path / "gan"
    # min_cells=0: every seed's first latent (drawing again: test_min_cells_draws_again)
    kw = dict(masks=f"stylegan3:{g}", images=f"pix2pixhd:{p}", batch=2, device="cpu", min_cells=0)
    synth(out, seeds="0-2", **kw)
    gen, tr = MaskGenerator.load(g), Translator.load(p)
    # batches are fixed groups of the seed list: [0, 1], [2]
    raw = gen.to_uint8(np.concatenate([gen.generate([0, 1]), gen.generate([2])]))
    for k, seed in enumerate((0, 1, 2)):
        lab = decode_mask(raw[k], "fbd")
        assert np.array_equal(read_labels(out / "masks" / f"seed{seed:06d}.tif"), lab)
        img = tr.translate((lab > 0).astype(np.uint8), lab, seed=seed)
        assert np.array_equal(read_image(out / "images" / f"seed{seed:06d}.tif"), img)
    man = json.loads((out / "manifest.json").read_text())
    assert len(man["checkpoints"]["masks"]["sha256"]) == 64 and "images" in man["checkpoints"]
    # the checkerboard filter: on by default (what was done is recorded), off on request
    assert tr.dechecker and man["checkpoints"]["images"]["dechecker"] == tr.checkerboard_period > 0
    assert man["options"]["dechecker"] == "auto"
    off = tmp_path / "off"
    synth(off, seeds="0", dechecker="off", **kw)
    man_off = json.loads((off / "manifest.json").read_text())
    assert man_off["checkpoints"]["images"]["dechecker"] == 0
    lab = read_labels(off / "masks" / "seed000000.tif")
    plain = Translator.load(p, dechecker=False).translate((lab > 0).astype(np.uint8), lab, seed=0)
    assert np.array_equal(read_image(off / "images" / "seed000000.tif"), plain)
    assert not np.array_equal(plain, read_image(out / "images" / "seed000000.tif"))
    with pytest.raises(CellsynthError, match="dechecker"):
        synth(tmp_path / "bad", seeds="0", dechecker="maybe", **kw)
    sh = tmp_path / "sh"
    for i in (0, 1):
        synth(sh, seeds="0-2", shard=f"{i}/2", **kw)
    merge_shards(sh)
    _same_files(out, sh)
    os.remove(sh / "masks" / "seed000001.tif")
    assert synth(sh, seeds="0-2", resume=True, **kw)["written"] == 1
    _same_files(out, sh)
    # spots rendered by a spots model, appended as a channel
    sp = _tiny_translator(tmp_path, name="spots")
    o2 = tmp_path / "sp"
    synth(o2, seeds="0", spots_count=2, spots_model=f"pix2pixhd:{sp}", spots_mode="channel", **kw)
    assert read_image(o2 / "images" / "seed000000.tif").shape == (32, 32, 2)
    # --upscale: the soft generator output is resized bilinearly before decoding
    from cellsynth.synth import upscale_soft

    o3 = tmp_path / "up"
    synth(o3, seeds="0", upscale=2, **kw)
    # seed 0 alone is a batch of its own here (bf16 results may depend on the batch's size)
    raw0 = gen.to_uint8(gen.generate([0]))[0]
    big = upscale_soft(raw0, 2)
    assert big.shape == (64, 64, 3)
    import torch

    ref = (
        torch.nn.functional.interpolate(
            torch.from_numpy(raw0).permute(2, 0, 1)[None].float(),
            scale_factor=2,
            mode="bilinear",
            align_corners=False,
        )[0]
        .permute(1, 2, 0)
        .numpy()
    )
    assert np.abs(big.astype(float) - ref).max() <= 1.0  # same bilinear resampling, rounded
    lab = decode_mask(big, "fbd")
    assert np.array_equal(read_labels(o3 / "masks" / "seed000000.tif"), lab)
    assert read_image(o3 / "images" / "seed000000.tif").shape == (64, 64)
    with pytest.raises(CellsynthError, match="upscale"):
        synth(tmp_path / "bad-up", seeds="0", upscale=0, **kw)


def test_conditional_gan_samples_classes_by_seed(tmp_path, one_thread):
    from cellsynth.stylegan3.generate import MaskGenerator

    g = _tiny_gan(tmp_path, c_dim=3, classes={"large": 0.0, "medium": 0.25, "small": 0.75})
    out = tmp_path / "mix"
    kw = dict(masks=f"stylegan3:{g}", device="cpu", fp32=True)  # fp32: batches agree exactly
    synth(out, seeds="0-11", batch=5, **kw)
    recs = {r["seed"]: r for r in json.loads((out / "manifest.json").read_text())["samples"]}
    gen = MaskGenerator.load(g)
    want = gen.seed_classes(list(range(12)))
    assert [recs[s]["class"] for s in range(12)] == [gen.classes[c] for c in want]
    assert "large" not in {r["class"] for r in recs.values()}  # weight 0 is never drawn
    one = tmp_path / "one"  # --class pins every sample's class; the masks match the mixed run's
    synth(one, seeds="3", class_idx=want[3], batch=1, **kw)
    assert (
        json.loads((one / "manifest.json").read_text())["samples"][0]["class"] == recs[3]["class"]
    )
    a, b = (read_labels(d / "masks" / "seed000003.tif") for d in (one, out))
    assert np.array_equal(a, b)


def test_gan_bad_input(tmp_path, one_thread):
    g1 = _tiny_gan(tmp_path, channels=1, encoding="fbd")  # channels do not fit the encoding
    p3 = _tiny_translator(tmp_path, output_nc=3, name="rgb")
    out = tmp_path / "x"
    with pytest.raises(CellsynthError, match="channels"):
        synth(out, masks=f"stylegan3:{g1}", seeds="0")
    with pytest.raises(CellsynthError, match="1-channel"):
        synth(out, spots_count=1, spots_model=f"pix2pixhd:{p3}", seeds="0", size=32)
    gc = _tiny_gan(tmp_path, c_dim=2)
    with pytest.raises(CellsynthError, match="--class"):
        synth(out, masks=f"stylegan3:{gc}", seeds="0")
    with pytest.raises(CellsynthError, match="stylegan3"):  # a pix2pixhd file as a generator
        synth(out, masks=f"stylegan3:{p3}", seeds="0")
    assert not out.exists()


def test_margin_is_recorded_and_used(tmp_path, one_thread):
    from cellsynth.pix2pixhd.translator import Translator

    g, p = _tiny_gan(tmp_path), _tiny_translator(tmp_path)
    kw = dict(masks=f"stylegan3:{g}", images=f"pix2pixhd:{p}", device="cpu", seeds="0")
    for margin in (0, 8):
        out = tmp_path / f"m{margin}"
        synth(out, margin=margin, min_cells=0, **kw)
        man = json.loads((out / "manifest.json").read_text())
        assert man["options"]["margin"] == man["checkpoints"]["images"]["margin"] == margin
        lab = read_labels(out / "masks" / "seed000000.tif")
        want = Translator.load(p, margin=margin).translate((lab > 0).astype(np.uint8), lab, 0)
        assert np.array_equal(read_image(out / "images" / "seed000000.tif"), want)
    a, b = (read_image(tmp_path / f"m{m}" / "images" / "seed000000.tif") for m in (0, 8))
    assert not np.array_equal(a, b)
    with pytest.raises(CellsynthError, match="--margin"):
        synth(tmp_path / "bad", margin=-1, **kw)
    assert not (tmp_path / "bad").exists()


def test_appearance_of_a_feature_translator(tmp_path, one_thread):
    """A translator with encoded features: --appearance image (the default with a bank) gives
    each image the background and cells of one training image; clusters each cell a centre;
    recorded in the manifest; refused for a model without features."""
    from cellsynth.pix2pixhd.translator import Translator

    g, p = _tiny_gan(tmp_path), _tiny_translator(tmp_path, name="f", features=True)
    kw = dict(masks=f"stylegan3:{g}", images=f"pix2pixhd:{p}", device="cpu", seeds="0-3")
    got = {}
    for appearance in ("auto", "image", "clusters"):
        out = tmp_path / appearance
        synth(out, appearance=appearance, min_cells=1, **kw)
        man = json.loads((out / "manifest.json").read_text())
        want = "image" if appearance == "auto" else appearance
        assert man["options"]["appearance"] == appearance
        assert man["checkpoints"]["images"]["appearance"] == want
        tr = Translator.load(p, appearance=want)
        for seed in range(4):
            name = f"seed{seed:06d}.tif"
            lab = read_labels(out / "masks" / name)
            img = read_image(out / "images" / name)
            assert np.array_equal(img, tr.translate((lab > 0).astype(np.uint8), lab, seed))
            feat = tr._features((lab > 0).astype(np.int64), lab.astype(np.int64), seed)
            levels = {float(feat[0][lab == r][0]) for r in np.unique(lab)}
            if want == "image":  # one training image k: levels within 3k..3k+2, bg at 3k
                k = int(feat[0][lab == 0][0]) // 3
                assert float(feat[0][lab == 0][0]) == 3 * k
                assert levels <= {3.0 * k, 3.0 * k + 1, 3.0 * k + 2}
            else:
                assert levels <= {0.0, 3.0, 1.0, 5.0}
            got.setdefault(appearance, []).append(img)
    assert all(np.array_equal(a, b) for a, b in zip(got["auto"], got["image"]))
    assert any(not np.array_equal(a, b) for a, b in zip(got["image"], got["clusters"]))
    plain = _tiny_translator(tmp_path)
    synth(tmp_path / "plain", masks=f"stylegan3:{g}", images=f"pix2pixhd:{plain}", seeds="0")
    man = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    assert man["checkpoints"]["images"]["appearance"] is None  # no encoder: draws nothing
    bad = tmp_path / "bad"
    with pytest.raises(CellsynthError, match="no feature encoder"):
        synth(bad, masks=f"stylegan3:{g}", images=f"pix2pixhd:{plain}", appearance="image")
    with pytest.raises(CellsynthError, match="appearance"):
        synth(bad, appearance="nearest", **kw)
    assert not bad.exists()


def _cells_by_draw(gen, seed, draws, min_size=0):
    """Cells of the seed's decoded, filtered masks for each draw (fp32, one seed a batch)."""
    from cellsynth.tools.codec import decode_mask

    out = []
    for d in draws:
        raw = gen.to_uint8(gen.generate([seed], draws=[d], batch=1))[0]
        out.append(filter_cells(decode_mask(raw, "fbd"), min_size))
    return out


def test_min_cells_draws_again(tmp_path, one_thread):
    from cellsynth.stylegan3.generate import MaskGenerator, latent
    from cellsynth.synth.options import MAX_DRAWS

    g = _tiny_gan(tmp_path)
    gen = MaskGenerator.load(g, fp32=True)
    # the draws: 0 is the users' habit, k > 0 its own stream; generate(draws=) takes them
    assert np.array_equal(latent(5, 16), np.random.RandomState(5).randn(16))
    assert np.array_equal(latent(5, 16, 2), np.random.RandomState([5, 2]).randn(16))
    assert not np.allclose(latent(5, 16, 1), latent(5, 16, 2))
    assert np.array_equal(gen.generate([1, 2], draws=[0, 0]), gen.generate([1, 2]))
    assert not np.array_equal(gen.generate([1], draws=[1]), gen.generate([1]))
    with pytest.raises(CellsynthError, match="draws"):
        gen.generate([1, 2], draws=[0])
    with pytest.raises(CellsynthError, match="draw"):
        latent(1, 16, -1)
    kw = dict(masks=f"stylegan3:{g}", device="cpu", fp32=True, batch=1, min_size=6)
    # a seed whose first mask has fewer cells than the most any of its draws has
    seed, labs = next(
        (s, labs)
        for s in range(8)
        for labs in [_cells_by_draw(gen, s, range(MAX_DRAWS + 1), 6)]
        if labs[0].max() < max(lab.max() for lab in labs)
    )
    cells = [int(lab.max()) for lab in labs]
    need = max(cells)
    first = next(k for k, c in enumerate(cells) if c >= need)
    out = tmp_path / "mc"
    summary = synth(out, seeds=str(seed), min_cells=need, **kw)
    assert np.array_equal(read_labels(out / "masks" / f"seed{seed:06d}.tif"), labs[first])
    assert (summary["redrawn"], summary["below_min_cells"]) == (1, 0)
    man = json.loads((out / "manifest.json").read_text())
    assert man["options"]["min_cells"] == need and man["samples"][0]["cells"] == need
    # none reaches it: the draw with the most cells (the earliest of equals) is kept
    out2 = tmp_path / "short"
    summary = synth(out2, seeds=str(seed), min_cells=need + 1, **kw)
    assert np.array_equal(read_labels(out2 / "masks" / f"seed{seed:06d}.tif"), labs[first])
    assert (summary["redrawn"], summary["below_min_cells"]) == (1, 1)
    # 0 keeps the first draw; the default for generated masks is 1
    out3 = tmp_path / "zero"
    assert synth(out3, seeds=str(seed), min_cells=0, **kw)["redrawn"] == 0
    assert np.array_equal(read_labels(out3 / "masks" / f"seed{seed:06d}.tif"), labs[0])
    out4 = tmp_path / "default"
    synth(out4, seeds="0", **kw)
    assert json.loads((out4 / "manifest.json").read_text())["options"]["min_cells"] == 1
    # other mask sources have no latents to draw again
    with pytest.raises(CellsynthError, match="--min-cells"):
        synth(tmp_path / "sim", seeds="0", size=32, min_cells=1)
    with pytest.raises(CellsynthError, match="--min-cells"):
        synth(tmp_path / "neg", seeds="0", min_cells=-1, **kw)
    assert not (tmp_path / "sim").exists() and not (tmp_path / "neg").exists()


def test_spots_model_renders_the_puncta_without_a_translator(tmp_path, one_thread):
    from cellsynth.pix2pixhd.translator import Translator
    from cellsynth.tools.points import spots_mask

    sp = _tiny_translator(tmp_path, name="spots")
    kw = dict(seeds="0", size=32, spots_count=3, spots_mode="channel", device="cpu")
    synth(tmp_path / "psf", **kw)  # simulated images, Gaussian puncta
    synth(tmp_path / "model", spots_model=f"pix2pixhd:{sp}", **kw)
    a, b = (read_image(tmp_path / d / "images" / "seed000000.tif") for d in ("psf", "model"))
    assert a.shape == b.shape == (32, 32, 2)
    assert np.array_equal(a[..., 0], b[..., 0])  # the same simulated cells
    # the puncta channel is the spots model's image of the spot mask, not the Gaussian PSFs
    spots = spots_from_csv((tmp_path / "model" / "spots" / "seed000000.csv").read_text())
    assert spots.size and not np.array_equal(a[..., 1], b[..., 1])
    m = spots_mask((32, 32), spots)
    want = Translator.load(sp).translate((m > 0).astype(np.uint8), m, seed=0)
    assert np.corrcoef(b[..., 1].ravel().astype(float), want.ravel().astype(float))[0, 1] > 0.99
