"""Dask clusters behind ``--dask``: what the option may say, and the client of a run.

``--dask`` takes one of

- ``local:N``: a ``dask.distributed`` LocalCluster of N worker processes (one thread each),
  started for the run on this machine and stopped after it;
- a scheduler address: ``tcp://HOST:PORT`` (also ``tls://``, ``ws://``, ``wss://``, ``ucx://``)
  or ``HOST:PORT``, of a scheduler that is already running (``dask scheduler``, dask-jobqueue,
  dask-gateway, ...);
- a scheduler file (``*.json``, as ``dask scheduler --scheduler-file`` writes it).

:func:`parse_dask` checks the text (one clear line when it is none of these);
:func:`dask_client` starts or reaches the cluster and yields a ``distributed.Client``. Dask is an
optional extra (``pip install 'cellsynth[dask]'``); without it ``--dask`` stops with one line
saying what to install. How long connecting may take is Dask's own setting
``distributed.comm.timeouts.connect`` (env ``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT``).

Leaf module: the standard library, the package version and the error type (``distributed`` is
imported only when a cluster is asked for).
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cellsynth import __version__
from cellsynth.errors import CellsynthError, first_line

INSTALL_HINT = "pip install 'cellsynth[dask]' (or pip install 'dask[distributed]')"
SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")
MAX_LOCAL_WORKERS = 1024
_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(?P<port>\d+)")


@dataclass(frozen=True)
class DaskTarget:
    """What ``--dask`` named: ``local`` workers to start, or the ``address`` of a scheduler."""

    spec: str
    local: int = 0
    address: str | None = None

    def __str__(self) -> str:
        return self.spec


def _address(text: str, option: str, spec: str) -> str:
    """``[SCHEME://]HOST:PORT`` -> ``SCHEME://HOST:PORT`` (tcp when no scheme)."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "tcp", text
    m = _HOST_PORT.fullmatch(rest)
    if scheme not in SCHEMES or m is None or not 0 < int(m.group("port")) < 65536:
        raise CellsynthError(
            f"{option} {spec!r}: not a Dask scheduler address; give local:N (N worker processes "
            "on this machine), tcp://HOST:PORT of a running scheduler, or its scheduler file "
            "(.json)"
        )
    return f"{scheme}://{m.group('host')}:{int(m.group('port'))}"


def _scheduler_file(path: Path, option: str) -> str:
    """The address a scheduler file (``dask scheduler --scheduler-file``) records."""
    if not path.is_file():
        raise CellsynthError(
            f"{option} {path}: no such scheduler file; start the scheduler with "
            f"`dask scheduler --scheduler-file {path}` first, or give its address"
        )
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CellsynthError(f"{option} {path}: not a Dask scheduler file ({exc})") from None
    address = doc.get("address") if isinstance(doc, dict) else None
    if not isinstance(address, str) or not address:
        raise CellsynthError(f"{option} {path}: the scheduler file records no 'address'")
    return _address(address, option, str(path))


def parse_dask(spec, option: str = "--dask") -> DaskTarget | None:
    """Check the value of ``--dask`` (None or "" = no cluster). Raises CellsynthError."""
    if spec is None:
        return None
    if isinstance(spec, DaskTarget):
        return spec
    text = str(spec).strip()
    if not text:
        return None
    if text.startswith("local:") or text == "local":
        n = text.partition(":")[2].strip()
        if not n.isdigit() or not 1 <= int(n) <= MAX_LOCAL_WORKERS:
            raise CellsynthError(
                f"{option} {text!r}: give local:N with N worker processes, 1..{MAX_LOCAL_WORKERS}"
                " (e.g. local:4)"
            )
        return DaskTarget(text, local=int(n))
    if text.endswith(".json"):
        return DaskTarget(text, address=_scheduler_file(Path(text).expanduser(), option))
    return DaskTarget(text, address=_address(text, option, text))


def require_distributed(option: str = "--dask"):
    """The ``distributed`` module, or CellsynthError saying what to install."""
    try:
        import distributed
    except ImportError as exc:
        raise CellsynthError(
            f"{option} needs Dask, which is not installed here ({exc}); install it with "
            f"{INSTALL_HINT}"
        ) from None
    return distributed


def worker_facts() -> dict:
    """Run on each worker at the start: what it runs (checked against this client)."""
    import os
    import socket

    return {"version": __version__, "host": socket.gethostname(), "pid": os.getpid()}


def _connect_timeout() -> float:
    import dask.config
    from dask.utils import parse_timedelta

    return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s"))


def _check_workers(client, target: DaskTarget, option: str) -> None:
    """The workers run this cellsynth version (one line when they cannot run it at all)."""
    try:
        facts = client.run(worker_facts)
    except Exception as exc:  # a worker without cellsynth, or another Python
        raise CellsynthError(
            f"{option} {target}: the Dask workers cannot run cellsynth "
            f"({type(exc).__name__}: {first_line(exc)}); install cellsynth {__version__} "
            "(and the same Python packages) on every worker"
        ) from None
    other = sorted(
        {f"{f['version']} on {f['host']}" for f in facts.values() if f["version"] != __version__}
    )
    if other:
        raise CellsynthError(
            f"{option} {target}: workers run cellsynth {', '.join(other)}, this client "
            f"{__version__}; install the same version everywhere"
        )


@contextlib.contextmanager
def dask_client(spec, option: str = "--dask", wait_s: float | None = None) -> Iterator:
    """A ``distributed.Client`` of the cluster ``spec`` names (see :func:`parse_dask`) for the
    ``with`` block; a LocalCluster started here is stopped at the end.

    ``wait_s``: how long to wait for a scheduler to answer (default: Dask's connect timeout).
    Raises CellsynthError (one line) when Dask is missing, the address is malformed, or nobody
    answers there.
    """
    target = parse_dask(spec, option)
    if target is None:
        raise CellsynthError(f"{option}: no cluster given")
    distributed = require_distributed(option)
    with contextlib.ExitStack() as stack:
        if target.local:
            cluster = distributed.LocalCluster(
                n_workers=target.local,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
            )
            stack.callback(cluster.close)
            client = distributed.Client(cluster)
            stack.callback(client.close)
        else:
            timeout = _connect_timeout() if wait_s is None else float(wait_s)
            try:
                client = distributed.Client(target.address, timeout=timeout)
            except (OSError, distributed.TimeoutError) as exc:
                raise CellsynthError(
                    f"{option} {target}: no Dask scheduler answered at {target.address} within "
                    f"{timeout:g} s ({first_line(exc, type(exc).__name__)}); start one "
                    "(`dask scheduler`, then `dask worker ADDRESS`) or use --dask local:N"
                ) from None
            stack.callback(client.close)
            try:
                client.wait_for_workers(1, timeout=timeout)
            except (distributed.TimeoutError, TimeoutError, OSError):
                print(
                    f"note: the Dask scheduler at {target.address} has no workers yet; the run "
                    "waits for them (start some with `dask worker ADDRESS`)",
                    file=sys.stderr,
                )
        _check_workers(client, target, option)
        yield client


def n_slots(client) -> int:
    """How many tasks the cluster runs at once now: its workers' threads (at least 1)."""
    try:
        return max(1, sum(client.nthreads().values()))
    except Exception:  # a scheduler that does not answer now: assume one
        return 1
