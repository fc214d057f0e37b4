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
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from search_space.apply import (
    _SITE_NORMS,
    _named_modules,
    _next_conv,
    check_sites,
    find_sites,
    insert_layers,
    is_residual_block,
    regularizers,
    unwrap_regularizer,
)
from search_space.errors import user_error
from search_space.layers._validate import check_int
from search_space.layers.concrete import DEFAULT_TEMPERATURE, ConcreteDropout, dropout_penalty
from search_space.plan import Plan, SiteSpec
from search_space.vocab import VOCAB

__all__ = [
    "LEARNED",
    "apply_learned",
    "channel_dim_of_layout",
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

#: The label of the plan learned rates make (``plan.metadata["source"]``).
LEARNED = "learned-rates"
_BEHIND = "_learned_behind"  # the following conv, kept outside _modules (not a submodule)


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
    n_train = check_int("n_train", n_train)
    decay = weight_decay if isinstance(weight_decay, (int, float)) and not isinstance(weight_decay, bool) else -1.0
    if not decay >= 0.0:
        raise user_error("weight_decay", weight_decay, "a number >= 0")
    check_sites(model, sites)
    length_scale = (decay * precision * n_train) ** 0.5 if decay > 0 else 0.0
    layers: dict[str, nn.Module] = {}
    for site, channel_dim in sites.items():
        try:
            layers[site] = ConcreteDropout(
                init_rate,
                n_train=n_train,
                channel_dim=channel_dim,
                temperature=temperature,
                length_scale=length_scale,
                precision=precision,
                example_dims=example_dims,
            )
        except ValueError as e:
            raise user_error(f"sites[{site!r}]", detail=str(e)) from None
    named = list(_named_modules(model))
    for site, layer in layers.items():
        conv = None if ":" in site or length_scale == 0 else _next_conv(named, site)
        if conv is not None:
            object.__setattr__(layer, _BEHIND, conv)
    insert_layers(model, layers)
    behind = sum(_BEHIND in layer.__dict__ for layer in layers.values())
    log.info("learned rates at %d sites (%d with a weight term), n_train=%d", len(layers), behind, n_train)
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
    forward yet (their K is unknown) add nothing."""
    layers = learned_layers(model)
    if not layers:
        raise user_error("model", type(model).__name__, "a model after apply_learned (no ConcreteDropout in it)")
    ran = [layer for layer in layers.values() if layer.units]
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
) -> Plan:
    """An ordinary Plan from learned rates: at each site ``dropout`` (elementwise sites) or
    ``spatial_dropout`` (sites with a channel axis in ``sites``) with its rate rounded to
    ``grid`` (default: the vocabulary's ``drop_prob`` values; rates above it take its
    largest), ``none`` where it rounds to 0. The raw rates are kept in the metadata."""
    values = tuple(VOCAB["dropout"]["drop_prob"] if grid is None else grid)
    specs: dict[str, SiteSpec] = {}
    for site, rate in rates.items():
        if site not in sites:
            raise user_error(f"rates[{site!r}]", detail="a site missing from sites", allowed=f"{list(sites)[:8]}")
        value = round_to_grid(rate, values)
        if value == 0.0:
            specs[site] = SiteSpec("none", {})
        else:
            method = "dropout" if sites[site] is None else "spatial_dropout"
            specs[site] = SiteSpec(method, {"drop_prob": value, "ramp": 0.0})
    metadata = {"source": LEARNED, "learned_rates": {s: round(float(r), 4) for s, r in rates.items()}}
    return Plan(specs, model=model, metadata=metadata)
