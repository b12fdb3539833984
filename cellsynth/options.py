"""Options defined once, as dataclass fields.

A field made with :func:`option` carries everything the rest of the program needs to know about
it: its Python keyword (``prefix + name``, e.g. ``spots_count``), its command-line flag
(``--spots-count``), old spellings still accepted (hidden from ``--help``), the help text, the
allowed values and the key it is stored under in manifests. The command line
(:mod:`cellsynth.cli.options`) builds its flags from :func:`named_fields`; a function taking
flat keywords maps them back with :func:`keyword_map`; :func:`normalise` converts what either
gave (``"8"`` from a command line, ``2`` for a float option) to the declared types and checks
the choices, naming the flag in its one-line error.

Leaf module: the standard library and the error type only.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import MISSING, dataclass

from cellsynth.errors import CellsynthError

_KINDS = ("bool", "int", "float", "str")


def option(
    default=MISSING,
    *,
    help: str = "",
    choices=None,
    flag: str | None = None,
    kw: str | None = None,
    aliases: tuple[str, ...] = (),
    key: str | None = None,
    switch: bool = False,
    text: bool = False,
    default_factory=MISSING,
):
    """A dataclass field with its command-line facts.

    Args:
        default / default_factory: as for :func:`dataclasses.field`.
        help: the flag's help text.
        choices: allowed values (a click Choice on the command line).
        flag: the flag when it is not ``--`` + the keyword with dashes (e.g. ``--class``).
        kw: the Python keyword when it is not prefix + field name (e.g. ``photons``).
        aliases: old names, in the field's own spelling (prefix added): accepted as keywords
            and as hidden flags.
        key: the manifest key when it is not the field name.
        switch: a ``--name/--no-name`` switch instead of a one-way flag (bool fields).
        text: taken as text on the command line and converted by the owner's ``check`` (for
            values such as ``256x384`` or ``all``).
    """
    meta = {
        "help": help,
        "choices": tuple(choices) if choices is not None else None,
        "flag": flag,
        "kw": kw,
        "aliases": tuple(aliases),
        "key": key,
        "switch": switch,
        "text": text,
    }
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


@dataclass(frozen=True)
class Named:
    """One option field as the outside sees it."""

    field: dataclasses.Field
    kw: str
    flag: str
    old_kws: tuple[str, ...]
    old_flags: tuple[str, ...]

    @property
    def meta(self):
        return self.field.metadata

    @property
    def key(self) -> str:
        """The name it is stored under (manifests)."""
        return self.meta.get("key") or self.field.name

    @property
    def kind(self) -> str | None:
        """ "bool", "int", "float" or "str" for ``X`` or ``X | None`` annotations, else None."""
        parts = [p.strip() for p in str(self.field.type).split("|")]
        parts = [p for p in parts if p != "None"]
        return parts[0] if len(parts) == 1 and parts[0] in _KINDS else None

    @property
    def optional(self) -> bool:
        return "None" in str(self.field.type)


def _flag(kw: str) -> str:
    return "--" + kw.replace("_", "-")


def named_fields(cls, prefix: str = "") -> list[Named]:
    """The option fields of dataclass ``cls`` with keywords and flags under ``prefix``."""
    out = []
    for f in dataclasses.fields(cls):
        kw = f.metadata.get("kw") or prefix + f.name
        old = tuple(prefix + a for a in f.metadata.get("aliases", ()))
        out.append(Named(f, kw, f.metadata.get("flag") or _flag(kw), old, tuple(map(_flag, old))))
    return out


def keyword_map(groups: dict[str, tuple[type, str]]) -> dict[str, tuple[str, str]]:
    """Keyword (and old keyword) -> (group, field name) for groups {group: (class, prefix)}."""
    out: dict[str, tuple[str, str]] = {}
    for group, (cls, prefix) in groups.items():
        for n in named_fields(cls, prefix):
            for kw in (n.kw, *n.old_kws):
                if kw in out:
                    raise TypeError(f"option keyword {kw!r} is declared twice")
                out[kw] = (group, n.field.name)
    return out


def refuse_unknown(where: str, given, known) -> None:
    """One line, naming ``where``, for the names in ``given`` that are not in ``known``
    (listed in ``known``'s order)."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise CellsynthError(
            f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )


def take(cls, prefix: str, values: dict) -> dict:
    """Remove the keywords (and old keywords) of ``cls``'s fields from ``values``; return them
    as {field name: value}, ready for ``cls(**...)``."""
    out = {}
    for n in named_fields(cls, prefix):
        for kw in (n.kw, *n.old_kws):
            if kw in values:
                out[n.field.name] = values.pop(kw)
    return out


def _convert(value, kind: str, flag: str):
    if kind == "bool":
        return bool(value)
    if kind == "str":
        return str(value)
    if kind == "int" and isinstance(value, numbers.Integral):
        return int(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CellsynthError(f"{flag} must be a number, got {value!r}") from None
    if kind == "float":
        return number
    if not number.is_integer():
        raise CellsynthError(f"{flag} must be a whole number, got {value!r}")
    return int(number)


def normalise(obj, prefix: str = "") -> None:
    """Convert the fields of dataclass instance ``obj`` to their declared types (in place) and
    check their choices; raise CellsynthError naming the flag."""
    for n in named_fields(type(obj), prefix):
        value = getattr(obj, n.field.name)
        if value is None and n.optional:
            continue
        if n.kind is not None:
            value = _convert(value, n.kind, n.flag)
        choices = n.meta.get("choices")
        if choices is not None and value not in choices:
            raise CellsynthError(
                f"{n.flag} {value!r}: use one of {', '.join(str(c) for c in choices)}"
            )
        object.__setattr__(obj, n.field.name, value)
