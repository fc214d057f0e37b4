"""One voice for every error a user can cause: ``field: bad value X; allowed: Y``.

Every such error is a `UserError` (the classes: `FieldError` for a named field, and
``PlanError``, ``RunError``, ``UsageError``, ``DataError``, all ValueErrors too, and
`UserTypeError` for an argument of the wrong type), built by one
helper, `user_error`, whose text is ``field: bad value X; allowed: Y`` or, where no field
applies, a plain sentence, followed by what to do next where that is known. The commands
print it as one line, ``PROG: error: TEXT``, and exit 2; the Python API raises it. The error
carries the field's name, so a command line can name its own flag (``--epochs``) without
parsing the message.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

__all__ = [
    "FieldError",
    "OneLineParser",
    "SEED_MAX",
    "UserError",
    "UserTypeError",
    "check_number",
    "choice_of",
    "say",
    "short_repr",
    "typed",
    "user_error",
]

SEED_MAX = 2**31 - 1  # torch, numpy and Optuna all take seeds up to here


def short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def say(field: str, value: Any = None, allowed: str = "", *, detail: str = "", hint: str = "") -> str:
    """The one wording: ``field: bad value X; allowed: Y`` (``detail`` replaces "bad value X";
    without a field, ``detail`` is the whole sentence), then ``; hint`` (what to do next)."""
    head = detail or f"bad value {short_repr(value)}"
    text = f"{field}: {head}" if field else head
    return text + (f"; allowed: {allowed}" if allowed else "") + (f"; {hint}" if hint else "")


class UserError(Exception):
    """Base of every error a user can cause (an argument, a plan, a run folder, a data set),
    as opposed to a bug: one line for the user, worded by `say`. Catch this to report any of
    them; every subclass in the project is also a ValueError, except `UserTypeError` (a
    TypeError: an argument of the wrong type)."""

    field: str = ""
    value: Any = None
    allowed: str = ""
    detail: str = ""
    hint: str = ""


class FieldError(UserError, ValueError):
    """``field: bad value X; allowed: Y`` (``detail`` replaces "bad value X" when given;
    ``hint`` says what to do next)."""

    def __init__(self, field: str, value: Any = None, allowed: str = "", *, detail: str = "", hint: str = "") -> None:
        self.field, self.value, self.allowed, self.detail, self.hint = field, value, allowed, detail, hint
        super().__init__(say(field, value, allowed, detail=detail, hint=hint))

    def renamed(self, field: str) -> "FieldError":
        """The same error under another name (e.g. a command-line flag)."""
        return FieldError(field, self.value, self.allowed, detail=self.detail, hint=self.hint)


class UserTypeError(UserError, TypeError):
    """A Python API argument of the wrong type (``model_fn: expected a function ...``): a
    TypeError, as Python callers expect, worded like every other user error."""


def user_error(
    field: str = "",
    value: Any = None,
    allowed: str = "",
    *,
    detail: str = "",
    hint: str = "",
    cls: type[UserError] = FieldError,
) -> UserError:
    """The one way to build (then ``raise``) an error a user caused, worded by `say`, as
    ``cls`` (default `FieldError`; e.g. ``PlanError`` for a plan). With no ``field``,
    ``detail`` is a plain sentence, e.g. ``user_error(detail="run directory not found: x",
    hint="...", cls=RunError)``."""
    if not field and not detail:
        raise TypeError("user_error needs a field or a detail sentence")
    if issubclass(cls, FieldError):
        return cls(field, value, allowed, detail=detail, hint=hint)
    err = cls(say(field, value, allowed, detail=detail, hint=hint))
    err.field, err.value, err.allowed, err.detail, err.hint = field, value, allowed, detail, hint
    return err


class OneLineParser(argparse.ArgumentParser):
    """argparse with the project's voice: a bad flag is one line, ``PROG: error: --flag: bad
    value X; allowed: Y``, exit status 2 (not the whole usage text)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.flags: set[str] = set()  # every option string added (a setting's flag, by name)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> Any:
        self.flags.update(a for a in args if isinstance(a, str) and a.startswith("-"))
        return super().add_argument(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        message = message[len("argument ") :] if message.startswith("argument ") else message
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def typed(kind: type, allowed: str | None = None) -> Callable[[str], Any]:
    """An argparse ``type`` that says what was wrong in the project's voice."""
    words = {int: "an integer", float: "a number", str: "text"}
    allowed = allowed or words.get(kind, kind.__name__)

    def convert(text: str) -> Any:
        try:
            return kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"bad value {text!r}; allowed: {allowed}") from None

    convert.__name__ = kind.__name__
    return convert


def choice_of(values: Sequence[str]) -> Callable[[str], str]:
    """An argparse ``type`` accepting one of ``values`` (instead of ``choices=``, whose error
    text is argparse's own)."""

    def convert(text: str) -> str:
        if text not in values:
            raise argparse.ArgumentTypeError(f"bad value {text!r}; allowed: {', '.join(values)}")
        return text

    return convert


def check_number(
    name: str,
    value: Any,
    low: float,
    high: float | None,
    *,
    integer: bool = False,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """FieldError unless ``value`` is a finite number (an int if ``integer``) in the range."""
    kind = "an integer" if integer else "a number"
    lo, hi = "(" if low_open else "[", ")" if high_open or high is None else "]"
    fmt = (lambda v: str(int(v))) if integer else (lambda v: f"{v:g}")
    allowed = f"{kind} in {lo}{fmt(low)}, {'inf' if high is None else fmt(high)}{hi}"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value):
        raise FieldError(name, value, allowed)
    if (
        value < low
        or (low_open and value == low)
        or (high is not None and (value > high or (high_open and value == high)))
    ):
        raise FieldError(name, value, allowed)
