"""Argument and input validation shared by the regularizer layers.

Every check raises ``ValueError`` naming the parameter, the bad value and what is allowed,
so a bad plan fails loudly at construction (or at the first forward after a scheduler step).
"""
from __future__ import annotations

import operator
from collections.abc import Sequence

import torch


def check_prob(name: str, value: float, *, allow_one: bool = False) -> float:
    """Return ``value`` as float if it is a probability in [0, 1) (or [0, 1] with allow_one)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1{']' if allow_one else ')'}, got {value!r}") from None
    ok = 0.0 <= v <= 1.0 if allow_one else 0.0 <= v < 1.0
    if not ok:
        allowed = "[0, 1]" if allow_one else "[0, 1)"
        raise ValueError(f"{name} must be in {allowed}, got {value!r}")
    return v


def check_int(name: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` as int if it is an integer >= minimum (bools and fractions are rejected)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    try:
        v = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return v


def check_pair(name: str, value: int | Sequence[int], minimum: int = 1) -> tuple[int, int]:
    """Accept an int or a pair of ints (height, width), each >= minimum."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair (h, w), got {value!r}")
        return check_int(name, value[0], minimum), check_int(name, value[1], minimum)
    v = check_int(name, value, minimum)
    return v, v


def check_rank(layer: str, x: torch.Tensor, ranks: Sequence[int], layout: str) -> None:
    """Fail with the layer name, the received rank and the accepted layout."""
    if x.dim() not in ranks:
        raise ValueError(
            f"{layer} expects input rank {' or '.join(map(str, ranks))} ({layout}), "
            f"got rank {x.dim()} with shape {tuple(x.shape)}"
        )
