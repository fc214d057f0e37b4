"""The search space: the ordered list of discrete decisions the controller makes for a model.

Per group of sites (one site, or a whole stage with ``share="stage"``) the decisions are:
the method, then one decision per parameter name used by any allowed method (in table
order; methods using the same parameter name share that decision, e.g. ``drop_prob``).
Decisions that do not belong to the chosen method are *inactive*: `decode` ignores them,
`encode` writes 0 there, and `active_mask` marks them False so the controller leaves them
out of its log-probability and entropy. The controller only ever sees token indices.

Which sites a model's space covers and how they group (`SearchSpace.for_model`, `stage_of`,
`block_of`) is `search_space.grouping`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch.nn as nn

from search_space.errors import user_error
from search_space.grouping import block_of, model_grouping, stage_of
from search_space.layouts import get_layout
from search_space.plan import Plan, PlanError, SiteSpec
from search_space.vocab import CONV_METHODS, METHODS, SPACE_VERSION, VOCAB, ParamValue

__all__ = ["SPACE_VERSION", "VOCAB", "METHODS", "Decision", "SearchSpace", "stage_of", "block_of"]

METHOD_PARAM = "method"


@dataclass(frozen=True)
class Decision:
    """One token position. `site` is the site path, or the stage key "layer2.*" when shared."""

    site: str
    param: str
    choices: tuple


class SearchSpace:
    """Decisions for a fixed list of site groups; see the module docstring."""

    def __init__(
        self,
        groups: Sequence[tuple[str, Sequence[str]]],
        methods: Sequence[str] | None = None,
        model: str = "",
        share: str | None = None,
        ramp_fraction: float = 0.0,
        group_methods: Mapping[str, Sequence[str]] | None = None,
        layouts: Mapping[str, str] | None = None,
    ) -> None:
        methods = tuple(CONV_METHODS if methods is None else methods)
        for m in methods:
            if m not in VOCAB:
                raise user_error("methods", m, f"{list(METHODS)}", cls=PlanError)
        if not methods or len(set(methods)) != len(methods):
            raise user_error(
                "methods",
                detail=f"bad value {list(methods)}",
                allowed=f"a non-empty list of distinct names from {list(METHODS)}",
                cls=PlanError,
            )
        self.groups: list[tuple[str, tuple[str, ...]]] = [(k, tuple(s)) for k, s in groups]
        self.sites: list[str] = [s for _, members in self.groups for s in members]
        if not self.sites or len(set(self.sites)) != len(self.sites):
            raise user_error(
                "sites",
                detail=f"bad value {self.sites[:8]}",
                allowed="a non-empty list of distinct module paths "
                "(a model without BatchNorm2d, residual blocks or Transformer layers: pass example_input, "
                "or name module paths in sites)",
                cls=PlanError,
            )
        self.methods = methods
        self.model = model
        self.share = share
        self.ramp_fraction = float(ramp_fraction)
        # Per group: the methods that fit its sites' shapes (default: all of `methods`).
        self.group_methods: dict[str, tuple[str, ...]] = {}
        for key, _ in self.groups:
            allowed = tuple(group_methods[key]) if group_methods and key in group_methods else methods
            if not allowed or any(m not in methods for m in allowed) or len(set(allowed)) != len(allowed):
                raise user_error(
                    f"group_methods[{key!r}]",
                    detail=f"bad value {list(allowed)}",
                    allowed=f"a subset of {list(methods)}",
                    cls=PlanError,
                )
            self.group_methods[key] = allowed
        # Parameter decisions: union over allowed methods, in table order (per group too).
        self.param_names: list[str] = _params_of(methods)
        self._choices = {p: c for m in methods for p, c in VOCAB[m].items()}
        self._group_params: list[list[str]] = [_params_of(self.group_methods[k]) for k, _ in self.groups]
        self.decisions: list[Decision] = []
        self._offsets: list[int] = []
        for (key, _), params in zip(self.groups, self._group_params):
            self._offsets.append(len(self.decisions))
            self.decisions.append(Decision(key, METHOD_PARAM, self.group_methods[key]))
            self.decisions += [Decision(key, p, self._choices[p]) for p in params]
        self._offsets.append(len(self.decisions))
        self._group_of = {s: k for k, members in self.groups for s in members}
        # Site -> layout name (`search_space.layouts`), carried into every plan (`with_layouts`).
        self.layouts: dict[str, str] = {}
        for site, name in (layouts or {}).items():
            if site not in self._group_of:
                raise user_error("layouts", site, "sites of the space", cls=PlanError)
            self.layouts[site] = get_layout(name, f"layouts[{site!r}]", PlanError).name

    def with_layouts(self, plan: Plan) -> Plan:
        """``plan`` with the space's layouts for its sites where it states none (the layouts
        a shape-aware space found, so `apply_plan` puts each regularizer on the right axes)."""
        missing = {s: lay for s, lay in self.layouts.items() if s in plan.sites and s not in plan.layouts}
        if missing:
            plan.layouts = {**plan.layouts, **missing}
        return plan

    def methods_of(self, site: str) -> tuple[str, ...]:
        """The methods searched at ``site`` (those of its group)."""
        return self.group_methods[self._group_of[site]]

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        sites: Sequence[str] | None = None,
        share: str | Callable[[str], str] | None = None,
        methods: Sequence[str] | None = None,
        model_name: str = "",
        ramp_fraction: float = 0.0,
        example_input: Any = None,
        layouts: Mapping[str, str] | None = None,
    ) -> "SearchSpace":
        """Space over `sites` (default `find_sites(model)`; for a model with Transformer
        layers, its Transformer sites only).

        share: None (one decision set per site), "stage" (one per `stage_of(site)`; for
        Transformer sites one per block, `block_of`), or a function site -> group key.
        methods: default CONV_METHODS, or SEQUENCE_METHODS (none, dropout, seq_pattern) when
        every site is a Transformer site. model_name and ramp_fraction are copied into
        decoded plans.

        With ``example_input`` (one input batch: a tensor, a tuple of positional arguments or a
        dict of keyword arguments) the space comes from one forward pass (`search_space.probe`):
        default sites are the ones a user expects (`probe.default_sites`: maps, hidden layers,
        embeddings, recurrent outputs; never the logits), any module path may be named, each
        site's layout comes from evidence and travels in the space's plans (`layouts`), each
        group is offered only the methods that fit its sites' layouts and shapes (default
        methods: every method fitting some site), and "stage" groups sites by resolution (one
        group per Transformer block). FieldError when no site is left or a named method fits
        no site.

        ``layouts`` (site path or glob pattern -> layout name, e.g. ``{"stages.*": "NHWC"}``)
        states layouts the evidence does not show; with an example input they are checked
        against the output shapes.
        """
        g = model_grouping(model, sites, share, methods, example_input, layouts)
        return cls(g.groups, g.methods, model_name, g.share, ramp_fraction, g.group_methods, g.layouts)

    def uniform_plan(self, method: str, **params: ParamValue) -> Plan:
        """The same SiteSpec at every site of the space (e.g. the baselines ``none`` and
        ``dropout`` 0.1 everywhere: ``space.uniform_plan("dropout", drop_prob=0.1)``)."""
        return Plan(
            {s: SiteSpec(method, dict(params)) for s in self.sites},
            model=self.model,
            ramp_fraction=self.ramp_fraction,
            layouts=dict(self.layouts),
        )

    def baseline_plans(self) -> dict[str, Plan]:
        """Hand-set plans a search is compared with: "none" everywhere and "dropout" 0.1
        everywhere (the Transformer baselines; for ConvNets, see results.baselines)."""
        return {"none": self.uniform_plan("none"), "dropout": self.uniform_plan("dropout", drop_prob=0.1)}

    def to_dict(self) -> dict[str, Any]:
        d = {
            "space_version": SPACE_VERSION,
            "model": self.model,
            "share": self.share,
            "methods": list(self.methods),
            "ramp_fraction": self.ramp_fraction,
            "groups": [[k, list(members)] for k, members in self.groups],
        }
        narrowed = {k: list(v) for k, v in self.group_methods.items() if v != self.methods}
        if narrowed:  # only shape-aware spaces have it, so older spaces read and write the same
            d["group_methods"] = narrowed
        if self.layouts:  # likewise
            d["layouts"] = dict(self.layouts)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SearchSpace":
        """Rebuild without the model (groups are stored explicitly)."""
        if not isinstance(d, dict) or "groups" not in d:
            raise user_error(
                "space", detail=f"bad value {str(d)[:60]}", allowed="SearchSpace.to_dict() output", cls=PlanError
            )
        if d.get("space_version") != SPACE_VERSION:
            raise user_error("space.space_version", d.get("space_version"), f"{SPACE_VERSION!r}", cls=PlanError)
        return cls(
            [(k, members) for k, members in d["groups"]],
            d.get("methods"),
            d.get("model", ""),
            d.get("share"),
            d.get("ramp_fraction", 0.0),
            d.get("group_methods"),
            d.get("layouts"),
        )

    # ------------------------------------------------------------------ tokens
    @property
    def vocab_sizes(self) -> list[int]:
        return [len(d.choices) for d in self.decisions]

    def __len__(self) -> int:
        return len(self.decisions)

    def _check_tokens(self, tokens: Sequence[int]) -> list[int]:
        tokens = [int(t) for t in tokens]
        if len(tokens) != len(self.decisions):
            raise user_error("tokens", detail=f"bad length {len(tokens)}", allowed=f"{len(self.decisions)}")
        for i, (t, d) in enumerate(zip(tokens, self.decisions)):
            if not 0 <= t < len(d.choices):
                raise user_error(
                    f"tokens[{i}] ({d.site} {d.param})", detail=f"bad value {t}", allowed=f"0..{len(d.choices) - 1}"
                )
        return tokens

    def _group_slices(self, tokens: list[int]):
        for g, (key, members) in enumerate(self.groups):
            yield key, members, tokens[self._offsets[g] : self._offsets[g + 1]]

    def decode(self, tokens: Sequence[int]) -> Plan:
        tokens = self._check_tokens(tokens)
        sites: dict[str, SiteSpec] = {}
        for g, (key, members, tok) in enumerate(self._group_slices(tokens)):
            method = self.group_methods[key][tok[0]]
            names = self._group_params[g]
            params = {p: self._choices[p][tok[1 + names.index(p)]] for p in VOCAB[method]}
            for s in members:
                sites[s] = SiteSpec(method, dict(params))
        return Plan(sites, model=self.model, ramp_fraction=self.ramp_fraction, layouts=dict(self.layouts))

    def encode(self, plan: Plan) -> list[int]:
        """Tokens of `plan` (inactive decisions -> 0). PlanError if the plan's sites differ
        from the space's, a method is not searched, a value is not in the vocabulary, or
        sites sharing one decision set disagree."""
        missing = [s for s in self.sites if s not in plan.sites]
        extra = [s for s in plan.sites if s not in set(self.sites)]
        if missing or extra:
            bad = missing[0] if missing else extra[0]
            raise user_error(
                "plan.sites",
                detail=f"site {bad!r} is {'missing' if missing else 'unknown'}",
                allowed=f"exactly the space's sites {self.sites[:6]}{'...' if len(self.sites) > 6 else ''}",
                cls=PlanError,
            )
        tokens: list[int] = []
        for g, (key, members, _) in enumerate(self._group_slices([0] * len(self.decisions))):
            spec = plan.sites[members[0]]
            names = self._group_params[g]
            for s in members[1:]:
                if plan.sites[s] != spec:
                    raise user_error(
                        f"sites[{s!r}]",
                        detail=f"bad value {plan.sites[s]}",
                        allowed=f"the same spec as {members[0]!r} (both share decisions {key!r})",
                        cls=PlanError,
                    )
            allowed = self.group_methods[key]
            if spec.method not in allowed:
                raise user_error(
                    f"sites[{members[0]!r}].method",
                    detail=f"bad value {spec.method!r}; allowed in this space: {list(allowed)}",
                    cls=PlanError,
                )
            group = [allowed.index(spec.method)] + [0] * len(names)
            params = dict(spec.params)
            if "ramp" in VOCAB[spec.method] and "ramp" not in params:  # a plan-wide ramp
                params["ramp"] = plan.ramp_fraction
            for p, v in params.items():
                group[1 + names.index(p)] = _index(self._choices[p], v, f"sites[{members[0]!r}].params.{p}")
            tokens += group
        return tokens

    def active_mask(self, tokens: Sequence[int]) -> list[bool]:
        tokens = self._check_tokens(tokens)
        mask: list[bool] = []
        for g, (key, _, tok) in enumerate(self._group_slices(tokens)):
            used = VOCAB[self.group_methods[key][tok[0]]]
            mask += [True] + [p in used for p in self._group_params[g]]
        return mask

    def random_tokens(self, rng: np.random.Generator) -> list[int]:
        """Uniform over every decision (the random-search baseline's distribution)."""
        return rng.integers(0, np.asarray(self.vocab_sizes)).tolist()

    def random_plan(self, seed: int) -> Plan:
        return self.decode(self.random_tokens(np.random.default_rng(seed)))

    def __repr__(self) -> str:
        return (
            f"SearchSpace({len(self.sites)} sites, {len(self.groups)} groups, "
            f"{len(self.decisions)} decisions, methods={list(self.methods)})"
        )


def _params_of(methods: Sequence[str]) -> list[str]:
    """Parameter names used by ``methods``, in table order (shared names once)."""
    names: list[str] = []
    for m in METHODS:
        if m in methods:
            names += [p for p in VOCAB[m] if p not in names]
    return names


def _index(choices: tuple, value: ParamValue, field: str) -> int:
    for i, c in enumerate(choices):
        if type(c) is type(value) and c == value:
            return i
    raise user_error(
        field, detail=f"bad value {value!r} is not in the search vocabulary", allowed=f"{list(choices)}", cls=PlanError
    )
