"""How a config field becomes a setting: ``setting(...)`` (a dataclass field whose metadata
carries its help, whether the command shows it, the command's default and the flag's
converter), the converters of the command's text flags, and ``add_flags`` (the flags of a
config class, generated from its fields). ``controller.config`` holds the settings themselves.
Only the standard library is imported."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import field
from typing import Any

__all__ = ["setting", "add_flags", "command_default", "flag_of", "names", "auto_or_int", "layouts_flag"]

_SAME = object()  # a setting whose command-line default is its Python default


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    flag: bool = True,
    command: Any = _SAME,
    parse: Any = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A config field and how the command shows it: ``help`` (its --help text), ``flag``
    (False: Python and search_config.json only), ``command`` (the command's default where it
    differs from the API's: a real search by default) and ``parse`` (the flag's converter;
    default from the field's type)."""
    meta = {"help": help, "flag": flag, "command": command, "parse": parse}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- converters
def names(text: str) -> tuple[str, ...]:
    """--baselines none,dropout -> ("none", "dropout") ("" -> no baselines)."""
    return tuple(b.strip() for b in str(text).split(",") if b.strip())


def auto_or_int(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad value {text!r}; allowed: auto or an integer >= 0") from None


def layouts_flag(text: str) -> dict[str, str]:
    """--layouts 'stages.*=NHWC,head.0=NC' -> {"stages.*": "NHWC", "head.0": "NC"} (the names
    are checked against the sites and their shapes by the search space)."""
    out: dict[str, str] = {}
    for pair in (p.strip() for p in str(text).split(",") if p.strip()):
        site, sep, layout = pair.partition("=")
        if not sep or not site.strip() or not layout.strip():
            raise argparse.ArgumentTypeError(f"bad value {pair!r}; allowed: site=LAYOUT pairs, e.g. stages.*=NHWC")
        out[site.strip()] = layout.strip()
    return out


# ----------------------------------------------------------------------------- helpers
def flag_of(name: str) -> str:
    """A setting's command-line flag: ``num_samples`` -> ``--num-samples``."""
    return "--" + name.replace("_", "-")


def command_default(f: dataclasses.Field) -> Any:
    """The default a field has on the command line."""
    if f.metadata.get("command", _SAME) is not _SAME:
        return f.metadata["command"]
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return f.default


def add_flags(parser: Any, cls: type) -> list[str]:
    """One flag per field of ``cls`` whose metadata says so, typed, with its help and the
    command's default; returns the fields that got one (their ``dest`` is the field name)."""
    hints = typing.get_type_hints(cls)
    added = []
    for f in dataclasses.fields(cls):
        if not f.metadata.get("flag", False):
            continue
        default = command_default(f)
        words = f.metadata.get("help", "")
        shown = ",".join(default) if isinstance(default, tuple) else default
        words += "" if "default" in words else f" (default {shown})"  # else the help says it in words
        if hints[f.name] is bool:  # --name / --no-name
            parser.add_argument(
                flag_of(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=words
            )
        else:
            parse = f.metadata.get("parse") or _converter(hints[f.name])
            parser.add_argument(
                flag_of(f.name), dest=f.name, type=parse if parse is not str else None, default=default,
                help=words, metavar=f.name.upper(),
            )  # fmt: skip
        added.append(f.name)
    return added


def _converter(tp: Any) -> Any:
    from search_space.errors import typed

    kinds = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    kind = kinds[0] if len(kinds) == 1 else str
    return str if kind in (str, Any) else typed(kind)
