"""Output-folder locks: one run writes a folder at a time.

A run that writes a folder holds ``FOLDER/.cellsynth.lock`` (or another name in that folder)
for as long as it writes. The file is JSON: ``{"pid", "host", "start", "command", "time"}``
(``start`` is the process start time from ``/proc``, which tells a live process from a new one
that got the same PID). It is created atomically (``O_CREAT | O_EXCL``) and, where the OS has
``flock``, also held with an exclusive ``flock`` for the whole run, so a lock whose process has
died is recognised even after its PID was reused.

A second run on the folder stops with one line naming the PID and host that hold it. A lock
left by a process that no longer runs on this host (a killed run) is stale: it is taken over,
with a note on stderr (so is an empty lock file nobody holds, older than 10 s: a run killed as
it took the lock). A lock from another host cannot be checked and is never taken over.
Leaf module: imports nothing from cellsynth but the error type.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from cellsynth.errors import CellsynthError

try:  # POSIX only; elsewhere the PID check alone decides
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

LOCK_NAME = ".cellsynth.lock"


def _start_time(pid: int) -> str | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces or parentheses: split after its last ")"
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int, start: str | None) -> bool:
    """Whether ``pid`` runs on this host and is the process that wrote the lock."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if start is not None:
        now = _start_time(pid)
        if now is not None and now != start:
            return False  # the PID was reused by a newer process
    return True


def _read(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _flock(fd: int) -> bool:
    """Take the exclusive flock without waiting; False when another open file holds it."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # file systems without flock: the PID check alone decides
        return True
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    return os.path.samestat(os.fstat(fd), st)


def _pid(doc: dict) -> int:
    try:
        return int(doc.get("pid") or 0)
    except (TypeError, ValueError):
        return 0


def _abandoned(fd: int) -> bool:
    """An unreadable lock file nobody holds is abandoned once it is older than a few seconds
    (its writer takes the flock before writing, and writes at once)."""
    return time.time() - os.fstat(fd).st_mtime > 10


def describe(doc: dict | None) -> str:
    """Who holds a lock, from its record (for messages)."""
    if not doc:
        return "another run (its lock file is still being written or unreadable)"
    what = f"`{doc['command']}` " if doc.get("command") else ""
    return f"a {what}run, PID {doc.get('pid')} on {doc.get('host')}"


class FolderLock:
    """An exclusive lock on a folder (see the module docstring); use :func:`lock_folder`."""

    def __init__(self, folder: str | os.PathLike, command: str = "", name: str = LOCK_NAME):
        self.folder = Path(folder)
        self.path = self.folder / name
        self.command = command
        self.fd: int | None = None
        self.took_over: dict | None = None

    def _record(self) -> bytes:
        doc = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start": _start_time(os.getpid()),
            "command": self.command,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        return (json.dumps(doc) + "\n").encode("utf-8")

    def _write(self, fd: int) -> None:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, self._record())
        os.fsync(fd)

    def _refuse(self, doc: dict | None, why: str = "") -> CellsynthError:
        return CellsynthError(
            f"{self.folder} is in use by {describe(doc)}{why}; wait for it to finish, or "
            f"delete {self.path} if no run is using the folder"
        )

    def acquire(self) -> FolderLock:
        """Take the lock (creating it atomically) or raise CellsynthError naming the holder."""
        host = socket.gethostname()
        for _ in range(50):  # retries only when a holder releases the lock meanwhile
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pass
            else:
                # another run may be reading the new, still empty file under its flock for a
                # moment (it then backs off): wait for it
                for _ in range(200):
                    if _flock(fd):
                        break
                    time.sleep(0.01)
                else:
                    with contextlib.suppress(OSError):
                        if _same_file(fd, self.path):
                            os.unlink(self.path)
                    os.close(fd)
                    raise self._refuse(None)
                self._write(fd)
                self.fd = fd
                return self
            try:
                fd = os.open(self.path, os.O_RDWR)
            except FileNotFoundError:
                continue  # released just now: try to create it again
            if not _flock(fd):
                doc = _read(fd)
                for _ in range(50):  # the holder may be writing its record just now
                    if doc is not None:
                        break
                    time.sleep(0.01)
                    doc = _read(fd)
                os.close(fd)
                raise self._refuse(doc)
            if not _same_file(fd, self.path):  # we locked a file its holder already removed
                os.close(fd)
                continue
            doc = _read(fd)
            if doc is None:
                if not _abandoned(fd):
                    os.close(fd)  # being written by a run that has not taken its flock yet
                    raise self._refuse(None)
                self._write(fd)  # left empty by a run killed as it took the lock
                self.fd = fd
                self.took_over = {}
                print(
                    f"note: took over the abandoned, unreadable lock {self.path}", file=sys.stderr
                )
                return self
            if doc.get("host") != host:
                os.close(fd)
                raise self._refuse(doc, " (another host: its process cannot be checked)")
            pid = _pid(doc)
            if pid != os.getpid() and _alive(pid, doc.get("start")):
                os.close(fd)
                raise self._refuse(doc)
            self._write(fd)  # stale: its process is gone, take it over
            self.fd = fd
            self.took_over = doc
            print(
                f"note: took over the stale lock {self.path} of PID {pid} on {host} "
                "(that process no longer runs)",
                file=sys.stderr,
            )
            return self
        raise CellsynthError(f"{self.path}: could not take the lock (it keeps changing)")

    def release(self) -> None:
        """Remove the lock file and drop the flock (only if this object holds it)."""
        if self.fd is None:
            return
        try:
            if _same_file(self.fd, self.path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_folder(folder: str | os.PathLike, command: str = "", name: str = LOCK_NAME) -> FolderLock:
    """A context manager holding the lock of ``folder`` (which must exist) for a ``command``."""
    return FolderLock(folder, command, name)


def holder(folder: str | os.PathLike, name: str = LOCK_NAME) -> dict | None:
    """The record of the live run holding ``folder/name``, or None when nobody holds it."""
    path = Path(folder) / name
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        held = not _flock(fd)
        doc = _read(fd)
        if held:
            return doc or {}
        if doc is None:
            return None if _abandoned(fd) else {}
        if doc.get("host") != socket.gethostname():
            return doc  # another host's: cannot be checked, assume it is live
        pid = _pid(doc)
        return doc if pid != os.getpid() and _alive(pid, doc.get("start")) else None
    finally:
        os.close(fd)  # closing drops a flock taken just to probe
