"""The ``cellsynth`` command: a thin click group.

Each command group lives in its own module here (``dataset``, ``tools``, ``stylegan3``,
``pix2pixhd``, ``synth``, ``benchmark``, ``demo``, ``models``); they parse options, call the library and
report. Heavy imports (torch) happen inside the commands so ``cellsynth --help`` stays fast.
Library code raises :class:`cellsynth.errors.CellsynthError`; :func:`main` prints its message
as one line on stderr and exits with status 2. It does the same for an ``OSError`` (a full disk,
a read-only or forbidden folder, a file where a folder should be, a name too long): one line
naming the path and the cause (:func:`cellsynth.atomic.os_error_message`); the atomic writers
have already removed their partial output by then.
"""

from __future__ import annotations

import importlib
import sys

import click

from cellsynth import __version__
from cellsynth.errors import CellsynthError

# (module, attribute) of every sub-command or group, loaded when the group is built.
_COMMANDS = {
    "dataset": ("cellsynth.cli.dataset", "dataset"),
    "tools": ("cellsynth.cli.tools", "tools"),
    "stylegan3": ("cellsynth.cli.stylegan3", "stylegan3"),
    "pix2pixhd": ("cellsynth.cli.pix2pixhd", "pix2pixhd"),
    "synth": ("cellsynth.cli.synth", "synth"),
    "benchmark": ("cellsynth.cli.benchmark", "benchmark"),
    "demo": ("cellsynth.cli.demo", "demo"),
    "models": ("cellsynth.cli.models", "models"),
}


class _LazyGroup(click.Group):
    """Loads the command modules on demand, so one broken group cannot break the others."""

    def list_commands(self, ctx):
        return sorted(name for name in _COMMANDS if self._load(name) is not None)

    def get_command(self, ctx, name):
        return self._load(name)

    @staticmethod
    def _load(name):
        if name not in _COMMANDS:
            return None
        module, attr = _COMMANDS[name]
        try:
            return getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as exc:
            if exc.name == module:  # the group is not built yet
                return None
            raise


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cellsynth")
def cli():
    """cellsynth: synthetic, fully annotated microscopy data and a segmenter benchmark."""


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def main(argv=None) -> None:
    """Console entry point: run the group, turning CellsynthError and OSError into one line +
    exit 2 (every command goes through here)."""
    try:
        cli.main(args=argv, prog_name="cellsynth", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except CellsynthError as exc:
        click.echo(f"error: {_one_line(str(exc))}", err=True)
        sys.exit(2)
    except OSError as exc:
        from cellsynth.atomic import os_error_message

        click.echo(f"error: {_one_line(os_error_message(exc))}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
