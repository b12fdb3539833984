"""The one error type that the command line turns into a single clear line.

Library code raises :class:`CellsynthError` for bad input (what, which file, what to do);
``cellsynth.cli`` prints its message on one line and exits non-zero. Leaf module: it imports
nothing from cellsynth, so every package may use it.
"""


class CellsynthError(Exception):
    """Bad input or an unusable environment, explained in one line for the user."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`CellsynthError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise CellsynthError(message)


def first_line(exc: BaseException, default: str = "") -> str:
    """The first line of ``exc``'s message, without surrounding blanks (``default`` when the
    message is empty)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else default
