"""Insert a plan's regularizers into any model without touching its parameters.

This module decides what goes where: it builds each site's layer (`build_layer`), checks that
the method fits the site, ramps it, and hands it to `search_space.insertion`, which holds the
layers (a parameter-free list and a forward hook, or a class switch inside torch's Transformer
layers) so that ``state_dict()`` is unchanged and ``eval()`` is the plain model. Sites are
found by `search_space.sites` (the module tree) or `search_space.probe` (an example input).

Disout: its ``weight_behind`` is the weight of the next convolution after the site (in
module-definition order, which is the forward order of ResNets) whose ``in_channels``
equals the site's channel count; it is re-read before every training forward, so it follows
training, ``.to(device)`` and ``deepcopy``. With no such convolution Disout uses its constant.

Virtual ``<attention>:q|k|v`` sites: apply_plan switches the ``nn.MultiheadAttention``'s
class to `RegularizedMultiheadAttention` (same parameters, so the same state_dict), which
computes attention unfused with the projections regularized, only in training and only while
one of its regularizers is active; otherwise (and always in eval, fast path included) it is
the stock module. Sequence regularizers at sites of a ``batch_first=False`` layer (the model
itself included) are told so.

Layouts: a plan's ``layouts`` (site -> `search_space.layouts` name, from the search's probe)
tell each layer which axes hold the channels and the map (`build_layer`: DropBlock1d/2d/3d by
the number of map axes, ``layout=`` for every layer that takes it); a method the layout cannot
take is refused before anything changes. A site without a layout keeps the layer's default
(channels first; tokens batch first, or T,N,C inside a ``batch_first=False`` layer).

Pattern ``residual=True``: the same pattern (a second, independent instance) is also
applied to the output of the nearest enclosing residual block of the site, i.e. to the
residual stream after the skip connection is added. It has no effect for a site that is not
inside a residual block.

Learned sites (method ``learned``): `search_space.concrete_sites` builds their Concrete
Dropout layers, inserted here like any other.

The names of `search_space.sites`, `search_space.insertion` and `search_space.concrete_sites`
that code imports from here (``find_sites``, ``regularizers``, ``step_schedulers``,
``remove_plan``, ``concrete_layers``...) stay importable here.
"""

from __future__ import annotations

import inspect
import logging

import torch.nn as nn

from search_space import layers as _layers
from search_space.attention import RegularizedMultiheadAttention as RegularizedMultiheadAttention
from search_space.attention import _attach_qkv
from search_space.attention import unwrap_regularizer as unwrap_regularizer
from search_space.concrete_sites import CONCRETE_BEHIND as CONCRETE_BEHIND
from search_space.concrete_sites import LEARNED_APPLIED as LEARNED_APPLIED
from search_space.concrete_sites import _plan_concrete
from search_space.concrete_sites import concrete_layers as concrete_layers
from search_space.errors import user_error
from search_space.insertion import (
    _BEHIND,
    _SCHEDULERS,
    _attach,
    _find_schedulers,
    _named_modules,
    remove_plan,
)
from search_space.insertion import REG_ATTR as REG_ATTR
from search_space.insertion import RegularizedDropout as RegularizedDropout
from search_space.insertion import regularized_class as regularized_class
from search_space.insertion import regularizers as regularizers
from search_space.insertion import step_schedulers as step_schedulers
from search_space.layouts import LAYOUT_FREE, allowed_methods, get_layout
from search_space.plan import LEARNED_METHOD, Plan, PlanError, SiteSpec
from search_space.sites import (
    _SITE_NORMS,
    _batch_first,
    _channels_first,
    _enclosing_block,
    _is_virtual,
    _next_conv,
    _torch_layer_of,
    check_sites,
    transformer_sites,
)
from search_space.sites import default_methods as default_methods
from search_space.sites import find_sites as find_sites
from search_space.sites import is_residual_block as is_residual_block
from search_space.sites import site_channels as site_channels
from search_space.sites import transformer_site_blocks as transformer_site_blocks
from search_space.vocab import APPLY_ONLY_PARAMS, CONV_METHODS, METHOD_LAYERS, SEQUENCE_METHODS

log = logging.getLogger(__name__)

_RESIDUAL_SUFFIX = ":residual"
#: The layer of a method on a map with another number of map axes than its default's.
_BY_AXES = {"DropBlock2d": {1: "DropBlock1d", 3: "DropBlock3d"}}


def _build(site: str, spec: SiteSpec, layout: str | None = None) -> nn.Module:
    try:
        return build_layer(spec, layout)
    except ValueError as e:
        raise user_error(f"sites[{site!r}]", detail=str(e), cls=PlanError) from None


def build_layer(spec: SiteSpec, layout: str | None = None) -> nn.Module:
    """The layer for one SiteSpec (parameters named as the layer's arguments), told the site's
    ``layout`` (`search_space.layouts`) when it acts on axes: DropBlock1d/2d/3d by the number
    of map axes, and every layer with a ``layout`` argument gets it."""
    layer_name = METHOD_LAYERS[spec.method]
    if layer_name is None:
        raise user_error(detail=f"method {spec.method!r} has no layer", cls=PlanError)
    kwargs = {k: v for k, v in spec.params.items() if k not in APPLY_ONLY_PARAMS}
    lay = None if layout is None else get_layout(layout, "layout", PlanError)
    if lay is not None and lay.kind == "map":
        layer_name = _BY_AXES.get(layer_name, {}).get(len(lay.spatial), layer_name)
    cls = getattr(_layers, layer_name)
    if lay is not None and lay.channel is not None and "layout" in inspect.signature(cls).parameters:
        kwargs["layout"] = lay.name
    return cls(**kwargs)


def apply_plan(
    model: nn.Module,
    plan: Plan,
    total_steps: int | None = None,
    *,
    n_train: int | None = None,
    weight_decay: float = 0.0,
    example_dims: int = 1,
) -> nn.Module:
    """Insert `plan`'s regularizers into `model` in place (replacing any earlier plan).

    With total_steps given, a site's probability ramps linearly from 0 to its target over
    int(ramp * total_steps) calls of `step_schedulers`, where ``ramp`` is the site's own
    searched "ramp" parameter or, when the plan leaves it out, ``plan.ramp_fraction``
    (0: constant).

    Sites whose method is ``learned`` (a search's ``learned`` trial) get a `ConcreteDropout`
    whose rate the training learns (`search_space.learned`): they need ``n_train`` (the data
    points the loss averages over; ``example_dims=2`` when they are tokens) and, for the
    weight term, the SGD-style ``weight_decay`` the optimizer applies; the loop then adds
    `learned_regularizer(model)` to its loss and builds its optimizer after this call. Other
    plans ignore the three.
    """
    if not isinstance(plan, Plan):
        raise user_error("plan", detail=f"bad value of type {type(plan).__name__}", allowed="a Plan", cls=PlanError)
    if total_steps is not None and (
        isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 0
    ):
        raise user_error("total_steps", total_steps, "None or an int >= 0")
    check_sites(model, plan.sites)
    named = list(_named_modules(model))
    modules = dict(named)
    learned: dict[str, nn.Module] = {}
    if any(spec.method == LEARNED_METHOD for spec in plan.sites.values()):
        learned = dict(_plan_concrete(model, plan, n_train, weight_decay, example_dims))
    ramps = {
        site: float(spec.params.get("ramp", plan.ramp_fraction))
        for site, spec in plan.sites.items()
        if spec.method not in ("none", LEARNED_METHOD)
    }
    if total_steps is None and any(r > 0 for r in ramps.values()):
        log.warning(
            "ramps of %s ignored: apply_plan got no total_steps", ", ".join(s for s, r in ramps.items() if r > 0)
        )

    def steps(site: str) -> int | None:
        ramp = ramps[site]
        return max(1, int(ramp * total_steps)) if ramp > 0 and total_steps is not None else None

    # Build everything first, so a failure leaves the model (and any earlier plan) untouched.
    own: list[tuple[str, nn.Module]] = []
    residual: list[tuple[str, nn.Module]] = []
    sequence_sites = set(transformer_sites(model))
    for site, spec in plan.sites.items():
        if spec.method == "none":
            continue
        if site in learned:
            learned[site].plan_site = site
            own.append((site, learned[site]))
            continue
        layout = plan.layouts.get(site)
        sequence = site in sequence_sites or _is_virtual(site)
        _check_method_fits(site, spec.method, sequence, modules, layout)
        if layout is None and not sequence and spec.method not in LAYOUT_FREE and not _channels_first(modules[site]):
            log.warning(
                "site %s (%s): the plan states no layout; %s assumes channels first (N,C,...). Plans from a search "
                "state it; for a hand-written plan see search_space.describe(model, example_input)",
                site,
                type(modules[site]).__name__,
                spec.method,
            )
        layer = _build(site, spec, layout)
        if layout is None and hasattr(layer, "batch_first") and not _is_virtual(site):
            layer.batch_first = _batch_first(modules, site)
        if spec.method == "disout":
            conv = _next_conv(named, site)
            if conv is None:
                log.info("site %s: no following convolution; Disout uses its constant weight", site)
            else:
                object.__setattr__(layer, _BEHIND, conv)
        own.append((site, _ramped(layer, steps(site), site)))
        if spec.params.get("residual"):
            block = _enclosing_block(modules, site)
            if block is None:
                log.info("site %s: residual=True but no enclosing residual block", site)
            else:
                residual.append((block, _ramped(_build(site, spec, layout), steps(site), site + _RESIDUAL_SUFFIX)))
    remove_plan(model)
    for path, reg in own + residual:  # a block's own regularizer runs before residual ones
        _attach_at(modules, path, reg)
    # step_schedulers runs every iteration: keep the list instead of walking the model
    # (a plain attribute, so deepcopy/pickle carry it along with the copied modules).
    model.__dict__[_SCHEDULERS] = _find_schedulers(model)
    log.debug("applied plan to %d sites: %s", len(plan.sites), plan.summary())
    return model


def insert_layers(model: nn.Module, layers: dict[str, nn.Module]) -> nn.Module:
    """Insert ready-made layers (site -> layer) in place exactly as `apply_plan` inserts a
    plan's (replacing any earlier plan): `regularizers` lists them and `remove_plan` removes
    them. For layers no Plan describes, such as `search_space.learned`'s ConcreteDropout."""
    check_sites(model, layers)
    modules = dict(_named_modules(model))
    remove_plan(model)
    for site, layer in layers.items():
        layer.plan_site = site
        _attach_at(modules, site, layer)
    model.__dict__[_SCHEDULERS] = _find_schedulers(model)
    return model


def _attach_at(modules: dict[str, nn.Module], path: str, layer: nn.Module) -> None:
    """Attach ``layer`` at a module path, or at an attention's q/k/v (a virtual site ``attn:q``)."""
    if _is_virtual(path):
        attention, part = path.rsplit(":", 1)
        _attach_qkv(modules[attention], part, layer)  # type: ignore[arg-type]
    else:
        _attach(modules[path], layer, switch_class=_torch_layer_of(modules, path) is not None)


def _check_method_fits(
    site: str, method: str, sequence: bool, modules: dict[str, nn.Module], layout: str | None = None
) -> None:
    """Fail early (not in the first forward) when a method cannot run on the site's layout
    (the plan's, or without one the site's kind: Transformer tokens, a BatchNorm2d map)."""
    if layout is not None:
        allowed = allowed_methods(layout)
        if method not in allowed:
            raise user_error(
                f"sites[{site!r}].method",
                detail=f"bad value {method!r} at a site of layout {get_layout(layout).axes}",
                allowed=f"{list(allowed)}",
                cls=PlanError,
            )
    elif sequence and method not in SEQUENCE_METHODS:
        raise user_error(
            f"sites[{site!r}].method",
            detail=f"bad value {method!r} at a Transformer (N, T, C) site",
            allowed=f"{list(SEQUENCE_METHODS)}",
            cls=PlanError,
        )
    if layout is None and not sequence and method == "seq_pattern" and isinstance(modules.get(site), _SITE_NORMS):
        raise user_error(
            f"sites[{site!r}].method",
            detail=f"bad value {method!r} at an (N, C, H, W) site",
            allowed=f"{list(CONV_METHODS)}",
            cls=PlanError,
        )
    if _is_virtual(site):
        mha = modules[site.rsplit(":", 1)[0]]
        if mha.bias_k is not None or mha.add_zero_attn:  # type: ignore[union-attr]
            raise user_error(
                f"sites[{site!r}]",
                detail="q/k/v sites need a MultiheadAttention without add_bias_kv and add_zero_attn",
                allowed="the attention output and feed-forward sites",
                cls=PlanError,
            )


def _ramped(layer: nn.Module, nr_steps: int | None, key: str) -> nn.Module:
    reg = layer
    if nr_steps is not None:
        attr = type(layer).prob_attr
        reg = _layers.LinearScheduler(layer, start_value=0.0, stop_value=getattr(layer, attr), nr_steps=nr_steps)
        setattr(layer, attr, 0.0)
    if _BEHIND in layer.__dict__ and reg is not layer:
        object.__setattr__(reg, _BEHIND, layer.__dict__[_BEHIND])
    reg.plan_site = key
    return reg
