"""Click flags made from option dataclasses (see :mod:`cellsynth.options`).

``@flags(SomeOptions, prefix="spots_")`` adds one click option per field: the field's flag and
keyword, its help and default, a Choice for its choices, a flag or ``--x/--no-x`` switch for a
bool. Old spellings of a flag are accepted and hidden from ``--help``.
"""

from __future__ import annotations

import dataclasses

import click

from cellsynth.options import Named, named_fields


class AliasedOption(click.Option):
    """A click option whose names after the first are old spellings: they work, and ``--help``
    shows only the first."""

    def get_help_record(self, ctx):
        opts, self.opts = self.opts, self.opts[:1]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = opts


def _default(named: Named):
    f = named.field
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _click_type(named: Named):
    meta = named.meta
    if meta.get("choices") is not None:
        return click.Choice([str(c) for c in meta["choices"]])
    if meta.get("text"):
        return click.STRING
    return {"int": int, "float": float}.get(named.kind, click.STRING)


def click_option(named: Named, default=dataclasses.MISSING, aliases: tuple[str, ...] = ()):
    """The click option of one field (``default`` overrides the field's default; ``aliases``
    adds hidden flags)."""
    default = _default(named) if default is dataclasses.MISSING else default
    help_text = named.meta.get("help") or None
    old = tuple(dict.fromkeys(a for a in (*named.old_flags, *aliases) if a != named.flag))
    if named.kind == "bool":
        if named.meta.get("switch"):
            name = named.flag[2:]
            decls = [f"--{name}/--no-{name}", named.kw]
            return click.option(*decls, default=bool(default), help=help_text)
        return click.option(
            named.flag, *old, named.kw, is_flag=True, help=help_text, cls=AliasedOption
        )
    show = default is not None
    if named.meta.get("choices") is not None and default is not None:
        default = str(default)
    return click.option(
        named.flag,
        *old,
        named.kw,
        type=_click_type(named),
        default=default,
        show_default=show,
        help=help_text,
        cls=AliasedOption,
    )


def flags(cls, prefix: str = "", defaults: dict | None = None, unprefixed_aliases: bool = False):
    """Decorator adding the flags of dataclass ``cls`` under ``prefix``, in field order.

    Args:
        defaults: field name -> default for this command (instead of the field's).
        unprefixed_aliases: also accept each flag without the prefix (hidden), e.g. the old
            ``--count`` beside ``--spots-count``.
    """
    defaults = defaults or {}
    options = []
    for named in named_fields(cls, prefix):
        extra = ()
        if unprefixed_aliases and prefix:
            extra = ("--" + named.field.name.replace("_", "-"),)
        default = defaults.get(named.field.name, dataclasses.MISSING)
        options.append(click_option(named, default, extra))

    def decorate(func):
        for opt in reversed(options):
            func = opt(func)
        return func

    return decorate
