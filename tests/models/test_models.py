"""Shipped pretrained models: weights-only exports, the name registry, loading by name and by
path, the `cellsynth models` command, clear errors, and the real shipped files against their
cards (at small sizes: nothing is trained here)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import sg3_snapshot, tiny_translator

from cellsynth import models
from cellsynth.atomic import file_sha256
from cellsynth.cli import main
from cellsynth.errors import CellsynthError

NAME = "tiny-nuclei"


def _card(folder, entries):
    files = []
    for kind, path in entries:
        files.append(
            {
                "kind": kind,
                "name": NAME,
                "file": path.name,
                "sha256": file_sha256(path),
                "bytes": path.stat().st_size,
                "summary": f"tiny {kind} for tests",
            }
        )
    (folder / models.CARD_JSON).write_text(json.dumps({"files": files}))
    (folder / models.CARD_MD).write_text(f"# {NAME}\n\nA test card.\n")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sources")
    return {"snap": sg3_snapshot(tmp, "stylegan2"), "p2p": tiny_translator(tmp)}


@pytest.fixture
def shipped_root(tmp_path, monkeypatch, sources):
    """A models folder with one model of each kind, made the package's registry."""
    root = tmp_path / "models"
    folder = root / NAME
    folder.mkdir(parents=True)
    g = models.export_weights(sources["snap"], folder / "masks.pt", ("G_ema",), "stylegan3")
    t = models.export_weights(sources["p2p"], folder / "images.pt", ("G",), "pix2pixhd")
    _card(folder, [("stylegan3", g), ("pix2pixhd", t)])
    monkeypatch.setattr(models, "MODELS_DIR", root)
    return folder


def test_export_keeps_weights_only_in_fp16(sources, tmp_path):
    out = models.export_weights(sources["snap"], tmp_path / "g.pt", ("G_ema",), "stylegan3")
    data = torch.load(out, weights_only=True)
    assert set(data) == {"G_ema", "kind", "config"}
    assert all(t.dtype == torch.float16 for t in data["G_ema"].values() if t.is_floating_point())
    assert data["config"]["storage"] == "fp16"
    assert out.stat().st_size < sources["snap"].stat().st_size / 2
    full = torch.load(sources["snap"], weights_only=True)["G_ema"]
    for k, v in data["G_ema"].items():  # fp16 rounding only
        assert torch.allclose(v.float(), full[k].float(), rtol=1e-3, atol=1e-4)
    with pytest.raises(CellsynthError, match="already exists"):
        models.export_weights(sources["snap"], out, ("G_ema",), "stylegan3")
    with pytest.raises(CellsynthError, match="no nothing entry"):
        models.export_weights(sources["snap"], tmp_path / "d.pt", ("nothing",), "stylegan3")
    with pytest.raises(CellsynthError, match="'stylegan3' checkpoint"):
        models.export_weights(sources["snap"], tmp_path / "x.pt", ("G",), "pix2pixhd")


def _assert_export_refused(argv, out, capsys, word):
    """`cellsynth ARGV --out OUT` exits 2 with one error line naming ``word``, writing nothing."""
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and word in err
    assert not out.exists()


def test_export_records_the_truncation_psi_a_generator_samples_at(sources, tmp_path, capsys):
    from cellsynth.stylegan3.generate import MaskGenerator, recorded_trunc
    from cellsynth.synth import synth

    out = tmp_path / "g.pt"
    args = ["models", "export", "--kind", "stylegan3", "--checkpoint", str(sources["snap"])]
    main([*args, "--out", str(out), "--trunc", "0.7"])
    capsys.readouterr()
    assert torch.load(out, weights_only=True)["config"]["trunc"] == 0.7
    gen = MaskGenerator.load(out, fp32=True)
    assert gen.trunc == 0.7
    assert MaskGenerator.load(sources["snap"], fp32=True).trunc == 1.0  # records none
    default = gen.generate([0, 1])
    assert np.array_equal(default, gen.generate([0, 1], trunc=0.7))
    assert not np.allclose(default, gen.generate([0, 1], trunc=1.0), atol=1e-3)
    # synth samples at the recorded psi unless told otherwise, and says which it used
    synth(tmp_path / "a", masks=f"stylegan3:{out}", seeds="0-1", device="cpu")
    synth(tmp_path / "b", masks=f"stylegan3:{out}", seeds="0-1", device="cpu", trunc=1.0)
    for name, psi in (("a", 0.7), ("b", 1.0)):
        man = json.loads((tmp_path / name / "manifest.json").read_text())
        assert man["checkpoints"]["masks"]["trunc"] == psi
    # bad values: one line, exit 2, no file
    for extra in (["--trunc", "0"], ["--trunc", "1.5"], ["--trunc", "nan"]):
        _assert_export_refused([*args, *extra], tmp_path / "bad.pt", capsys, "--trunc")
    with pytest.raises(SystemExit) as exc:
        p2p = ["models", "export", "--kind", "pix2pixhd", "--checkpoint", str(sources["p2p"])]
        main([*p2p, "--out", str(tmp_path / "t.pt"), "--trunc", "0.8"])
    assert exc.value.code == 2 and "--kind stylegan3" in capsys.readouterr().err
    assert not (tmp_path / "t.pt").exists()
    for value in (0.0, 1.5, "0.8", True):
        with pytest.raises(CellsynthError, match="expected a number in"):
            recorded_trunc({"trunc": value})
    with pytest.raises(CellsynthError, match="finite"):
        gen.generate([0], trunc=float("nan"))


def test_export_records_the_blur_a_translator_applies(sources, tmp_path, capsys):
    from cellsynth.pix2pixhd.translator import Translator, recorded_blur
    from cellsynth.synth import synth

    out = tmp_path / "t.pt"
    args = ["models", "export", "--kind", "pix2pixhd", "--checkpoint", str(sources["p2p"])]
    main([*args, "--out", str(out), "--blur", "0.7"])
    capsys.readouterr()
    assert torch.load(out, weights_only=True)["config"]["blur"] == 0.7
    assert Translator.load(out).blur == 0.7 and Translator.load(out, blur=0).blur == 0.0
    assert Translator.load(sources["p2p"]).blur == 0.0  # records none
    lab = np.zeros((32, 32), np.uint16)
    lab[4:14, 6:20], lab[18:30, 10:24] = 1, 2
    tr = Translator.load(out, margin=0)
    blurred = tr.translate(lab > 0, lab)
    tr.blur = 0.0
    sharp = tr.translate(lab > 0, lab)
    # the blur smooths: less pixel-to-pixel variation, the same mean brightness
    assert (
        np.abs(np.diff(blurred.astype(float), axis=1)).mean()
        < np.abs(np.diff(sharp.astype(float), axis=1)).mean()
    )
    assert abs(blurred.mean() - sharp.mean()) < 1.0
    # synth applies the recorded blur unless told otherwise, and records which it used
    kw = dict(masks="simulate", images=f"pix2pixhd:{out}", seeds="0", size=32, device="cpu")
    synth(tmp_path / "a", **kw)
    synth(tmp_path / "b", blur=0.0, **kw)
    for name, sigma in (("a", 0.7), ("b", 0.0)):
        man = json.loads((tmp_path / name / "manifest.json").read_text())
        assert man["checkpoints"]["images"]["blur"] == sigma
    with pytest.raises(CellsynthError, match="--blur"):
        synth(tmp_path / "c", blur=-1.0, **kw)
    assert not (tmp_path / "c").exists()
    for extra in (["--blur", "-1"], ["--blur", "nan"], ["--blur", "inf"]):
        _assert_export_refused([*args, *extra], tmp_path / "bad.pt", capsys, "--blur")
    sg = ["models", "export", "--kind", "stylegan3", "--checkpoint", str(sources["snap"])]
    _assert_export_refused([*sg, "--blur", "0.5"], tmp_path / "bad.pt", capsys, "pix2pixhd")
    for value in (-0.5, float("nan"), "0.5", True):
        with pytest.raises(CellsynthError, match="recorded blur"):
            recorded_blur({"blur": value})
    with pytest.raises(CellsynthError, match="blur"):
        Translator.load(out, blur=-2)


def test_export_records_decoder_thresholds_used_by_default(sources, tmp_path, capsys):
    from cellsynth.stylegan3.generate import MaskGenerator, recorded_decode
    from cellsynth.synth import synth
    from cellsynth.tools.codec import decode_mask

    out = tmp_path / "g.pt"
    args = ["models", "export", "--kind", "stylegan3", "--checkpoint", str(sources["snap"])]
    main([*args, "--out", str(out), "--marker-thresh", "0.7", "--boundary-thresh", "0.3"])
    capsys.readouterr()
    gen = MaskGenerator.load(out, fp32=True)
    assert gen.decode_settings == {"marker_thresh": 0.7, "boundary_thresh": 0.3}
    assert gen.trunc == 1.0
    x = gen.generate([0, 1, 2])
    u = gen.to_uint8(x)
    # an independent reference: the codec called with the recorded thresholds, then overridden
    for got, raw in zip(gen.decode(x), u):
        want = decode_mask(raw, "fbd", marker_thresh=0.7, boundary_thresh=0.3)
        assert np.array_equal(got, want)
    for got, raw in zip(gen.decode(x, marker_thresh=0.4, boundary_thresh=None), u):
        assert np.array_equal(got, decode_mask(raw, "fbd", marker_thresh=0.4, boundary_thresh=0.3))
    # synth decodes with them too, records them, and an explicit option wins
    synth(tmp_path / "a", masks=f"stylegan3:{out}", seeds="0-1", device="cpu")
    synth(tmp_path / "b", masks=f"stylegan3:{out}", seeds="0-1", device="cpu", marker_thresh=0.5)
    for name, marker in (("a", 0.7), ("b", 0.5)):
        man = json.loads((tmp_path / name / "manifest.json").read_text())
        recorded = man["checkpoints"]["masks"]["decode"]
        assert recorded == {"marker_thresh": marker, "boundary_thresh": 0.3, "smooth": 0.0}
    # bad values: one line, exit 2, no file
    for extra in (["--marker-thresh", "1.0"], ["--fg-thresh", "0"]):
        _assert_export_refused([*args, *extra], tmp_path / "bad.pt", capsys, "thresh")
    for value in ({"marker_thresh": 1.2}, {"seed_level": 0.5}, [0.5], {"fg_thresh": "0.5"}):
        with pytest.raises(CellsynthError, match="records decode"):
            recorded_decode({"decode": value})


def test_export_records_crowded_repeats_that_sampling_undoes(sources, tmp_path, capsys):
    from cellsynth.stylegan3.generate import MaskGenerator
    from cellsynth.synth import synth

    out = tmp_path / "g.pt"
    args = ["models", "export", "--kind", "stylegan3", "--checkpoint", str(sources["snap"])]
    main([*args, "--out", str(out), "--repeat-crowded", "2:3,5:6"])
    capsys.readouterr()
    assert torch.load(out, weights_only=True)["config"]["repeat_crowded"] == [[5, 6], [2, 3]]
    gen = MaskGenerator.load(out, fp32=True)
    assert gen.repeats == [(5, 6), (2, 3)] and gen.debiases("auto")
    assert gen.keep_probability(1) == 1 and gen.keep_probability(4) == 1 / 3
    bare = models.export_weights(sources["snap"], tmp_path / "bare.pt", ("G_ema",), "stylegan3")
    plain = MaskGenerator.load(bare, fp32=True).generate([0, 1, 2, 3])
    assert np.array_equal(gen.generate([0, 1, 2, 3], debias="off"), plain)
    # synth debiases by default, says so, and --debias off samples as generated
    synth(tmp_path / "a", masks=f"stylegan3:{out}", seeds="0-1", device="cpu")
    synth(tmp_path / "b", masks=f"stylegan3:{out}", seeds="0-1", device="cpu", debias="off")
    for name, on in (("a", True), ("b", False)):
        man = json.loads((tmp_path / name / "manifest.json").read_text())
        assert man["checkpoints"]["masks"]["debias"] is on
    # an export of that export keeps them; other repeats than the file's own are refused
    again = ["models", "export", "--kind", "stylegan3", "--checkpoint", str(out)]
    main([*again, "--out", str(tmp_path / "again.pt"), "--repeat-crowded", "5:6,2:3"])
    capsys.readouterr()
    assert MaskGenerator.load(tmp_path / "again.pt").repeats == [(5, 6), (2, 3)]
    _assert_export_refused([*again, "--repeat-crowded", "3:2"], tmp_path / "x.pt", capsys, "5:6")
    for bad in ("3", "0:2", "3:2:1"):
        _assert_export_refused([*args, "--repeat-crowded", bad], tmp_path / "x.pt", capsys, "MIN")
    p2p = ["models", "export", "--kind", "pix2pixhd", "--checkpoint", str(sources["p2p"])]
    _assert_export_refused(
        [*p2p, "--repeat-crowded", "3:2"], tmp_path / "t.pt", capsys, "stylegan3"
    )


def test_names_resolve_and_paths_still_work(shipped_root, sources):
    from cellsynth.pix2pixhd.translator import Translator
    from cellsynth.stylegan3.generate import MaskGenerator

    assert [(m.name, m.kind) for m in models.shipped()] == [
        (NAME, "pix2pixhd"),
        (NAME, "stylegan3"),
    ]
    assert models.resolve(NAME, "stylegan3") == shipped_root / "masks.pt"
    assert models.resolve(str(sources["snap"]), "stylegan3") == sources["snap"]
    by_name = MaskGenerator.load(NAME, fp32=True).generate([0, 1])
    by_path = MaskGenerator.load(shipped_root / "masks.pt", fp32=True).generate([0, 1])
    assert np.array_equal(by_name, by_path)
    # the shipped copy is the fp16-stored original: the same masks up to that rounding
    orig = MaskGenerator.load(sources["snap"], fp32=True).generate([0, 1])
    assert np.abs(by_name - orig).max() < 0.02
    lab = np.zeros((32, 32), np.uint16)
    lab[8:20, 10:22] = 1
    img = Translator.load(NAME).translate((lab > 0).astype(np.uint8), lab)
    assert np.array_equal(img, Translator.load(shipped_root / "images.pt").translate(lab > 0, lab))


def test_generation_from_a_shipped_model_is_deterministic(shipped_root):
    from cellsynth.stylegan3.generate import MaskGenerator

    a = MaskGenerator.load(NAME).generate([3, 4], batch=2)
    b = MaskGenerator.load(NAME).generate([3, 4], batch=2)
    assert np.array_equal(a, b)


def test_unknown_name_and_corrupt_file_are_one_line(shipped_root, capsys, tmp_path):
    with pytest.raises(CellsynthError, match=f"shipped: {NAME}"):
        models.resolve("no-such-model", "stylegan3")
    with pytest.raises(SystemExit) as exc:
        main(["stylegan3", "generate", "--network", "nope", "--seeds", "0", "--outdir", "o"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and NAME in err
    (shipped_root / "masks.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CellsynthError, match="does not match its card"):
        models.verify(models.find(NAME, "stylegan3"))
    with pytest.raises(CellsynthError, match="corrupt"):
        from cellsynth.stylegan3.generate import MaskGenerator

        MaskGenerator.load(NAME)
    (shipped_root / "images.pt").unlink()
    with pytest.raises(CellsynthError, match="missing"):
        models.resolve(NAME, "pix2pixhd")
    shutil.rmtree(shipped_root)
    assert models.shipped() == []


def test_models_command(shipped_root, capsys):
    main(["models"])
    out = capsys.readouterr().out
    assert NAME in out and "stylegan3" in out and "pix2pixhd" in out
    main(["models", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert {r["kind"] for r in rows} == {"stylegan3", "pix2pixhd"}
    main(["models", "verify"])
    assert "2 shipped file(s) match" in capsys.readouterr().out
    main(["models", "show", NAME])
    assert "A test card." in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["models", "show", "other"])
    assert exc.value.code == 2 and "no shipped model named" in capsys.readouterr().err


def test_synth_takes_shipped_names(shipped_root, tmp_path):
    from cellsynth.synth import synth

    out = tmp_path / "s"
    synth(out, masks=f"stylegan3:{NAME}", images=f"pix2pixhd:{NAME}", seeds="0-1", device="cpu")
    man = json.loads((out / "manifest.json").read_text())
    assert man["checkpoints"]["masks"]["sha256"] == file_sha256(shipped_root / "masks.pt")
    assert man["checkpoints"]["images"]["sha256"] == file_sha256(shipped_root / "images.pt")
    assert len(list((out / "images").iterdir())) == 2


# ---- the models shipped in this repository ---------------------------------------------------
SHIPPED = models.shipped()


@pytest.mark.skipif(not SHIPPED, reason="no model shipped yet")
@pytest.mark.parametrize("model", SHIPPED, ids=lambda m: f"{m.kind}:{m.label}")
def test_shipped_files_match_their_cards_and_run(model):
    models.verify(model)
    assert model.bytes <= 25 * 1024 * 1024
    text = model.card.read_text()
    for needed in ("License", "Command", "CPU"):
        assert needed in text, needed
    data = torch.load(model.path, weights_only=True)
    if model.kind == "segmenter":  # a saved segmenter folder: a state dict of tensors
        from cellsynth.benchmark.segmenters import get_segmenter_class

        assert data and all(isinstance(t, torch.Tensor) for t in data.values())
        seg = get_segmenter_class(model.segmenter).load(
            models.segmenter_folder(model.name, model.segmenter)
        )
        image = np.zeros((96, 96), np.uint8)
        image[20:40, 20:44], image[60:80, 50:70] = 180, 120
        a = seg.predict(image)
        assert a.shape == image.shape and np.array_equal(a, seg.predict(image))
        return
    assert data["kind"] == model.kind
    if model.kind == "stylegan3":
        from cellsynth.stylegan3.generate import MaskGenerator

        a = MaskGenerator.load(model.name).generate([0, 1], batch=2)
        b = MaskGenerator.load(model.name).generate([0, 1], batch=2)
        assert np.array_equal(a, b) and np.isfinite(a).all()
    else:
        from cellsynth.pix2pixhd.translator import Translator

        lab = np.zeros((64, 64), np.uint16)
        lab[10:30, 12:34], lab[40:58, 30:50] = 1, 2
        tr = Translator.load(model.name)
        a = tr.translate((lab > 0).astype(np.uint8), lab)
        assert np.array_equal(a, Translator.load(model.name).translate(lab > 0, lab))
        assert a.shape[:2] == (64, 64)


def test_resume_from_a_weights_only_generator_fine_tunes(shipped_root, tmp_path):
    from conftest import make_masks_zip, sg3_options

    from cellsynth.stylegan3.training_loop import Trainer

    data = make_masks_zip(tmp_path / "m.zip")
    opts = sg3_options(data, tmp_path / "runs", cfg="stylegan2", resume=NAME)
    assert opts["resume"] == str(shipped_root / "masks.pt")
    tr = Trainer(opts)
    assert tr.fine_tune and tr.cur_nimg == 0
    shipped = torch.load(shipped_root / "masks.pt", weights_only=True)["G_ema"]
    for k, v in tr.G.state_dict().items():
        assert torch.equal(v, shipped[k].float()), k
    tr.step()
    assert tr.cur_nimg == tr.batch
    assert any(not torch.equal(v, shipped[k].float()) for k, v in tr.G.state_dict().items())
