"""One voice for bad input: ``field: bad value X; allowed: Y``.

Every check in the project (plans, layers, configs, the search API, the CLIs) raises a
``FieldError`` (a ValueError) that also carries the field's name, so a command line can
name its own flag (``--epochs``) without parsing the message.
"""
from __future__ import annotations

from typing import Any

__all__ = ["FieldError", "short_repr"]


def short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class FieldError(ValueError):
    """``field: bad value X; allowed: Y`` (``detail`` replaces "bad value X" when given)."""

    def __init__(self, field: str, value: Any = None, allowed: str = "", *, detail: str = "") -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        head = detail or f"bad value {short_repr(value)}"
        super().__init__(f"{field}: {head}" + (f"; allowed: {allowed}" if allowed else ""))

    def renamed(self, field: str) -> "FieldError":
        """The same error under another name (e.g. a command-line flag)."""
        text = str(self)[len(self.field):]
        err = FieldError(field, self.value, self.allowed)
        err.args = (field + text,)
        return err
