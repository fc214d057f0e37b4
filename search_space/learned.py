"""`learned`: per-site dropout rates learned in one training (Concrete Dropout), and the plan they make.

What a user would try before spending a search: put a `ConcreteDropout` at every site (or at
the sites of a plan), train once with its regularizer added to the loss, read the rate each
site learned, and turn the rates into an ordinary `Plan` (dropout, or spatial dropout at map
sites, on the vocabulary's grid) that is exported, applied, retrained and compared like any
plan. ::

    sites = learned_sites(model, example_input)           # site -> channel axis (None: elementwise)
    apply_learned(model, sites, n_train=len(train_set), weight_decay=wd)
    optimizer = SGD(learned_param_groups(model), lr=0.1, weight_decay=wd)  # the logits without decay
    loss = task_loss + learned_regularizer(model)          # every step, after the forward
    plan = learned_plan(learned_rates(model), sites)

The weight term. The paper puts ``l^2 / (2 tau N) * ||W||^2 / (1 - p)`` on the weight W that
the dropped units multiply, i.e. the layer after the site; our layers own no weights, and the
trainings already apply weight decay to every weight. So, for SGD-style (L2) decay
``weight_decay``, the prior length-scale is the one that decay stands for,
``l^2 = weight_decay * tau * N`` (the term at p = 0 is then exactly the decay), and the loss
adds the rest of the paper's term, ``weight_decay / 2 * ||W||^2 * p / (1 - p)``, on the
weight of the next convolution that reads the site's channels (the rule Disout uses to find
its ``weight_behind``: `apply._next_conv`). Where there is no such convolution (feature and
token sites, whose next module is ambiguous: q, k and v all read one input), the site has
no weight term, only the dropout term; with ``weight_decay=0`` (a flat prior) no site has one.
Under AdamW the decay is decoupled, so the match is approximate.

The logits are parameters of the model while the layers are inserted (state_dict keys such
as ``bn1.plan_regularizers.0.logit``); `learned_plan` is stateless like every plan.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from search_space.apply import (
    _SITE_NORMS,
    _named_modules,
    check_sites,
    find_sites,
    insert_layers,
    is_residual_block,
    regularizers,
    unwrap_regularizer,
)
from search_space.concrete_sites import CONCRETE_BEHIND, LEARNED_APPLIED, concrete_layers
from search_space.errors import user_error
from search_space.layers.concrete import DEFAULT_TEMPERATURE, ConcreteDropout, dropout_penalty
from search_space.plan import LEARNED_METHOD, Plan, SiteSpec
from search_space.vocab import VOCAB

__all__ = [
    "LEARNED",
    "LEARNED_TRIAL",
    "apply_learned",
    "channel_dim_of_layout",
    "concrete_layers",
    "derived_plan",
    "is_learning_plan",
    "learning_plan",
    "nearest_tokens",
    "trained_rates",
    "learned_layers",
    "learned_param_groups",
    "learned_parameters",
    "learned_plan",
    "learned_rates",
    "learned_regularizer",
    "learned_sites",
    "round_to_grid",
]

log = logging.getLogger(__name__)

#: The label of the plan learned rates make (``plan.metadata["source"]``; a search's finalist).
LEARNED = "learned-rates"
#: The label of a search's trial that learns the rates (its baseline name in trials.csv).
LEARNED_TRIAL = "learned"
_BEHIND = CONCRETE_BEHIND  # the following conv, kept outside _modules (not a submodule)
_REGULARIZED = "_learned_regularized"  # learned_regularizer ran on the layer (a plain attribute)


def channel_dim_of_layout(layout: str) -> int | None:
    """The channel axis of a site whose layout (`search_space.layouts`: "NCHW", "NHWC", "NCL",
    also spelt "N,C,H,W") is a map: a per-channel mask there. None (elementwise) for flat and
    token features ("NC", "NTC", "TNC") and unknown layouts."""
    from search_space.layouts import get_layout

    info = get_layout(layout)
    return info.channel if info.kind == "map" else None


def learned_sites(
    model: nn.Module, example_input: Any = None, sites: Iterable[str] | None = None
) -> dict[str, int | None]:
    """Site -> channel axis for `apply_learned`: every site of ``model`` or the given ``sites``
    (e.g. a plan's). With ``example_input``, from the shapes (`describe.probe_sites`: the
    candidate sites, the channel axis of each map); without, `find_sites` (BatchNorm2d and
    residual-block outputs: NCHW maps, axis 1; Transformer sites: elementwise)."""
    if example_input is not None:
        from search_space.describe import probe_sites

        chosen = None if sites is None else list(sites)
        infos = probe_sites(model, example_input, chosen)
        if chosen is not None:
            for info in infos:
                if not info.methods:
                    raise user_error(f"sites[{info.path!r}]", detail="its output is not a feature tensor here",
                                     allowed="sites whose output is a tensor (see search_space.describe)")  # fmt: skip
        return {i.path: channel_dim_of_layout(i.layout) for i in infos if i.methods}
    paths = find_sites(model) if sites is None else list(sites)
    check_sites(model, paths)
    modules = dict(_named_modules(model))
    maps = {name for name, m in modules.items() if isinstance(m, _SITE_NORMS) or is_residual_block(m)}
    return {s: 1 if s in maps else None for s in paths}


def apply_learned(
    model: nn.Module,
    sites: Mapping[str, int | None],
    n_train: int,
    *,
    init_rate: float = 0.1,
    temperature: float = DEFAULT_TEMPERATURE,
    weight_decay: float = 0.0,
    precision: float = 1.0,
    example_dims: int = 1,
) -> nn.Module:
    """Insert a `ConcreteDropout` at each site in place (replacing any earlier plan), as
    `apply_plan` inserts its layers; returns ``model``.

    ``sites``: site -> channel axis of its output (None: elementwise; `learned_sites`).
    ``n_train``: the data points the loss averages over (images; tokens for a language
    model, with ``example_dims=2``). ``weight_decay``: the SGD-style decay the optimizer
    applies to the weights, which sets the weight term (module docstring); ``precision``:
    the paper's tau (1 for classification). Build the optimizer after this call, with
    `learned_parameters` in a group without weight decay.
    """
    if not isinstance(sites, Mapping) or not sites:
        raise user_error("sites", sites, "a non-empty mapping of site path -> channel axis (int) or None")
    layers = concrete_layers(model, sites, n_train, init_rate=init_rate, temperature=temperature,
                             weight_decay=weight_decay, precision=precision, example_dims=example_dims)  # fmt: skip
    insert_layers(model, layers)
    return model


def learned_layers(model: nn.Module) -> dict[str, ConcreteDropout]:
    """Site -> the ConcreteDropout `apply_learned` inserted there."""
    found = {site: unwrap_regularizer(reg) for site, reg in regularizers(model).items()}
    return {site: layer for site, layer in found.items() if isinstance(layer, ConcreteDropout)}


def learned_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The sites' logits, for an optimizer group without weight decay (decay would pull every
    rate toward 1/2). Not always in ``model.parameters()``: a container site (an
    ``nn.Sequential``) keeps its layers outside its modules."""
    return [layer.logit for layer in learned_layers(model).values()]


def learned_param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Optimizer parameter groups: the model's parameters, then the sites' logits without
    weight decay (each once, the container sites' logits included)."""
    logits = learned_parameters(model)
    ids = {id(p) for p in logits}
    return [{"params": [p for p in model.parameters() if id(p) not in ids]}, {"params": logits, "weight_decay": 0.0}]


def learned_regularizer(model: nn.Module) -> torch.Tensor:
    """The loss term to add every step after the forward: the sum of the sites'
    `ConcreteDropout.regularizer` (the weight term on the following conv's weight, minus the
    decay the optimizer applies; module docstring). Sites that have not run a training
    forward yet (their K is unknown) add nothing, and a model without ConcreteDropout adds a
    zero, so a training loop can always add it (a search's ``learned`` trial needs it, its
    other plans ignore it)."""
    layers = learned_layers(model)
    if not layers:
        return torch.zeros(())
    ran = [layer for layer in layers.values() if layer.units]
    for layer in ran:
        layer.__dict__[_REGULARIZED] = True  # the search's trial checks that the loop added it
    if not ran:
        return torch.zeros((), device=next(iter(layers.values())).logit.device)
    # one vectorised expression for every site (a per-site call costs a dozen small ops each)
    logits = torch.stack([layer.logit for layer in ran])
    coef = torch.tensor([layer.dropout_regularizer * layer.units for layer in ran], device=logits.device)
    total = (coef * dropout_penalty(logits)).sum()
    behind = [(i, layer.__dict__[_BEHIND].weight) for i, layer in enumerate(ran) if _BEHIND in layer.__dict__]
    if behind:
        index = torch.tensor([i for i, _ in behind], device=logits.device)
        squared = torch.stack([w.float().pow(2).sum() for _, w in behind])
        wr = torch.tensor([ran[i].weight_regularizer for i, _ in behind], device=logits.device)
        p = torch.sigmoid(logits.index_select(0, index))
        total = total + (wr * squared * p / (1 - p)).sum()  # the paper's term less the optimizer's decay
    return total


def learned_rates(model: nn.Module) -> dict[str, float]:
    """Site -> the rate its ConcreteDropout has learned, ``sigmoid(logit)``."""
    return {site: layer.drop_prob for site, layer in learned_layers(model).items()}


def round_to_grid(rate: float, grid: Iterable[float]) -> float:
    """The grid value nearest ``rate`` (the lower one on a tie; the largest above the grid)."""
    values = sorted(float(g) for g in grid)
    return min(values, key=lambda g: (abs(g - float(rate)), g))


def learned_plan(
    rates: Mapping[str, float],
    sites: Mapping[str, int | None],
    *,
    model: str = "",
    grid: Iterable[float] | None = None,
    layouts: Mapping[str, str] | None = None,
    methods: Mapping[str, Sequence[str]] | None = None,
) -> Plan:
    """An ordinary Plan from learned rates: at each site ``dropout`` (elementwise sites) or
    ``spatial_dropout`` (sites with a channel axis in ``sites``) with its rate rounded to
    ``grid`` (default: the vocabulary's ``drop_prob`` values; rates above it take its
    largest), ``none`` where it rounds to 0. The raw rates are kept in the metadata.

    ``layouts`` (site -> layout, e.g. a search space's) go into the plan, so a channels-last
    map is dropped along its real channel axis; ``methods`` (site -> the methods it allows,
    e.g. ``space.methods_of``) keep every site to them: spatial dropout falls back to dropout
    and back, and a site that allows neither gets ``none``."""
    values = tuple(VOCAB["dropout"]["drop_prob"] if grid is None else grid)
    specs: dict[str, SiteSpec] = {}
    for site, rate in rates.items():
        if site not in sites:
            raise user_error(f"rates[{site!r}]", detail="a site missing from sites", allowed=f"{list(sites)[:8]}")
        value = round_to_grid(rate, values)
        wanted = ("spatial_dropout", "dropout") if sites[site] is not None else ("dropout", "spatial_dropout")
        allowed = None if methods is None or site not in methods else tuple(methods[site])
        method = next((m for m in wanted if allowed is None or m in allowed), None)
        if value == 0.0 or method is None:
            specs[site] = SiteSpec("none", {})
        else:
            specs[site] = SiteSpec(method, {"drop_prob": value, "ramp": 0.0})
    metadata = {"source": LEARNED, "learned_rates": {s: round(float(r), 4) for s, r in rates.items()}}
    stated = {s: lay for s, lay in (layouts or {}).items() if s in specs}
    return Plan(specs, model=model, metadata=metadata, layouts=stated)


# ----------------------------------------------------------------------------- in a search
def learning_plan(space: Any) -> Plan | None:
    """The plan of a search's ``learned`` trial (`search_space.plan.LEARNED_METHOD` at each
    site of ``space``, a `SearchSpace`): per channel where the derived plan will use spatial
    dropout (a map site that allows it; without a layout, any site that allows it), else
    elementwise where the site allows dropout, else ``none``. None when no site allows
    either. The space's layouts go with it, so `derived_plan` needs nothing else."""
    specs: dict[str, SiteSpec] = {}
    for site in space.sites:
        allowed = space.methods_of(site)
        layout = space.layouts.get(site)
        is_map = channel_dim_of_layout(layout) is not None if layout else "spatial_dropout" in allowed
        if is_map and "spatial_dropout" in allowed:
            specs[site] = SiteSpec(LEARNED_METHOD, {"per_channel": True})
        elif "dropout" in allowed:
            specs[site] = SiteSpec(LEARNED_METHOD, {"per_channel": False})
        else:
            specs[site] = SiteSpec("none", {})
    if all(spec.method == "none" for spec in specs.values()):
        return None
    return Plan(specs, model=space.model, layouts=dict(space.layouts), metadata={"source": LEARNED_TRIAL})


def is_learning_plan(plan: Any) -> bool:
    """Whether ``plan`` learns its rates at some site (method ``learned``)."""
    return isinstance(plan, Plan) and any(spec.method == LEARNED_METHOD for spec in plan.sites.values())


def derived_plan(learning: Plan, rates: Mapping[str, float], grid: Iterable[float] | None = None) -> Plan:
    """The ordinary plan a ``learned`` trial's rates make (`learned_plan`): spatial dropout at
    its per-channel sites, dropout at the others, ``none`` where a rate rounds to 0 or is
    missing and at the sites that did not learn; with the learning plan's layouts. A pure
    function of the trial's row (its plan and rates), so a resume derives the same plan."""
    sites = {s: (1 if spec.params.get("per_channel") else None) for s, spec in learning.sites.items()
             if spec.method == LEARNED_METHOD}  # fmt: skip
    known = {s: float(r) for s, r in rates.items() if s in sites}
    missing = [s for s in sites if s not in known]
    if missing:
        log.warning("learned rates missing at %d site(s) (%s): none there", len(missing), ", ".join(missing[:4]))
    plan = learned_plan(known, sites, model=learning.model, grid=grid)
    specs = {s: plan.sites.get(s, SiteSpec("none", {})) for s in learning.sites}
    return Plan(specs, model=learning.model, metadata=plan.metadata, layouts=dict(learning.layouts))


def nearest_tokens(space: Any, plan: Plan) -> list[int]:
    """The tokens of ``space`` nearest a plan of per-site rates (e.g. `derived_plan`'s), which
    ``space.encode`` may refuse (sites of one group with different rates, a method the group
    does not offer). Per group: the mean of its sites' rates (the raw learned rates where the
    plan's metadata has them; 0 at ``none`` sites) on the ``drop_prob`` grid, which minimises
    the squared distance to the sites' rates under one shared value; the method most of its
    sites use (spatial dropout and dropout stand in for each other, then DropBlock with
    blocks of 1); ``none`` where the mean rounds to 0. Ramps 0; other parameters their first
    value."""
    raw = plan.metadata.get("learned_rates") if isinstance(plan.metadata.get("learned_rates"), dict) else {}
    grid = VOCAB["dropout"]["drop_prob"]
    specs: dict[str, SiteSpec] = {}
    for key, members in space.groups:
        rates, methods = [], []
        for site in members:
            spec = plan.sites.get(site, SiteSpec("none", {}))
            rate = raw.get(site, spec.params.get("drop_prob", 0.0) if spec.method != "none" else 0.0)
            rates.append(float(rate))
            if spec.method != "none":
                methods.append(spec.method)
        value = round_to_grid(sum(rates) / len(rates), grid)
        method = max(dict.fromkeys(methods), key=methods.count) if methods and value > 0 else "none"
        spec = _nearest_spec(method, value, space.group_methods[key])
        for site in members:
            specs[site] = spec
    return space.encode(Plan(specs, model=space.model, ramp_fraction=space.ramp_fraction))


_STAND_INS = {"spatial_dropout": ("spatial_dropout", "dropout", "dropblock"),
              "dropout": ("dropout", "spatial_dropout", "dropblock"), "none": ("none",)}  # fmt: skip


def _nearest_spec(method: str, rate: float, allowed: Sequence[str]) -> SiteSpec:
    """``method`` (or its nearest stand-in that ``allowed`` has, else ``none``, else the first
    allowed method) at ``rate``; a parameter other than the rate and the ramp takes its first value."""
    chosen = next((m for m in (*_STAND_INS.get(method, (method,)), "none") if m in allowed), allowed[0])
    if chosen == "none":
        return SiteSpec("none", {})
    params = {p: rate if p == "drop_prob" else 0.0 if p == "ramp" else choices[0]
              for p, choices in VOCAB[chosen].items()}  # fmt: skip
    return SiteSpec(chosen, params)


# ----------------------------------------------------------------------------- a train_fn's rates
def trained_rates(plan: Plan) -> tuple[dict[str, float], str]:
    """(site -> learned rate, "") after a training of ``plan``, read from the layers
    `apply_plan` last inserted for it (and forgotten, for the next seed); or ({}, why there
    are none): the plan was never applied, never trained, its regularizer never added to the
    loss, or its logits never moved (the optimizer does not hold them)."""
    applied = plan.__dict__.pop(LEARNED_APPLIED, None)
    if not applied:
        return {}, (
            "train_fn never applied this plan: call apply_plan(model, plan, total_steps, n_train=len(train_set)) "
            "with the plan it is given (search_space.learned)"
        )
    layers = {site: layer for site, (layer, _) in applied.items()}
    if not any(layer.units for layer in layers.values()):
        return {}, "the model never ran a training forward with the plan's layers after apply_plan"
    if not any(layer.__dict__.get(_REGULARIZED) for layer in layers.values()):
        return {}, (
            "train_fn did not add learned_regularizer(model) to its loss (search_space.learned), so the rates "
            "are not Concrete Dropout's"
        )
    if all(float(layer.logit.detach()) == start for layer, start in applied.values()):
        return {}, (
            "the rates never moved from their start: the optimizer does not train the sites' logits (build it "
            "after apply_plan, e.g. SGD(learned_param_groups(model), ...))"
        )
    return {site: layer.drop_prob for site, layer in layers.items()}, ""
