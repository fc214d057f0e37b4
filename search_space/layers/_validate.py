"""Argument and input validation shared by the regularizer layers.

Every error is a `search_space.errors.FieldError` (a ValueError) built by the project's one
helper, `search_space.errors.user_error`: ``field: bad value X; allowed: Y``, so a bad plan
fails loudly at construction (or at the first forward after a scheduler step) and says what
to write instead.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch

from search_space.errors import user_error


def check_prob(name: str, value: float, *, allow_one: bool = False) -> float:
    """Return ``value`` as float if it is a probability in [0, 1) (or [0, 1] with allow_one)."""
    allowed = "a number in [0, 1]" if allow_one else "a number in [0, 1)"
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise user_error(name, value, allowed) from None
    if not (0.0 <= v <= 1.0 if allow_one else 0.0 <= v < 1.0):
        raise user_error(name, value, allowed)
    return v


def check_int(name: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` as int if it is an integer >= minimum (bools and fractions are rejected)."""
    allowed = f"an integer >= {minimum}"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool):
        raise user_error(name, value, allowed)
    try:
        v = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise user_error(name, value, allowed) from None
    if v < minimum:
        raise user_error(name, value, allowed)
    return v


def check_pair(name: str, value: int | Sequence[int], minimum: int = 1) -> tuple[int, int]:
    """Accept an int or a pair of ints (height, width), each >= minimum."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise user_error(name, value, f"an integer >= {minimum} or a pair (h, w) of them")
        return check_int(name, value[0], minimum), check_int(name, value[1], minimum)
    v = check_int(name, value, minimum)
    return v, v


def check_finite(name: str, value: object) -> float:
    """Return ``value`` as float if it is a finite real number (bools are rejected)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise user_error(name, value, "a finite number")
    return float(value)


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``."""
    if value not in choices:
        raise user_error(name, value, f"one of {list(choices)}")
    return value  # type: ignore[return-value]


def check_rank(layer: str, x: torch.Tensor, ranks: Sequence[int], layout: str) -> None:
    """Fail with the layer name, the received rank and shape, and the accepted layout."""
    if x.dim() not in ranks:
        raise user_error(
            f"{layer} input",
            allowed=f"rank {' or '.join(map(str, ranks))}, {layout}",
            detail=f"bad value rank {x.dim()} (shape {tuple(x.shape)})",
        )
