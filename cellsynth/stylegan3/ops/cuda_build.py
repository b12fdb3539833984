"""Build and load the custom CUDA ops (``ops/cuda/*.cu, *.cpp, *.h``) at first use.

Each extension (``bias_act``, ``upfirdn2d``, ``filtered_lrelu``) is compiled with
``torch.utils.cpp_extension.load`` (ninja) into ``CACHE/<name>-<hash>-<arch>`` where CACHE is
``$CELLSYNTH_OPS_CACHE`` or ``~/.cache/cellsynth/ops``, ``hash`` covers the sources, torch, CUDA
and Python versions, and ``arch`` is the GPU architecture (the current device's, else
``$TORCH_CUDA_ARCH_LIST``, else 9.0). A file lock (``fcntl.flock``) around build and load keeps
several processes that start at once (``--gpus N``) from building the same folder together.

``build(name)`` returns the loaded module or raises CellsynthError with the tail of the compiler
log, the compilers, CUDA and torch versions and what to try; ``try_build(name)`` returns None
instead, after one loud warning per extension.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

from cellsynth.errors import CellsynthError
from cellsynth.stylegan3.ops.common import (  # noqa: F401 (CACHE_ENV re-exported)
    CACHE_ENV,
    cache_root,
    file_lock,
    log_tail,
)

SOURCE_DIR = Path(__file__).resolve().parent / "cuda"

# Compiled sources of each extension and the headers they include (all go into the hash).
SOURCES = {
    "bias_act": (["bias_act.cpp", "bias_act.cu"], ["bias_act.h", "device_io.cuh"]),
    "upfirdn2d": (
        ["upfirdn2d.cpp", "upfirdn2d.cu"],
        ["device_io.cuh", "upfirdn_common.h", "upfirdn_host.h", "upfirdn_kernel.cuh"],
    ),
    "filtered_lrelu": (
        ["filtered_lrelu.cpp", "filtered_lrelu.cu"],
        ["device_io.cuh", "upfirdn_common.h", "upfirdn_host.h", "upfirdn_kernel.cuh"],
    ),
}

_MODULES: dict = {}
_FAILURES: dict = {}


def find_cuda_home() -> str | None:
    """The CUDA toolkit folder (with include/cuda_runtime.h and bin/nvcc), or None.

    Looks at ``$CUDA_HOME``, ``$CUDA_PATH``, the ``nvcc`` on PATH (its real path, or a wrapper's
    parent folder) and ``/usr/local/cuda``.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates += [str(Path(nvcc).resolve().parent.parent), str(Path(nvcc).parent.parent)]
    candidates += ["/usr/local/cuda"]
    for c in candidates:
        if (
            c
            and (Path(c) / "include" / "cuda_runtime.h").is_file()
            and (Path(c) / "bin" / "nvcc").exists()
        ):
            return c
    return None


def _device_arch() -> str:
    """Arch list to compile for, e.g. "9.0" (current device, env, or 9.0)."""
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{major}.{minor}"
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if env and env != "native":
        return env
    return "9.0"


def _arch_tag(arch_list: str) -> str:
    parts = arch_list.replace(",", ";").replace(" ", ";").split(";")
    return "-".join("sm" + p.replace(".", "").replace("+PTX", "ptx") for p in parts if p)


def _source_paths(name: str) -> list[Path]:
    if name not in SOURCES:
        raise CellsynthError(f"unknown CUDA op {name!r}; use one of {', '.join(SOURCES)}")
    srcs, headers = SOURCES[name]
    paths = [SOURCE_DIR / s for s in srcs + headers]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise CellsynthError(
            f"CUDA op sources missing: {', '.join(missing)}; reinstall cellsynth "
            "(the package data must include ops/cuda/*)"
        )
    return paths


def source_hash(name: str) -> str:
    """Hash of the sources of extension ``name`` plus the torch, CUDA and Python versions."""
    import torch

    h = hashlib.sha256()
    for p in _source_paths(name):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    py = f"{sys.implementation.cache_tag}-{sys.platform}"
    h.update(f"torch={torch.__version__};cuda={torch.version.cuda};python={py}".encode())
    return h.hexdigest()[:12]


def build_dir(name: str) -> Path:
    """The cache folder of extension ``name`` for this source hash and GPU architecture."""
    return cache_root() / f"{name}-{source_hash(name)}-{_arch_tag(_device_arch())}"


@contextlib.contextmanager
def _env(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _cudart_link_dir() -> str | None:
    """A cache folder holding ``libcudart.so`` -> the pip CUDA runtime that torch uses.

    Pip wheels ship only ``nvidia/cu13/lib/libcudart.so.13`` (or ``nvidia/cuda_runtime/lib``),
    with no unversioned name for the linker; the symlink lets ``-lcudart`` find it.
    """
    import torch

    major = (torch.version.cuda or "").split(".")[0]
    site = Path(torch.__file__).resolve().parent.parent
    pattern_dirs = [f"nvidia/cu{major}/lib", "nvidia/cuda_runtime/lib"]
    for d in pattern_dirs:
        hits = sorted(glob.glob(str(site / d / f"libcudart.so.{major}*")))
        if hits:
            target = hits[0]
            link_dir = cache_root() / f"lib-cudart{major}"
            link_dir.mkdir(parents=True, exist_ok=True)
            link = link_dir / "libcudart.so"
            if not (link.is_symlink() and os.readlink(link) == target):
                tmp = link_dir / f".libcudart.so.{os.getpid()}"
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                os.symlink(target, tmp)
                os.replace(tmp, link)
            return str(link_dir)
    return None


def _tool_version(cmd: list[str], last: bool = False) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "not found"
    lines = [ln for ln in out.splitlines() if ln.strip()]
    if not lines:
        return "unknown"
    return lines[-1] if last else lines[0]


def _environment_report(cuda_home: str | None) -> str:
    import torch

    cxx = os.environ.get("CXX", "c++")
    nvcc = str(Path(cuda_home) / "bin" / "nvcc") if cuda_home else "nvcc"
    return (
        f"host compiler: {cxx} ({_tool_version([cxx, '--version'])}); "
        f"nvcc: {nvcc} ({_tool_version([nvcc, '--version'], last=True)}); "
        f"CUDA_HOME: {cuda_home or 'not found'}; "
        f"torch {torch.__version__} built with CUDA {torch.version.cuda}; "
        f"arch {_device_arch()}"
    )


def _advice(where: Path) -> str:
    return (
        "what to try: install a CUDA toolkit whose major version matches torch's CUDA and set "
        "CUDA_HOME to it; use a host compiler that this nvcc supports (set CXX); install ninja; "
        f"delete {where} to rebuild from scratch; or run the pure-PyTorch ops with impl='ref' "
        "(CELLSYNTH_OPS_IMPL=ref)"
    )


def build(name: str, verbose: bool = False):
    """Compile (once per source hash and arch) and import the CUDA extension ``name``.

    Args:
        name: "bias_act", "upfirdn2d" or "filtered_lrelu".
        verbose: show the compiler commands and output.

    Returns:
        the loaded extension module.

    Raises:
        CellsynthError: when the build fails (compiler log tail, versions, what to try).
    """
    if name in _MODULES:
        return _MODULES[name]
    if name in _FAILURES:
        raise CellsynthError(_FAILURES[name])
    import torch

    paths = _source_paths(name)
    if torch.version.cuda is None:
        msg = (
            f"cannot build CUDA op {name}: this torch ({torch.__version__}) has no CUDA support; "
            "install a CUDA build of torch or use impl='ref'"
        )
        _FAILURES[name] = msg
        raise CellsynthError(msg)
    cuda_home = find_cuda_home()
    where = build_dir(name)
    if cuda_home is None:
        msg = (
            f"cannot build CUDA op {name}: no CUDA toolkit found (nvcc and include/"
            f"cuda_runtime.h; looked at $CUDA_HOME, $CUDA_PATH, nvcc on PATH, /usr/local/cuda). "
            f"{_environment_report(None)}. {_advice(where)}"
        )
        _FAILURES[name] = msg
        raise CellsynthError(msg)

    with _env(CUDA_HOME=os.environ.get("CUDA_HOME") or cuda_home):
        from torch.utils import cpp_extension  # reads $CUDA_HOME on first import

    # torch finds CUDA_HOME from `which nvcc`, which is wrong for a wrapper script such as
    # /usr/local/bin/nvcc; use the folder found above.
    cpp_extension.CUDA_HOME = cuda_home
    ldflags = []
    link_dir = _cudart_link_dir()
    if link_dir:
        ldflags.append(f"-L{link_dir}")
    where.mkdir(parents=True, exist_ok=True)
    log_path = where / "build.log"
    module_name = f"cellsynth_{name}_{where.name.split('-')[1]}"
    try:
        with (
            file_lock(where.parent / f"{where.name}.lock"),
            _env(TORCH_CUDA_ARCH_LIST=_device_arch(), CUDA_HOME=cuda_home),
        ):
            # torch's own lock file, left behind by a build that was killed, would make load()
            # wait forever; under our exclusive lock nobody else is building here.
            with contextlib.suppress(FileNotFoundError):
                (where / "lock").unlink()
            module = cpp_extension.load(
                name=module_name,
                sources=[str(p) for p in paths if p.suffix in (".cpp", ".cu")],
                extra_include_paths=[str(SOURCE_DIR)],
                extra_cflags=["-O3"],
                extra_cuda_cflags=["-O3"],
                extra_ldflags=ldflags,
                build_directory=str(where),
                verbose=verbose,
            )
    except (RuntimeError, OSError, ImportError, subprocess.SubprocessError) as e:
        text = str(e)
        with contextlib.suppress(OSError):
            log_path.write_text(text)
        msg = (
            f"building CUDA op {name} failed (full log: {log_path}); "
            f"{_environment_report(cuda_home)}. {_advice(where)}\n"
            f"--- last lines of the compiler log ---\n{log_tail(text)}"
        )
        _FAILURES[name] = msg
        raise CellsynthError(msg) from e
    _MODULES[name] = module
    return module


def try_build(name: str):
    """Like ``build`` but returns None on failure, after one loud warning per extension."""
    try:
        return build(name)
    except CellsynthError as e:
        key = f"warned:{name}"
        if key not in _FAILURES:
            _FAILURES[key] = "1"
            warnings.warn(
                f"cellsynth: falling back to the reference {name} op. {e}",
                RuntimeWarning,
                stacklevel=3,
            )
        return None
