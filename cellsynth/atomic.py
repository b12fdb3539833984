"""Atomic file and folder writes: write under a temporary name, then rename.

Every command that writes files goes through these helpers, so a failed or killed run never
leaves a half-written file behind, and nothing is overwritten unless the caller says so.
An ``OSError`` raised while writing (no space, read-only, permission denied, a file where a
folder should be, a name too long) carries the path being written, so the command line
(:func:`os_error_message`) can say in one line which path failed and why.
:func:`file_sha256` is the one checksum of a written file (checkpoint provenance).
Leaf module: imports nothing from cellsynth but the error type.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cellsynth.errors import CellsynthError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_HINTS = {
    errno.ENOSPC: "free some space or write somewhere else",
    errno.EDQUOT: "the disk quota is used up; free some space or write somewhere else",
    errno.EROFS: "choose a writable location",
    errno.EACCES: "choose a location you may write to, or fix its permissions",
    errno.EPERM: "choose a location you may write to",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another location",
    errno.EISDIR: "a folder is in the way; choose another name",
    errno.ENAMETOOLONG: "choose a shorter name",
    errno.ENOENT: "check the path",
    errno.EEXIST: "something is in the way; choose another location",
}


def _short(path: str) -> str:
    """``path`` with any very long name shortened (an over-long name would fill the line)."""
    parts = str(path).split(os.sep)
    return os.sep.join(p if len(p) <= 60 else f"{p[:24]}...({len(p)} characters)" for p in parts)


def _blocking_file(path: str) -> Path | None:
    """The nearest of ``path`` and its parents that exists and is not a folder."""
    for p in (Path(path), *Path(path).parents):
        with contextlib.suppress(OSError):
            if p.exists():
                return None if p.is_dir() else p
    return None


def os_error_message(exc: OSError) -> str:
    """One line for an ``OSError``: the path it concerns, the cause and what to do."""
    path = exc.filename if exc.filename is not None else exc.filename2
    cause = exc.strerror or str(exc) or type(exc).__name__
    hint = _HINTS.get(exc.errno or 0)
    if path is None:
        return f"{cause}" + (f" ({hint})" if hint else "")
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        block = _blocking_file(os.fsdecode(path))
        if block is not None:
            where = "" if str(block) == os.fsdecode(path) else f"{_short(os.fsdecode(path))}: "
            return f"{where}{_short(str(block))} is a file, not a folder; choose another location"
    text = f"{_short(os.fsdecode(path))}: {cause}"
    return text + (f" ({hint})" if hint else "")


def _naming(exc: OSError, path: Path, tmp: Path | None = None) -> OSError:
    """``exc`` naming the path the caller asked for instead of our temporary names.

    A file below the temporary folder ``tmp`` is named below ``path``; a temporary name beside
    ``path`` (``.NAME.*``) or no name at all becomes ``path``.
    """
    name = None if exc.filename is None else os.fsdecode(exc.filename)
    if name is None:
        target = str(path)
    elif tmp is not None and (name == str(tmp) or name.startswith(str(tmp) + os.sep)):
        target = str(path) + name[len(str(tmp)) :]
    elif Path(name).parent == path.parent and Path(name).name.startswith(f".{path.name}."):
        target = str(path)
    else:
        return exc
    new = OSError(exc.errno, exc.strerror or str(exc), target)
    new.__cause__ = exc
    return new


def check_folder_target(path: str | os.PathLike, option: str = "--out") -> Path:
    """Return ``path`` as a Path; raise if it names an existing file (a folder is needed)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CellsynthError(f"{option} {path} is a file, not a folder; choose a folder")
    return path


@contextlib.contextmanager
def output_folder(path: str | os.PathLike, keep=None, option: str = "--out") -> Iterator[Path]:
    """Create the folder ``path`` (and missing parents) for a run's outputs.

    If the block raises, the folders this call created are removed again, unless
    ``keep(path)`` is true (the folder holds work worth keeping, e.g. resumable snapshots).
    A folder that existed before is never removed (its own files are the caller's business).
    """
    path = check_folder_target(path, option)
    created = None
    for p in (path, *path.parents):
        if p.exists():
            break
        created = p
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        if created is not None and not (keep is not None and keep(path)):
            shutil.rmtree(created, ignore_errors=True)
        raise


def check_writable(path: str | os.PathLike, overwrite: bool) -> Path:
    """Return ``path`` as a Path; raise if it exists and ``overwrite`` is false."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise CellsynthError(f"{path} already exists; pass --overwrite to replace it")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary file is removed if the block raises. The parent folder is created.
    """
    path = check_writable(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _naming(exc, path) from exc
    os.close(fd)
    tmp = Path(tmp)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file permissions
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise _naming(exc, path, tmp) from exc
        raise


def write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path, overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"), overwrite)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only if the block succeeds.

    With ``overwrite`` an existing folder is replaced (removed after the new one is complete);
    without it an existing ``path`` is an error before anything is written.
    """
    path = check_writable(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise _naming(exc, path) from exc
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        yield tmp
        if path.exists() and not overwrite:
            raise CellsynthError(
                f"{path} appeared while this run was writing it (another run?); nothing was "
                "replaced: pass --overwrite to replace it"
            )
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _naming(exc, path, tmp) from exc
        raise


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks), e.g. a checkpoint's provenance."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
