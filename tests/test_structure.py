"""The shape of the package: every module imports, no two modules import each other, the layout's
"may import" arrows of DESIGN.md hold, and environment.yml installs what ``make setup`` does."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cellsynth"

# DESIGN.md, "Layout": what each top-level subpackage may import (besides itself and the shared
# top-level modules such as errors, atomic, lock and htmlkit, which import no subpackage).
BELOW_CLI = {"datasets", "tools", "training", "models", "stylegan3", "pix2pixhd", "synth"}
MAY_IMPORT = {
    "datasets": {"tools"},
    "tools": set(),
    "training": set(),
    "models": {"training"},
    "stylegan3": {"training", "models", "datasets", "tools"},
    "pix2pixhd": {"training", "models", "datasets", "tools"},
    "synth": {"stylegan3", "pix2pixhd", "tools", "datasets", "models"},
    "benchmark": {"datasets", "tools"},
    "demo": BELOW_CLI | {"benchmark"},
    "cli": BELOW_CLI | {"benchmark", "demo"},
}
# ...and the third-party packages the array-level tools may use.
TOOLS_THIRD_PARTY = {"numpy", "scipy", "skimage"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _imports(name: str, path: Path) -> tuple[set[str], set[str]]:
    """(cellsynth modules, other top-level packages) that module ``name`` imports anywhere in
    its file: at module level, inside functions, or under ``if TYPE_CHECKING``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    ours, others = set(), set()

    def add(target: str) -> None:
        if target == "cellsynth" or target.startswith("cellsynth."):
            ours.add(target)
        else:
            others.add(target.split(".")[0])

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in MODULES else base)  # a submodule, or a name in ``base``
    ours.discard(name)
    return ours, others


GRAPH = {name: _imports(name, path)[0] for name, path in MODULES.items()}


def _area(name: str) -> str | None:
    """The top-level subpackage of a module (None for the shared top-level modules; the
    ``python -m cellsynth`` entry point belongs to the CLI)."""
    if name == "cellsynth.__main__":
        return "cli"
    parts = name.split(".")
    if len(parts) > 1 and (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return None


@pytest.mark.parametrize("name", [m for m in MODULES if not m.endswith("__main__")])
def test_every_module_imports(name):
    importlib.import_module(name)


def test_no_two_modules_import_each_other():
    pairs = sorted(
        f"{a} <-> {b}" for a, targets in GRAPH.items() for b in targets if a < b and a in GRAPH[b]
    )
    assert not pairs, "modules that import each other:\n" + "\n".join(pairs)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    cycles = _cycles(GRAPH)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_layout_arrows():
    wrong = []
    for name, targets in GRAPH.items():
        area = _area(name)
        for target in targets:
            other = _area(target)
            if other == area:
                continue
            if area is None and other is not None:
                wrong.append(f"{name} (shared top-level module) imports {target}")
            elif other is not None and other not in MAY_IMPORT.get(area, set()):
                wrong.append(f"{name} ({area}) imports {target} ({other})")
    assert not wrong, "imports against the layout of DESIGN.md:\n" + "\n".join(sorted(wrong))


def test_tools_use_numpy_scipy_skimage_only():
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    wrong = []
    for name, path in MODULES.items():
        if _area(name) == "tools":
            extra = _imports(name, path)[1] - stdlib - TOOLS_THIRD_PARTY
            wrong += [f"{name} imports {pkg}" for pkg in sorted(extra)]
    assert not wrong, "\n".join(wrong)


def test_structure_checks_see_what_they_should(tmp_path):
    """The checks read imports inside functions and ``from pkg import submodule``, and would
    notice a circle."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from cellsynth.stylegan3.ops import cpu_fast\n"
        "def f():\n    from cellsynth.pix2pixhd.translator import Translator\n"
    )
    ours, _ = _imports("cellsynth.probe", probe)
    assert ours == {"cellsynth.stylegan3.ops.cpu_fast", "cellsynth.pix2pixhd.translator"}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert "cellsynth.tools.points" in GRAPH["cellsynth.synth.options"]


# ---- the conda route --------------------------------------------------------------------------
def _extras_named(requirement: str) -> set[str]:
    """``cellsynth[benchmark,dev]`` or ``-e .[all]`` -> {"benchmark", "dev"} / {"all"}."""
    inside = requirement.partition("[")[2].partition("]")[0]
    return {e.strip() for e in inside.split(",") if e.strip()}


def test_environment_yml_installs_what_make_setup_does():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["name"] == "cellsynth"
    deps = env["dependencies"]
    conda = [d for d in deps if isinstance(d, str)]
    assert any(d.split("=")[0].split(">")[0].strip() == "python" for d in conda), conda
    assert "pip" in conda
    pip = [d for d in deps if isinstance(d, dict)]
    assert len(pip) == 1 and list(pip[0]) == ["pip"]
    assert pip[0]["pip"] == ["-e .[all]"]
    makefile = (ROOT / "Makefile").read_text()
    assert '-e ".[all]"' in makefile  # the same set as `make setup`
    # what the Makefile installs without its dependencies, environment.yml names too
    for line in makefile.splitlines():
        if "--no-deps" in line:
            spec = line.split("--no-deps", 1)[1].strip().strip('"')
            assert f"--no-deps {spec}" in (ROOT / "environment.yml").read_text(), spec
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    named = set().union(*(_extras_named(r) for r in extras["all"]))
    # microsam is opt-in (micro-sam pulls about 120 packages): not in [all] / make setup
    assert named == set(extras) - {"all", "microsam"}, "[all] must name every other extra"
    py = next(d for d in conda if d.startswith("python"))
    floor = project["requires-python"].removeprefix(">=")
    assert floor in py, f"environment.yml pins {py}; pyproject requires {floor}"
    assert "environment.yml" in (ROOT / "README.md").read_text()
