"""The search vocabulary: one table of methods, their parameters and the values searched.

Kept as data so that adding a method or a value is one entry here; plans, the search space
and `apply_plan` all read this table. Change `SPACE_VERSION` whenever the table changes
(a plan records the version it was made for, and loading rejects a different one).
Appending a method leaves every existing plan and default ConvNet space unchanged (its
tokens decode the same), so "seq_pattern" was added without a version change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from search_space.errors import FieldError, UserError, user_error

SPACE_VERSION = "2"
#: Versions whose plans still load (version 1 had no per-site "ramp"; its plans mean the same).
COMPATIBLE_SPACE_VERSIONS = ("1", "2")

ParamValue = float | int | bool

DROP_PROBS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
BLOCK_SIZES = (1, 2, 3, 4, 5, 6, 7)
BOOLS = (False, True)
#: The probability schedule, searched per site (or per stage): the fraction of training over
#: which the probability ramps linearly from 0 to its value (0 = constant from the first
#: step). The DropBlock and Disout papers ramp over the whole training (1.0).
RAMPS = (0.0, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class MethodSpec:
    """One row of the table: a method name, the layer class implementing it (a name in
    `search_space.layers`), and its searched parameters (name -> choices, in token order)."""

    name: str
    layer: str | None
    params: Mapping[str, tuple[ParamValue, ...]]


_TABLE: tuple[MethodSpec, ...] = (
    MethodSpec("none", None, {}),
    MethodSpec("dropout", "Dropout", {"drop_prob": DROP_PROBS, "ramp": RAMPS}),
    MethodSpec("spatial_dropout", "SpatialDropout", {"drop_prob": DROP_PROBS, "ramp": RAMPS}),
    MethodSpec(
        "dropblock",
        "DropBlock2d",
        {"drop_prob": DROP_PROBS, "block_size": BLOCK_SIZES, "share_channels": BOOLS, "ramp": RAMPS},
    ),
    MethodSpec(
        "disout",
        "Disout",
        {
            "dist_prob": (0.0, 0.03, 0.05, 0.07, 0.09, 0.12, 0.15, 0.2, 0.3, 0.4, 0.5),
            "block_size": BLOCK_SIZES,
            "alpha": (0.5, 1.0, 2.0, 5.0, 10.0),
            "ramp": RAMPS,
        },
    ),
    # AutoDropout's 8 ConvNet tokens, in the paper's order.
    MethodSpec(
        "pattern",
        "PatternDropout",
        {
            "size": (1, 2, 3, 4),
            "stride": (2, 3, 4, 6, 8),
            "repeat": (1, 2, 3, 4),
            "rotate": (0.0, 15.0, 30.0, 45.0, 60.0, 75.0),
            "shear_x": (0.0, 0.1, 0.2, 0.3, 0.4, 0.5),
            "shear_y": (0.0, 0.1, 0.2, 0.3, 0.4, 0.5),
            "share_channels": BOOLS,
            "residual": BOOLS,
            "ramp": RAMPS,
        },
    ),
    # AutoDropout's Transformer pattern: blocks of `size` tokens every `stride` tokens, noise
    # shared over a block's tokens (share_t) and/or channels (share_c); drop_prob is the
    # expected dropped fraction (search_space.layers.sequence). size/stride share the ConvNet
    # pattern's decisions (never in one space together: they need different site shapes).
    MethodSpec(
        "seq_pattern",
        "SequenceDropout",
        {
            "drop_prob": DROP_PROBS,
            "size": (1, 2, 3, 4),
            "stride": (2, 3, 4, 6, 8),
            "share_t": BOOLS,
            "share_c": BOOLS,
            "ramp": RAMPS,
        },
    ),
)

#: method -> param -> choices (read-only view of the table).
VOCAB: Mapping[str, Mapping[str, tuple[ParamValue, ...]]] = MappingProxyType(
    {m.name: MappingProxyType(dict(m.params)) for m in _TABLE}
)
#: method -> layer class name in `search_space.layers` (None for "none").
METHOD_LAYERS: Mapping[str, str | None] = MappingProxyType({m.name: m.layer for m in _TABLE})
METHODS: tuple[str, ...] = tuple(VOCAB)
#: Methods for (N, C, H, W) sites (BN and residual-block outputs): the default ConvNet space.
CONV_METHODS: tuple[str, ...] = ("none", "dropout", "spatial_dropout", "dropblock", "disout", "pattern")
#: Methods for (N, T, C) sequence sites of Transformers: the default Transformer space.
SEQUENCE_METHODS: tuple[str, ...] = ("none", "dropout", "seq_pattern")

#: Legal range of a hand-written value (plans may hold values between the searched ones,
#: e.g. the papers' dist_prob=0.09 or alpha=5.0). Params not listed: min..max of choices.
PARAM_BOUNDS: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "drop_prob": (0.0, 0.9),
        "dist_prob": (0.0, 0.9),
        "block_size": (1, 64),
        "alpha": (0.0, 100.0),
        "size": (1, 64),
        "stride": (1, 64),
        "repeat": (1, 64),
        "rotate": (-180.0, 180.0),
        "shear_x": (-0.9, 0.9),
        "shear_y": (-0.9, 0.9),
        "ramp": (0.0, 1.0),
    }
)  # |shear_x*shear_y| < 1: invertible

#: Parameters that configure `apply_plan`, not the layer's constructor.
APPLY_ONLY_PARAMS: frozenset[str] = frozenset({"residual", "ramp"})
#: Parameters a hand-written plan may leave out: "ramp" then comes from plan.ramp_fraction.
OPTIONAL_PARAMS: frozenset[str] = frozenset({"ramp"})

#: Short names for `Plan.summary()`.
PARAM_SHORT: Mapping[str, str] = MappingProxyType(
    {
        "drop_prob": "p",
        "dist_prob": "p",
        "block_size": "b",
        "alpha": "a",
        "size": "s",
        "stride": "st",
        "repeat": "r",
        "rotate": "rot",
        "shear_x": "sx",
        "shear_y": "sy",
        "share_channels": "sc",
        "residual": "res",
        "share_t": "sht",
        "share_c": "shc",
        "ramp": "ramp",
    }
)


def param_kind(choices: tuple[ParamValue, ...]) -> type:
    """bool, int or float: the type every value of this parameter must have."""
    if all(isinstance(c, bool) for c in choices):
        return bool
    if all(isinstance(c, int) and not isinstance(c, bool) for c in choices):
        return int
    return float


def param_bounds(param: str, choices: tuple[ParamValue, ...]) -> tuple[float, float]:
    return PARAM_BOUNDS.get(param, (min(choices), max(choices)))


def check_value(
    field: str, param: str, choices: tuple[ParamValue, ...], value: Any, error: type[UserError] = FieldError
) -> ParamValue:
    """Validate one parameter value and return it in canonical type (int -> float for floats)."""
    kind = param_kind(choices)
    if kind is bool:
        if not isinstance(value, bool):
            raise user_error(field, value, "true or false", cls=error)
        return value
    low, high = param_bounds(param, choices)
    ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int and not (isinstance(value, int) and not isinstance(value, bool)):
        raise user_error(field, value, f"an integer in [{low}, {high}]", cls=error)
    if not ok_type or not (math.isfinite(value) and low <= value <= high):
        raise user_error(field, value, f"a number in [{low}, {high}] (searched values: {list(choices)})", cls=error)
    return int(value) if kind is int else float(value)


def _check_table() -> None:
    """Parameters shared by name between methods share one decision, so their choices must agree."""
    seen: dict[str, tuple[ParamValue, ...]] = {}
    for method, params in VOCAB.items():
        for name, choices in params.items():
            if name in seen and seen[name] != choices:
                raise AssertionError(
                    f"param {name!r} of {method!r} has choices differing from another method's; rename it"
                )
            seen[name] = choices
            if len(set(choices)) != len(choices) or not choices:
                raise AssertionError(f"param {name!r} of {method!r}: choices must be unique, non-empty")


_check_table()
