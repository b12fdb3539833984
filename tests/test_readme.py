"""The README cannot rot: every ``cellsynth`` command in its bash blocks runs here, in order, at
tiny sizes.

Tiny sizes come from flags appended to each command (click keeps the last value of a repeated
option), so the command lines themselves are exactly the README's. Inputs are small copies of
``../shared/data`` laid out as the README's paths say; snapshot paths, whose run-folder names
depend on the run, are resolved by glob.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# (command prefix, flags appended to shrink it)
TINY = [
    ("dataset import", ["--no-progress"]),  # the raw copies below are already small
    ("dataset pack --kind masks", ["--resolution", "32", "--max-images", "8", "--no-progress"]),
    ("dataset pack --kind pairs", ["--size", "32", "--max-images", "3", "--no-progress"]),
    (
        "stylegan3 train",
        [
            "--cbase",
            "512",
            "--cmax",
            "16",
            "--kimg",
            "0.032",
            "--tick",
            "0.032",
            "--snap",
            "1",
            "--workers",
            "1",
            "--z-dim",
            "16",
            "--w-dim",
            "16",
            "--no-progress",
        ],
    ),
    ("stylegan3 generate", ["--seeds", "0-1", "--no-progress"]),
    (
        "pix2pixhd train",
        [
            "--ngf",
            "4",
            "--ndf",
            "4",
            "--n_downsample_global",
            "1",
            "--n_blocks_global",
            "1",
            "--num_D",
            "1",
            "--n_layers_D",
            "1",
            "--max_iters",
            "2",
            "--loadSize",
            "32",
            "--fineSize",
            "32",
            "--no-progress",
        ],
    ),
    ("pix2pixhd test", ["--how_many", "1", "--no-progress"]),
    ("synth", ["--seeds", "0-1", "--no-progress"]),
    ("models", []),  # lists and prints cards only
    (
        "benchmark run",
        [
            "--epochs",
            "1",
            "--max-images",
            "1",
            "--samples",
            "1",
            "--quiet",
            "--config",
            "{tiny_bench}",
        ],
    ),
]

TINY_BENCH_YAML = """\
segmenters:
  cellpose: {options: {bsize: 32, batch_size: 2, min_train_masks: 1}, epochs: 1}
  maskrcnn: {options: {arch: resnet18_fpn, crop: 32, batch_size: 1}, epochs: 1}
  u2net: {options: {variant: small, crop: 32, tile: 64, batch_size: 2}, epochs: 1}
  unet:
    options: {unet_channels: [4, 8, 16], strides: [2, 2], num_res_units: 1, crop: 32, tile: 64}
    epochs: 1
  classical: {}
"""


def readme_commands() -> list[str]:
    """The ``cellsynth ...`` lines of the README's bash blocks, in order."""
    text = (ROOT / "README.md").read_text()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip() if not line.startswith("cellsynth") else line
            if line.startswith("cellsynth "):
                cmds.append(line.strip())
    return cmds


def _tiny_flags(cmd: str, tiny_bench: Path) -> list[str]:
    rest = cmd[len("cellsynth ") :]
    for prefix, flags in TINY:
        if rest.startswith(prefix):
            return [f.replace("{tiny_bench}", str(tiny_bench)) for f in flags]
    raise AssertionError(f"README command without tiny settings in tests/test_readme.py: {cmd}")


def _resolve(arg: str, work: Path) -> str:
    """Replace run-dependent snapshot paths by the snapshot that exists."""
    m = re.search(r"(runs/[^:]*?)/\d{5}-[^/]+/network-snapshot-[\d.]+\.pt", arg)
    if not m:
        return arg
    found = sorted((work / m.group(1)).glob("*/network-snapshot-*.pt"))
    assert found, f"no snapshot under {m.group(1)} for {arg}"
    return arg[: m.start()] + str(found[-1].relative_to(work)) + arg[m.end() :]


def _make_inputs(work: Path, dsb: Path, livecell: Path) -> None:
    from cellsynth.datasets.io import read_labels, write_image

    raw = work / "data" / "raw"
    # LIVECell as a user downloads it: images + the COCO JSON
    shutil.copytree(livecell, raw / "livecell")
    # DSB2018 stage-1 layout from three real samples: ID/images/ID.png + one PNG per nucleus
    names = sorted(p.stem for p in (dsb / "train" / "images").glob("*.tif"))[:3]
    from cellsynth.datasets.io import read_image

    for name in names:
        img = read_image(dsb / "train" / "images" / f"{name}.tif")
        lab = read_labels(dsb / "train" / "masks" / f"{name}.tif")
        write_image(raw / "stage1_train" / name / "images" / f"{name}.png", img)
        for i in np.unique(lab)[1:]:
            write_image(
                raw / "stage1_train" / name / "masks" / f"{name}_{i}.png",
                ((lab == i) * 255).astype(np.uint8),
            )
    # a small EmbedSeg-layout copy of dsb2018-fluo
    for split, n in (("train", 6), ("test", 2)):
        for sub in ("images", "masks"):
            (raw / "dsb2018-fluo" / split / sub).mkdir(parents=True)
        for p in sorted((dsb / split / "images").glob("*.tif"))[:n]:
            for sub in ("images", "masks"):
                shutil.copy(dsb / split / sub / p.name, raw / "dsb2018-fluo" / split / sub / p.name)


@pytest.mark.slow
def test_readme_commands_run(tmp_path, dsb2018_dir, livecell_dir):
    cmds = readme_commands()
    assert len(cmds) >= 9, cmds
    _make_inputs(tmp_path, dsb2018_dir, livecell_dir)
    tiny_bench = tmp_path / "tiny-bench.yaml"
    tiny_bench.write_text(TINY_BENCH_YAML)
    exe = [sys.executable, "-m", "cellsynth"]
    for cmd in cmds:
        args = [_resolve(a, tmp_path) for a in shlex.split(cmd)[1:]]
        full = exe + args + _tiny_flags(cmd, tiny_bench)
        r = subprocess.run(full, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, (
            f"{cmd}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"
        )
    # what the last stages promise exists
    assert (tmp_path / "out" / "synthetic" / "annotations.json").is_file()
    assert (tmp_path / "out" / "bench" / "report.html").is_file()


def test_readme_demo_command_exists():
    text = (ROOT / "README.md").read_text()
    assert "make demo" in text and "make test" in text
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
