"""The Concrete Dropout layers that learn a rate per site, built for a model but not inserted.

`apply_plan` inserts them at a plan's ``learned`` sites (a search's ``learned`` trial) and
`search_space.learned.apply_learned` at the sites it is given; both build them here, so that
neither imports the other. A layer whose site feeds a convolution keeps that conv (not as a
submodule, so ``state_dict()`` is unchanged) for its weight term.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from torch import nn

from search_space.errors import user_error
from search_space.insertion import _named_modules
from search_space.layers._validate import check_int
from search_space.layers.concrete import DEFAULT_TEMPERATURE, ConcreteDropout
from search_space.layouts import get_layout
from search_space.plan import LEARNED_METHOD, Plan, PlanError
from search_space.sites import _next_conv, check_sites

log = logging.getLogger(__name__)

#: On a ConcreteDropout: the following conv, whose weight carries its weight term (search_space.learned).
CONCRETE_BEHIND = "_learned_behind"
#: On a Plan: the ConcreteDropout layers `apply_plan` inserted at its learned sites, with their start logits.
LEARNED_APPLIED = "_learned_applied"


def concrete_layers(
    model: nn.Module,
    sites: Mapping[str, int | None],
    n_train: int,
    *,
    init_rate: float = 0.1,
    temperature: float = DEFAULT_TEMPERATURE,
    weight_decay: float = 0.0,
    precision: float = 1.0,
    example_dims: int = 1,
) -> dict[str, ConcreteDropout]:
    """Site -> a new `ConcreteDropout` for it (with the following conv's weight for the weight
    term, ``CONCRETE_BEHIND``), not inserted yet: what `search_space.learned.apply_learned` and
    `apply_plan` (at a plan's ``learned`` sites) insert; arguments as ``apply_learned``'s."""
    n_train = check_int("n_train", n_train)
    decay = weight_decay if isinstance(weight_decay, (int, float)) and not isinstance(weight_decay, bool) else -1.0
    if not decay >= 0.0:
        raise user_error("weight_decay", weight_decay, "a number >= 0")
    check_sites(model, sites)
    length_scale = (decay * precision * n_train) ** 0.5 if decay > 0 else 0.0
    layers: dict[str, ConcreteDropout] = {}
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
            object.__setattr__(layer, CONCRETE_BEHIND, conv)
    behind = sum(CONCRETE_BEHIND in layer.__dict__ for layer in layers.values())
    log.info("learned rates at %d sites (%d with a weight term), n_train=%d", len(layers), behind, n_train)
    return layers


def _plan_concrete(
    model: nn.Module, plan: Plan, n_train: int | None, weight_decay: float, example_dims: int
) -> dict[str, ConcreteDropout]:
    """`apply_plan`'s layers at ``plan``'s ``learned`` sites (not inserted yet): per channel
    along the site's layout (channels first without one) or elementwise, as the site says.
    ``n_train`` is required (the regularizer scales with 1/N). The layers are kept on the
    plan object (``LEARNED_APPLIED``) for `search_space.learned.trained_rates`: a search reads
    the rates a ``train_fn`` learned there."""
    if n_train is None:
        raise user_error(
            "n_train",
            detail="missing: the plan's sites learn their rates (method 'learned'), and the regularizer scales "
            "with 1/n_train",
            allowed="apply_plan(model, plan, total_steps, n_train=len(train_set)) (search_space.learned)",
            cls=PlanError,
        )
    sites: dict[str, int | None] = {}
    for site, spec in plan.sites.items():
        if spec.method == LEARNED_METHOD:
            lay = get_layout(plan.layouts[site]) if site in plan.layouts else None
            channel = 1 if lay is None else (lay.channel if lay.kind == "map" else None)
            sites[site] = channel if spec.params.get("per_channel") else None
    layers = concrete_layers(model, sites, n_train, weight_decay=weight_decay, example_dims=example_dims)
    plan.__dict__[LEARNED_APPLIED] = {site: (layer, float(layer.logit.detach())) for site, layer in layers.items()}
    return layers
