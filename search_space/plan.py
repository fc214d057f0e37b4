"""Regularization plans: which method, with which parameters, at each site of a network.

A plan is what a search exports and a user reuses, so it is a versioned, human-readable JSON
document, and every way it can be wrong is reported with the field, the bad value and what
is allowed (`PlanError`) instead of failing later inside training.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from search_space.errors import UserError, short_repr, user_error
from search_space.files import atomic_write_text
from search_space.layouts import LAYOUTS, get_layout
from search_space.vocab import (
    COMPATIBLE_SPACE_VERSIONS,
    METHODS,
    OPTIONAL_PARAMS,
    PARAM_SHORT,
    SPACE_VERSION,
    VOCAB,
    ParamValue,
    check_value,
)

PLAN_FORMAT_VERSION = 1
#: The method of a site whose rate one training learns (Concrete Dropout, `search_space.learned`):
#: not a searched method (no vocabulary entry, no layer of its own); its one parameter says
#: whether the rate is per channel (a map site, whose derived plan uses spatial dropout) or
#: elementwise (dropout).
LEARNED_METHOD = "learned"
LEARNED_PARAMS = ("per_channel",)

_TOP_KEYS = ("format_version", "layouts", "metadata", "model", "ramp_fraction", "sites", "space_version")


class PlanError(UserError, ValueError):
    """An invalid plan; the message names the field, the bad value and the allowed values."""


@dataclass
class SiteSpec:
    """The regularizer of one site: a method name and its parameters (layer argument names)."""

    method: str
    params: dict[str, ParamValue] = field(default_factory=dict)


@dataclass
class Plan:
    """Site path -> SiteSpec, plus the metadata needed to reuse the plan later.

    ramp_fraction: fraction of the total training steps over which every probability ramps
    linearly from 0 to its target (0 = constant from the first step).
    layouts: site -> layout name (`search_space.layouts`: "NCHW", "NHWC", "NCL", "NTC", ...)
    where the plan knows it (a search's plans do): `apply_plan` tells each regularizer which
    axes hold the channels and the map. A site without one keeps the layer's default
    (channels first; batch-first tokens, or T,N,C inside a ``batch_first=False`` layer).
    Constructing a Plan validates it and canonicalises parameter types.
    """

    sites: dict[str, SiteSpec]
    model: str = ""
    space_version: str = SPACE_VERSION
    ramp_fraction: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)
    layouts: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _validate(self)

    # ----------------------------------------------------------------- construction
    @classmethod
    def none(cls, sites: Iterable[str], **kwargs: Any) -> "Plan":
        """A plan with every site set to "none" (the unregularized baseline)."""
        return cls({s: SiteSpec("none", {}) for s in sites}, **kwargs)

    @classmethod
    def from_dict(cls, d: Any) -> "Plan":
        if not isinstance(d, dict):
            raise _bad("plan", d, f"a JSON object with keys {list(_TOP_KEYS)}")
        unknown = sorted(set(d) - set(_TOP_KEYS))
        if unknown:
            raise _bad(f"plan.{unknown[0]}", allowed=f"{list(_TOP_KEYS)}", detail="unknown field")
        for key in ("format_version", "sites"):
            if key not in d:
                raise _bad(f"plan.{key}", allowed=f"{list(_TOP_KEYS)}", detail="missing")
        version = d["format_version"]
        if version != PLAN_FORMAT_VERSION or isinstance(version, bool):
            raise _bad("plan.format_version", version, str(PLAN_FORMAT_VERSION))
        sites = d["sites"]
        if not isinstance(sites, dict):
            raise _bad("plan.sites", sites, 'an object mapping site paths to {"method": ..., "params": {...}}')
        specs = {}
        for site, spec in sites.items():
            if not isinstance(spec, dict) or set(spec) - {"method", "params"} or "method" not in spec:
                raise _bad(f"sites[{site!r}]", spec, 'an object with keys "method" and "params"')
            params = spec.get("params", {})
            if not isinstance(params, dict):
                raise _bad(f"sites[{site!r}].params", params, "an object of parameter values")
            specs[site] = SiteSpec(spec["method"], dict(params))
        return cls(
            specs,
            model=d.get("model", ""),
            space_version=d.get("space_version", SPACE_VERSION),
            ramp_fraction=d.get("ramp_fraction", 0.0),
            metadata=d.get("metadata", {}),
            layouts=d.get("layouts", {}),
        )

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise _bad(
                "plan JSON",
                allowed="a JSON object as written by Plan.to_json()",
                detail=f"malformed ({e.msg} at line {e.lineno} column {e.colno})",
            ) from None
        except RecursionError:  # a hostile or broken file: nested past Python's recursion limit
            raise _bad(
                "plan JSON", allowed="a JSON object as written by Plan.to_json()", detail="nested too deeply"
            ) from None
        try:
            return cls.from_dict(d)
        except RecursionError:
            raise _bad(
                "plan JSON", allowed="a JSON object as written by Plan.to_json()", detail="nested too deeply"
            ) from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Plan":
        text = Path(path).read_text(encoding="utf-8")  # OSError as it is: the callers word it
        try:
            return cls.from_json(text)
        except PlanError as e:
            raise _bad(detail=f"{path}: {e}") from None

    # ----------------------------------------------------------------- output
    def to_dict(self) -> dict[str, Any]:
        d = {
            "format_version": PLAN_FORMAT_VERSION,
            "space_version": self.space_version,
            "model": self.model,
            "ramp_fraction": self.ramp_fraction,
            "metadata": dict(self.metadata),
            "sites": {s: {"method": sp.method, "params": dict(sp.params)} for s, sp in self.sites.items()},
        }
        if self.layouts:  # plans without layouts read and write as before
            d["layouts"] = dict(self.layouts)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2, allow_nan=False) + "\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically and durably (`atomic_write_text` with fsync): a reader never
        sees half a plan even if the writer dies."""
        return atomic_write_text(path, self.to_json(), fsync=True)

    def methods(self) -> dict[str, str]:
        return {s: sp.method for s, sp in self.sites.items()}

    def summary(self) -> str:
        """One line, e.g. "layer1.0.bn1=dropblock(p=.1,b=5,sc=0) layer2.0=dropout(p=.2)";
        sites with method "none" are left out ("none" if all are)."""
        parts = []
        for site, spec in self.sites.items():
            if spec.method == "none":
                continue
            args = ",".join(
                f"{PARAM_SHORT.get(k, k)}={_fmt(v)}" for k, v in spec.params.items() if not (k == "ramp" and v == 0)
            )  # constant: the usual case, unsaid
            parts.append(f"{site}={spec.method}({args})")
        return " ".join(parts) if parts else "none"


# --------------------------------------------------------------------- validation
def _validate(plan: Plan) -> None:
    if plan.space_version not in COMPATIBLE_SPACE_VERSIONS:
        raise _bad(
            "plan.space_version",
            plan.space_version,
            f"{', '.join(map(repr, COMPATIBLE_SPACE_VERSIONS))} (this code's search-space versions)",
        )
    plan.space_version = SPACE_VERSION  # older plans mean the same today
    if not isinstance(plan.model, str):
        raise _bad("plan.model", plan.model, "a string")
    rf = plan.ramp_fraction
    if isinstance(rf, bool) or not isinstance(rf, (int, float)) or not 0.0 <= rf <= 1.0:
        raise _bad("plan.ramp_fraction", rf, "a number in [0, 1]")
    plan.ramp_fraction = float(rf)
    if not isinstance(plan.metadata, dict):
        raise _bad("plan.metadata", plan.metadata, "an object")
    try:
        json.dumps(plan.metadata, allow_nan=False)
    except (TypeError, ValueError):
        raise _bad("plan.metadata", plan.metadata, "JSON values only (no NaN/inf, no objects)") from None
    if not isinstance(plan.sites, dict):
        raise _bad("plan.sites", plan.sites, "a dict of site path -> SiteSpec")
    sites = {}
    for site, spec in plan.sites.items():
        if not isinstance(site, str) or not site or any(not p for p in site.split(".")):
            raise _bad(
                "plan.sites", allowed="a dotted module path such as 'layer1.0.bn1'", detail=f"bad site path {site!r}"
            )
        if not isinstance(spec, SiteSpec):
            raise _bad(f"sites[{site!r}]", spec, "a SiteSpec")
        # a new SiteSpec: the caller's (maybe shared by several plans) stays as it was
        sites[site] = SiteSpec(spec.method, _validate_params(site, spec, plan.ramp_fraction))
    plan.sites = sites
    plan.layouts = _validate_layouts(plan.layouts, sites)


def _validate_layouts(layouts: Any, sites: dict[str, SiteSpec]) -> dict[str, str]:
    if not isinstance(layouts, dict):
        raise _bad("plan.layouts", layouts, "an object mapping site paths to layout names")
    out = {}
    for site, name in layouts.items():
        if site not in sites:
            raise _bad("plan.layouts", site, "sites of the plan", detail=f"bad site {short_repr(site, 60)} (no spec)")
        if not isinstance(name, str):
            raise _bad(f"plan.layouts[{site!r}]", name, ", ".join(LAYOUTS))
        out[site] = get_layout(name, f"plan.layouts[{site!r}]", PlanError).name
    return out


def _validate_params(site: str, spec: SiteSpec, ramp_fraction: float) -> dict[str, ParamValue]:
    if spec.method == LEARNED_METHOD:
        return _validate_learned(site, spec)
    if spec.method not in VOCAB:
        raise _bad(f"sites[{site!r}].method", spec.method, str([*METHODS, LEARNED_METHOD]))
    table = VOCAB[spec.method]
    if not isinstance(spec.params, dict):
        raise _bad(f"sites[{site!r}].params", spec.params, "a dict of parameter values")
    unknown = sorted(set(spec.params) - set(table), key=str)
    if unknown:
        raise _bad(
            f"sites[{site!r}].params.{unknown[0]}",
            allowed=str(list(table)),
            detail=f"unknown parameter of method {spec.method!r}",
        )
    missing = [p for p in table if p not in spec.params and p not in OPTIONAL_PARAMS]
    if missing:
        raise _bad(
            f"sites[{site!r}].params.{missing[0]}",
            allowed=f"{list(table[missing[0]])} (required: {list(table)})",
            detail=f"missing for method {spec.method!r}",
        )
    # A site without its own ramp follows the plan-wide ramp_fraction (plans from before the
    # schedule was searched): canonical form = every parameter present, in table order, so
    # equal plans compare and print identically.
    params = dict(spec.params)
    if "ramp" in table and "ramp" not in params:
        params["ramp"] = ramp_fraction
    return {
        p: check_value(f"sites[{site!r}].params.{p}", p, choices, params[p], PlanError) for p, choices in table.items()
    }


def _validate_learned(site: str, spec: SiteSpec) -> dict[str, ParamValue]:
    """``learned``'s one parameter, ``per_channel`` (true or false; default false)."""
    if not isinstance(spec.params, dict):
        raise _bad(f"sites[{site!r}].params", spec.params, "a dict of parameter values")
    unknown = sorted(set(spec.params) - set(LEARNED_PARAMS), key=str)
    if unknown:
        raise _bad(f"sites[{site!r}].params.{unknown[0]}", allowed=str(list(LEARNED_PARAMS)),
                   detail=f"unknown parameter of method {LEARNED_METHOD!r}")  # fmt: skip
    per_channel = spec.params.get("per_channel", False)
    if not isinstance(per_channel, bool):
        raise _bad(f"sites[{site!r}].params.per_channel", per_channel, "true or false")
    return {"per_channel": per_channel}


def _bad(field: str = "", value: Any = None, allowed: str = "", *, detail: str = "", hint: str = "") -> UserError:
    """A `PlanError` in the project's voice (`search_space.errors.user_error`); long values
    are cut to 60 characters, as a plan can be large."""
    detail = detail or (f"bad value {short_repr(value, 60)}" if field else "")
    return user_error(field, value, allowed, detail=detail, hint=hint, cls=PlanError)


def _fmt(v: ParamValue) -> str:
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float):
        text = f"{v:g}"
        return text[1:] if text.startswith("0.") else text
    return str(v)


#: The parameter whose 0 makes a method the identity (nothing dropped or distorted).
_RATE_PARAM = {"dropout": "drop_prob", "spatial_dropout": "drop_prob", "dropblock": "drop_prob",
               "seq_pattern": "drop_prob", "disout": "dist_prob"}  # fmt: skip


def plan_key(plan: Plan) -> str:
    """What makes two plans the same training: every site's method and parameters (the
    canonical form a Plan keeps, ramps included), not its metadata or name. A site whose
    rate is 0 does nothing, whatever its other parameters: it counts as ``none``."""

    def effective(spec: SiteSpec) -> list[Any]:
        rate = _RATE_PARAM.get(spec.method)
        if rate is not None and spec.params.get(rate) == 0:
            return ["none", {}]
        return [spec.method, spec.params]

    return json.dumps({s: effective(spec) for s, spec in plan.sites.items()}, sort_keys=True)
