"""StyleGAN3 generation: seeds parsing, MaskGenerator, the generate command, --decode, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import sg3_snapshot

from cellsynth.errors import CellsynthError


@pytest.fixture(scope="module")
def snaps(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("snaps")
    return {
        "sg2": sg3_snapshot(tmp, "stylegan2"),
        "sg3": sg3_snapshot(tmp, "stylegan3-t"),
        "bin": sg3_snapshot(tmp, "stylegan2", encoding="binary"),
        "cond": sg3_snapshot(tmp, "stylegan2", classes=["a", "b"]),
    }


def test_parse_seeds():
    from cellsynth.stylegan3.generate import parse_seeds

    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    assert parse_seeds("5") == [5] and parse_seeds(" 2 , 1 ") == [2, 1]
    assert parse_seeds(4) == [4] and parse_seeds([1, 2]) == [1, 2]
    for bad in ("", "a", "1-", "3-1", "1,,2", "-1", "1.5", "99999999999", "0-x"):
        with pytest.raises(CellsynthError):
            parse_seeds(bad)


def test_mask_generator_follows_the_seed_convention(snaps):
    from cellsynth.stylegan3.generate import MaskGenerator
    from cellsynth.stylegan3.snapshot import load_generator

    # float32, so the reference below must agree to 1e-5 (bf16 generation: test_precision.py)
    gen = MaskGenerator.load(snaps["sg2"], fp32=True)
    assert (gen.resolution, gen.channels, gen.encoding, gen.num_classes) == (32, 3, "fbd", 0)
    x = gen.generate([3, 5], batch=1)
    assert x.shape == (2, 3, 32, 32) and x.dtype == np.float32
    assert x.min() >= -1 and x.max() <= 1
    # Independent reference: the same network called directly on RandomState(seed) latents.
    G, _ = load_generator(snaps["sg2"], fp32=True)
    z = torch.from_numpy(np.stack([np.random.RandomState(s).randn(G.z_dim) for s in (3, 5)]))
    ref = G(z.float(), torch.zeros(2, 0), noise_mode="const").clamp(-1, 1).numpy()
    assert np.allclose(x, ref, atol=1e-5)
    assert np.allclose(gen.generate([3, 5], batch=2), x, atol=1e-5)  # batching does not matter
    trunc = gen.generate([3], trunc=0.0)  # psi=0 gives the average w for every seed
    assert np.allclose(trunc, gen.generate([4], trunc=0.0), atol=1e-6)


def test_stylegan3_translate_and_rotate(snaps):
    from cellsynth.stylegan3.generate import MaskGenerator

    gen = MaskGenerator.load(snaps["sg3"])
    base = gen.generate([1])
    moved = gen.generate([1], translate=(0.25, 0.0), rotate=10)
    assert moved.shape == base.shape and not np.allclose(moved, base)
    assert np.array_equal(gen.generate([1]), base)  # the transform is reset each call
    with pytest.raises(CellsynthError, match="stylegan3"):
        MaskGenerator.load(snaps["sg2"]).generate([1], rotate=5)


def test_conditional_needs_a_valid_class(snaps):
    from cellsynth.stylegan3.generate import MaskGenerator

    gen = MaskGenerator.load(snaps["cond"])
    assert gen.num_classes == 2
    a, b = gen.generate([0], class_idx=0), gen.generate([0], class_idx=1)
    assert not np.allclose(a, b)
    for bad in (2, -1):
        with pytest.raises(CellsynthError, match="class"):
            gen.generate([0], class_idx=bad)
    with pytest.raises(CellsynthError, match="unconditional"):
        MaskGenerator.load(snaps["sg2"]).generate([0], class_idx=0)


def test_conditional_without_class_follows_the_training_frequencies(snaps):
    from cellsynth.stylegan3.generate import MaskGenerator

    gen = MaskGenerator.load(snaps["cond"], fp32=True)
    # the zip of the fixture labels its 8 images 0, 1, 0, 1, ...
    assert gen.config["class_weights"] == [0.5, 0.5]
    seeds = list(range(400))
    drawn = gen.seed_classes(seeds)
    assert drawn == gen.seed_classes(seeds[::-1])[::-1]  # per seed, not per position
    assert 0.4 < np.mean(drawn) < 0.6
    # the same draw, independently: the seed's RandomState after its latent
    rs = np.random.RandomState(7)
    rs.randn(gen.z_dim)
    assert drawn[7] == int(rs.choice(2, p=[0.5, 0.5]))
    mixed = gen.generate([3, 4, 5, 6], batch=3)
    for k, s in enumerate([3, 4, 5, 6]):  # each seed as generated alone with its class
        assert np.allclose(mixed[k], gen.generate([s], class_idx=drawn[s])[0], atol=1e-5)
    assert gen.seed_classes([1, 2], class_idx=1) == [1, 1]
    assert MaskGenerator.load(snaps["sg2"]).seed_classes([1]) is None
    # a conditional snapshot that does not record its frequencies still needs --class
    gen.class_weights = None
    with pytest.raises(CellsynthError, match="pass --class"):
        gen.generate([0])


def _cli(args, capsys):
    from cellsynth.cli import main

    try:
        main(args)
    except SystemExit as exc:
        return exc.code, capsys.readouterr()
    return 0, capsys.readouterr()


def test_generate_command_is_deterministic(snaps, tmp_path, capsys):
    args = ["stylegan3", "generate", "--network", str(snaps["sg2"]), "--seeds", "0-3"]
    assert _cli([*args, "--outdir", str(tmp_path / "a")], capsys)[0] == 0
    assert _cli([*args, "--outdir", str(tmp_path / "b")], capsys)[0] == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == [f"seed{s:04d}.png" for s in range(4)]
    for n in names:
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes()


@pytest.mark.parametrize("which", ["sg2", "bin"])
def test_generate_decode_writes_valid_labels(snaps, tmp_path, capsys, which):
    from cellsynth.datasets.io import read_image, read_labels
    from cellsynth.tools.codec import decode_mask

    code, _ = _cli(
        [
            "stylegan3",
            "generate",
            "--network",
            str(snaps[which]),
            "--seeds",
            "0-1",
            "--decode",
            "--outdir",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 0
    enc = "fbd" if which == "sg2" else "binary"
    for s in (0, 1):
        img = read_image(tmp_path / f"seed{s:04d}.png")
        assert img.shape == ((32, 32, 3) if enc == "fbd" else (32, 32)) and img.dtype == np.uint8
        lab = read_labels(tmp_path / f"seed{s:04d}_masks.tif")
        assert lab.shape == (32, 32) and lab.dtype == np.uint16
        assert np.array_equal(lab, decode_mask(img, enc))


def test_generate_errors(snaps, tmp_path, capsys):
    base = ["stylegan3", "generate", "--outdir", str(tmp_path / "o")]
    code, out = _cli([*base, "--network", str(snaps["sg2"]), "--seeds", "1-x"], capsys)
    assert code == 2 and "seeds" in out.err and len(out.err.strip().splitlines()) == 1
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(snaps["sg2"].read_bytes()[:2000])
    code, out = _cli([*base, "--network", str(bad), "--seeds", "0"], capsys)
    assert code == 2 and "corrupt.pt" in out.err and len(out.err.strip().splitlines()) == 1
    code, out = _cli([*base, "--network", str(tmp_path / "none.pt"), "--seeds", "0"], capsys)
    assert code == 2 and "none.pt" in out.err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def _reference_debiased(G, gen, seed, keep):
    """The documented rule, written out: the seed's first candidate whose uniform number is below
    the keep probability of its decoded object count (the last one when none is)."""
    from cellsynth.stylegan3.generate import MAX_CANDIDATES, candidate_latent, candidate_uniform

    for k in range(MAX_CANDIDATES):
        z = torch.from_numpy(candidate_latent(seed, G.z_dim, 0, k)[None]).float()
        img = G(z, torch.zeros(1, 0), noise_mode="const").clamp(-1, 1).numpy()
        n = int(gen.decode(img)[0].max(initial=0))
        if candidate_uniform(seed, 0, k) < keep(n):
            return img[0], k
    return img[0], k


def test_debias_keeps_candidates_with_one_over_times_their_chance(snaps):
    from cellsynth.stylegan3.generate import MaskGenerator, candidate_latent, latent
    from cellsynth.stylegan3.snapshot import load_generator

    gen = MaskGenerator.load(snaps["sg2"], fp32=True)
    seeds = list(range(12))
    plain = gen.generate(seeds, batch=4)
    counts = [int(lab.max()) for lab in gen.decode(plain)]
    assert max(counts) >= 1  # the rule below has something to reject
    assert gen.repeats == [] and not gen.debiases("auto")
    assert np.array_equal(gen.generate(seeds, batch=4, debias="off"), plain)
    gen.repeats = [(1, 4)]  # a non-empty mask is kept with chance 1/4, an empty one always
    assert gen.debiases("auto") and gen.keep_probability(0) == 1.0
    assert gen.keep_probability(3) == 0.25
    x = gen.generate(seeds, batch=5)
    G, _ = load_generator(snaps["sg2"], fp32=True)
    later = 0
    for s, got in zip(seeds, x):
        want, k = _reference_debiased(G, gen, s, gen.keep_probability)
        assert np.allclose(got, want, atol=1e-5)
        later += k > 0
    assert later >= 3  # most seeds' first candidates were rejected
    assert np.allclose(gen.generate(seeds, batch=1), x, atol=1e-5)  # batching does not matter
    assert np.array_equal(gen.generate(seeds, batch=4, debias="off"), plain)
    # candidate 0 is the seed's own latent; later ones a stream of their own
    assert np.array_equal(candidate_latent(7, 8), latent(7, 8))
    assert not np.array_equal(candidate_latent(7, 8, 0, 1), latent(7, 8, 1))


def test_debias_options_and_recorded_repeats(snaps, tmp_path, capsys):
    from cellsynth.stylegan3.generate import MaskGenerator, recorded_repeats

    gen = MaskGenerator.load(snaps["sg2"])
    with pytest.raises(CellsynthError, match="records no repeated crowded tiles"):
        gen.generate([0], debias="on")
    with pytest.raises(CellsynthError, match="--debias must be one of"):
        gen.generate([0], debias="yes")
    assert recorded_repeats({}) == [] and recorded_repeats({"repeat_crowded": None}) == []
    assert recorded_repeats({"repeat_crowded": [[10, 2], [14, 4]]}) == [(14, 4), (10, 2)]
    for bad in ([[0, 2]], [[3]], "x", "3:2", [[3, 2], [3, 4]]):
        with pytest.raises(CellsynthError, match="records repeat_crowded"):
            recorded_repeats({"repeat_crowded": bad})
    # the command line refuses --debias on for a file without repeats: one line, exit 2
    args = ["stylegan3", "generate", "--network", str(snaps["sg2"]), "--seeds", "0"]
    code, out = _cli([*args, "--debias", "on", "--outdir", str(tmp_path / "o")], capsys)
    assert code == 2 and "records no repeated" in out.err and len(out.err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_a_run_on_repeated_crowded_tiles_records_them(tmp_path):
    from conftest import make_masks_zip, sg3_snapshot

    from cellsynth.datasets.pack import MaskZipDataset
    from cellsynth.stylegan3.generate import MaskGenerator

    snap = sg3_snapshot(tmp_path, "stylegan2", repeat_crowded=[[3, 2], [5, 4]])
    assert torch.load(snap, weights_only=True)["config"]["repeat_crowded"] == [[5, 4], [3, 2]]
    gen = MaskGenerator.load(snap)
    assert gen.repeats == [(5, 4), (3, 2)] and gen.debiases("auto") and not gen.debiases("off")
    for bad in ([[0, 2]], "3:2", [[3, 2, 1]]):
        path = make_masks_zip(tmp_path / "bad.zip", repeat_crowded=bad)
        with pytest.raises(CellsynthError, match="bad repeat_crowded"):
            MaskZipDataset(path)
