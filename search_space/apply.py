"""Insert a plan's regularizers into any model without touching its parameters.

Mechanism: each regularizer is appended to a parameter-free ``nn.ModuleList`` named
``plan_regularizers`` registered as a child of the site module, and one forward hook on the
site module passes the site's output through that list. The layers own no parameters or
buffers, so ``state_dict()`` keys are unchanged (checkpoints load with or without a plan),
and in ``eval()`` the hook returns the output untouched, so the model is identical there.
(For container sites such as ``nn.Sequential``, where a new child would join the forward
chain, the list is kept as a plain attribute instead and follows the site's train/eval mode.)

Sites (`find_sites`): the output of every ``nn.BatchNorm2d``/``SyncBatchNorm`` (where
AutoDropout applies its patterns) and of every residual block, detected generically: a
module whose class name ends with ``Block`` or ``Bottleneck``, or that has a ``downsample``
or ``shortcut`` attribute (torchvision BasicBlock/Bottleneck, our CIFAR ResNet/WRN blocks).

Disout: its ``weight_behind`` is the weight of the next convolution after the site (in
module-definition order, which is the forward order of ResNets) whose ``in_channels``
equals the site's channel count; it is re-read before every training forward, so it follows
training, ``.to(device)`` and ``deepcopy``. With no such convolution Disout uses its constant.

Transformer sites (`transformer_sites`): in every Transformer layer, the query, key and
value projections, the attention output, the feed-forward hidden activation and the
feed-forward output (AutoDropout applies its patterns to these sub-layers), plus the
token/patch embedding. A module declares its own with a ``regularization_sites`` tuple of
relative module names (our ``vit_tiny``/``transformer_lm`` do). For
``nn.TransformerEncoderLayer`` they are ``self_attn:q``, ``self_attn:k``, ``self_attn:v``
(virtual sites: its fused ``MultiheadAttention`` computes them inside one op),
``dropout1`` (attention output), ``dropout`` (hidden activation) and ``dropout2``
(feed-forward output), after the layer's own dropouts; every ``nn.Embedding`` of a model
holding such layers is an embedding site. Any ``nn.MultiheadAttention`` accepts the virtual
``<path>:q|k|v`` sites: apply_plan switches its class to `RegularizedMultiheadAttention`
(same parameters, so the same state_dict), which computes attention unfused with the
projections regularized, only in training and only while one of its regularizers is
active; otherwise (and always in eval, fast path included) it is the stock module.
Sequence regularizers at sites of a ``batch_first=False`` layer (the model itself included)
are told so. ``nn.TransformerDecoderLayer`` offers the same sites plus its cross-attention
(``multihead_attn:q|k|v``, ``dropout2``) and ``dropout3``. Sites inside torch's Transformer
layers switch their class (`RegularizedDropout`, `regularized_class`) instead of taking a
forward hook: a hook turns off the layer's fused eval fast path, whose output differs.

Shape-aware sites (any model, an example input): `search_space.probe` / `describe`.

Layouts: a plan's ``layouts`` (site -> `search_space.layouts` name, from the search's probe)
tell each layer which axes hold the channels and the map (`build_layer`: DropBlock1d/2d/3d by
the number of map axes, ``layout=`` for every layer that takes it); a method the layout cannot
take is refused before anything changes. A site without a layout keeps the layer's default
(channels first; tokens batch first, or T,N,C inside a ``batch_first=False`` layer).

Tuple outputs: at an ``nn.LSTM``/``GRU``/``RNN`` or ``nn.MultiheadAttention`` site the
regularizers act on the first element (the output sequence, the attention output); the state
or the attention weights pass unchanged.

Pattern ``residual=True``: the same pattern (a second, independent instance) is also
applied to the output of the nearest enclosing residual block of the site, i.e. to the
residual stream after the skip connection is added. It has no effect for a site that is not
inside a residual block.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any, Iterable, Iterator

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from search_space import layers as _layers
from search_space.attention import _QKV, QKV_ATTR, RegularizedMultiheadAttention, _attach_qkv, unwrap_regularizer
from search_space.errors import user_error
from search_space.layers._validate import check_int
from search_space.layers.concrete import DEFAULT_TEMPERATURE, ConcreteDropout
from search_space.layouts import LAYOUT_FREE, allowed_methods, get_layout
from search_space.plan import LEARNED_METHOD, Plan, PlanError, SiteSpec
from search_space.vocab import APPLY_ONLY_PARAMS, CONV_METHODS, METHOD_LAYERS, SEQUENCE_METHODS

log = logging.getLogger(__name__)

REG_ATTR = "plan_regularizers"
_TORCH_LAYER_SITES = ("self_attn:q", "self_attn:k", "self_attn:v", "dropout1", "dropout", "dropout2")
_TORCH_DECODER_SITES = (
    "self_attn:q",
    "self_attn:k",
    "self_attn:v",
    "dropout1",
    "multihead_attn:q",
    "multihead_attn:k",
    "multihead_attn:v",
    "dropout2",
    "dropout",
    "dropout3",
)
_TORCH_LAYERS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
_BEHIND = "_plan_behind_conv"
_RESIDUAL_SUFFIX = ":residual"
_SCHEDULERS = "_plan_schedulers"
#: On a ConcreteDropout: the following conv, whose weight carries its weight term (search_space.learned).
CONCRETE_BEHIND = "_learned_behind"
#: On a Plan: the ConcreteDropout layers `apply_plan` inserted at its learned sites, with their start logits.
LEARNED_APPLIED = "_learned_applied"
_SITE_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)  # 4-D outputs, which every method accepts
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
#: Modules whose output is a tuple whose first tensor is the site's output.
_FIRST_OF_TUPLE = (nn.RNNBase, nn.MultiheadAttention)
#: The layer of a method on a map with another number of map axes than its default's.
_BY_AXES = {"DropBlock2d": {1: "DropBlock1d", 3: "DropBlock3d"}}


# ---------------------------------------------------------------------- sites
def is_residual_block(module: nn.Module) -> bool:
    """The generic residual-block test used by `find_sites` (see module docstring)."""
    if type(module).__module__.startswith(_layers.__name__):
        return False
    name = type(module).__name__
    return name.endswith(("Block", "Bottleneck")) or hasattr(module, "downsample") or hasattr(module, "shortcut")


def _named_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """named_modules() without the regularizers this module inserted."""
    for name, m in model.named_modules():
        parts = name.split(".")
        if REG_ATTR not in parts and QKV_ATTR not in parts:
            yield name, m


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def transformer_site_blocks(model: nn.Module) -> dict[str, str]:
    """Transformer site -> the module that declares it (its Transformer layer, or the model
    for an embedding), in module order (see the module docstring)."""
    named = list(_named_modules(model))
    has_torch_layers = any(isinstance(m, _TORCH_LAYERS) for _, m in named)
    declared: dict[str, str] = {}
    for name, m in named:
        for rel in getattr(m, "regularization_sites", ()):
            declared[_join(name, rel)] = name
    sites: dict[str, str] = {}
    for name, m in named:
        if isinstance(m, _TORCH_LAYERS):
            rels = _TORCH_DECODER_SITES if isinstance(m, nn.TransformerDecoderLayer) else _TORCH_LAYER_SITES
            sites.update((_join(name, rel), name) for rel in rels)
        elif name in declared:
            sites[name] = declared[name]
        elif has_torch_layers and isinstance(m, nn.Embedding):
            sites[name] = ""
    return sites


def transformer_sites(model: nn.Module) -> list[str]:
    """The Transformer sites of `model` in module order (see the module docstring)."""
    return list(transformer_site_blocks(model))


def find_sites(model: nn.Module) -> list[str]:
    """BatchNorm2d (and SyncBatchNorm) outputs and residual-block outputs, in module order,
    then the Transformer sites (`transformer_sites`). BatchNorm1d is left out: its (N, F)
    output only suits plain dropout."""
    conv = [name for name, m in _named_modules(model) if name and (isinstance(m, _SITE_NORMS) or is_residual_block(m))]
    return conv + [s for s in transformer_sites(model) if s not in conv]


def default_methods(model: nn.Module, sites: Iterable[str]) -> tuple[str, ...]:
    """SEQUENCE_METHODS when every site is a Transformer site, else CONV_METHODS."""
    seq = set(transformer_sites(model))
    sites = list(sites)
    return SEQUENCE_METHODS if sites and all(s in seq or _is_virtual(s) for s in sites) else CONV_METHODS


def _is_virtual(site: str) -> bool:
    return ":" in site and site.rsplit(":", 1)[1] in _QKV


def _virtual_sites(named: Iterable[tuple[str, nn.Module]]) -> set[str]:
    return {f"{name}:{x}" for name, m in named if isinstance(m, nn.MultiheadAttention) for x in _QKV}


def check_sites(model: nn.Module, sites: Iterable[str]) -> None:
    """PlanError naming the first site that is not a module of `model` (nor a virtual
    ``<attention>:q|k|v`` site of one of its ``nn.MultiheadAttention``s)."""
    named = list(_named_modules(model))
    names = {name for name, _ in named if name} | _virtual_sites(named)
    for site in sites:
        if site not in names:
            hint = find_sites(model)
            raise user_error(
                f"sites[{site!r}]",
                detail=f"unknown site, no such module in {type(model).__name__}",
                allowed=f"module paths, e.g. {hint[:8]}{'...' if len(hint) > 8 else ''}",
                cls=PlanError,
            )


# ---------------------------------------------------------------------- holders and hook
def _holder(module: nn.Module) -> nn.ModuleList | None:
    holder = module._modules.get(REG_ATTR)
    return module.__dict__.get(REG_ATTR) if holder is None else holder  # type: ignore[return-value]


def _run_regularizers(module: nn.Module, args: Any, output: Any) -> Any:
    """Forward hook: pass the site output through its regularizers (training mode only). An
    LSTM/GRU/RNN or MultiheadAttention returns a tuple: its first tensor (the output
    sequence, the attention output) is the site's output; the state or weights pass as they are."""
    holder = _holder(module)
    if holder is None:
        return None
    if REG_ATTR in module.__dict__ and holder.training != module.training:
        holder.train(module.training)  # hidden holder: follow the site's mode
    if not module.training:
        return None
    first = isinstance(output, tuple) and output and isinstance(module, _FIRST_OF_TUPLE)
    value = output[0] if first else output
    if not isinstance(value, torch.Tensor):
        return None
    for reg in holder:
        conv = reg.__dict__.get(_BEHIND)
        if conv is not None:
            unwrap_regularizer(reg).weight_behind = conv.weight.detach()
        value = reg(value)
    return (value, *output[1:]) if first else value


def _attach(module: nn.Module, reg: nn.Module, switch_class: bool = False) -> None:
    """Add ``reg`` to the site's regularizers. ``switch_class``: run them from the site's
    own forward (its class switched, `regularized_class`) instead of a forward hook."""
    holder = _holder(module)
    if holder is None:
        holder = nn.ModuleList()
        if isinstance(module, _CONTAINERS):
            module.__dict__[REG_ATTR] = holder
        else:
            module.add_module(REG_ATTR, holder)
        if switch_class and not isinstance(module, _CONTAINERS):
            module.__class__ = regularized_class(type(module))
        else:
            module.register_forward_hook(_run_regularizers)
    holder.append(reg)


class RegularizedDropout(nn.Dropout):
    """``nn.Dropout`` that passes its output through the site's regularizers (training only).

    Sites inside torch's Transformer layers switch to such a class instead of taking a
    forward hook: ``nn.TransformerEncoderLayer`` leaves its fused fast path whenever any of
    its modules has a hook, and the unfused path differs from it by ~1e-6 in eval. With a
    class switch, eval is the plain model exactly. `remove_plan` switches the class back.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        out = super().forward(input)
        regularized = _run_regularizers(self, (input,), out)
        return out if regularized is None else regularized


RegularizedDropout._plan_base = nn.Dropout  # type: ignore[attr-defined]
_REGULARIZED: dict[type, type] = {nn.Dropout: RegularizedDropout}


def regularized_class(cls: type) -> type:
    """The subclass of ``cls`` whose forward runs the site's regularizers after its own
    (`RegularizedDropout` for ``nn.Dropout``, made once per class otherwise)."""
    if getattr(cls, "_plan_base", None) is not None:
        return cls
    if cls not in _REGULARIZED:

        def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
            out = cls.forward(self, *args, **kwargs)
            regularized = _run_regularizers(self, args, out)
            return out if regularized is None else regularized

        _REGULARIZED[cls] = type(f"Regularized{cls.__name__}", (cls,), {"forward": forward, "__module__": __name__})
    new = _REGULARIZED[cls]
    new._plan_base = cls  # type: ignore[attr-defined]
    return new


def _holders(model: nn.Module) -> Iterator[nn.Module]:
    for _, m in _named_modules(model):
        holder = _holder(m)
        if holder is not None:
            yield holder
        qkv = m._modules.get(QKV_ATTR)
        if qkv is not None:
            yield qkv.values()  # type: ignore[misc]


# ---------------------------------------------------------------------- public API
def regularizers(model: nn.Module) -> dict[str, nn.Module]:
    """Site -> inserted module (a LinearScheduler when ramped). The extra pattern applied
    to the enclosing block's output for ``residual=True`` is keyed "<site>:residual"."""
    return {reg.plan_site: reg for holder in _holders(model) for reg in holder}


def step_schedulers(model: nn.Module) -> None:
    """Advance every ramp by one step; call once per training iteration."""
    cached = model.__dict__.get(_SCHEDULERS)
    for scheduler in _find_schedulers(model) if cached is None else cached:
        scheduler.step()


def _find_schedulers(model: nn.Module) -> list[nn.Module]:
    found = []
    for m in model.modules():
        hidden = m.__dict__.get(REG_ATTR)
        for sub in [m] if hidden is None else [m, *hidden.modules()]:
            if isinstance(sub, _layers.LinearScheduler):
                found.append(sub)
    return found


def remove_plan(model: nn.Module) -> nn.Module:
    """Remove everything `apply_plan` inserted (hooks and regularizers)."""
    for _, m in list(_named_modules(model)):
        for key, hook in list(m._forward_hooks.items()):
            if hook is _run_regularizers:
                del m._forward_hooks[key]
        m._modules.pop(REG_ATTR, None)
        m.__dict__.pop(REG_ATTR, None)
        base = type(m).__dict__.get("_plan_base")
        if base is not None:
            m.__class__ = base
        if m._modules.pop(QKV_ATTR, None) is not None and type(m) is RegularizedMultiheadAttention:
            m.__class__ = nn.MultiheadAttention
    model.__dict__.pop(_SCHEDULERS, None)
    return model


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
        if _is_virtual(path):
            attention, part = path.rsplit(":", 1)
            _attach_qkv(modules[attention], part, reg)  # type: ignore[arg-type]
        else:
            _attach(modules[path], reg, switch_class=_torch_layer_of(modules, path) is not None)
    # step_schedulers runs every iteration: keep the list instead of walking the model
    # (a plain attribute, so deepcopy/pickle carry it along with the copied modules).
    model.__dict__[_SCHEDULERS] = _find_schedulers(model)
    log.debug("applied plan to %d sites: %s", len(plan.sites), plan.summary())
    return model


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


def insert_layers(model: nn.Module, layers: dict[str, nn.Module]) -> nn.Module:
    """Insert ready-made layers (site -> layer) in place exactly as `apply_plan` inserts a
    plan's (replacing any earlier plan): `regularizers` lists them and `remove_plan` removes
    them. For layers no Plan describes, such as `search_space.learned`'s ConcreteDropout."""
    check_sites(model, layers)
    modules = dict(_named_modules(model))
    remove_plan(model)
    for site, layer in layers.items():
        layer.plan_site = site
        if _is_virtual(site):
            attention, part = site.rsplit(":", 1)
            _attach_qkv(modules[attention], part, layer)  # type: ignore[arg-type]
        else:
            _attach(modules[site], layer, switch_class=_torch_layer_of(modules, site) is not None)
    model.__dict__[_SCHEDULERS] = _find_schedulers(model)
    return model


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


def _channels_first(module: nn.Module) -> bool:
    """Whether a module's output is channels first whatever the model (ConvNd, BatchNorm,
    a residual block of a CNN): no layout to state for it."""
    return isinstance(module, (_ConvNd, _BatchNorm)) or is_residual_block(module)


def _batch_first(modules: dict[str, nn.Module], site: str) -> bool:
    """False for sites inside a ``batch_first=False`` nn.TransformerEncoderLayer or
    DecoderLayer ((T, N, C) states), the model itself (the root) included."""
    layer = _torch_layer_of(modules, site)
    return True if layer is None else bool(layer.self_attn.batch_first)


def _torch_layer_of(modules: dict[str, nn.Module], site: str) -> nn.Module | None:
    """The nearest torch Transformer layer enclosing ``site`` (the site itself or the root included)."""
    parts = site.rsplit(":", 1)[0].split(".")
    for i in range(len(parts), -1, -1):
        m = modules.get(".".join(parts[:i]))
        if isinstance(m, _TORCH_LAYERS):
            return m
    return None


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


def _enclosing_block(modules: dict[str, nn.Module], site: str) -> str | None:
    parts = site.split(".")
    for i in range(len(parts) - 1, 0, -1):
        path = ".".join(parts[:i])
        if is_residual_block(modules[path]):
            return path
    return None


def site_channels(module: nn.Module) -> int | None:
    """Channels of a site's output: BN features, conv outputs, or for a block the output
    channels of its last convolution (module order)."""
    if isinstance(module, _BatchNorm):
        return module.num_features
    if isinstance(module, _ConvNd):
        return module.out_channels
    convs = [m for m in module.modules() if isinstance(m, _ConvNd)]
    return convs[-1].out_channels if convs else None


def _next_conv(named: list[tuple[str, nn.Module]], site: str) -> _ConvNd | None:
    index = next(i for i, (name, _) in enumerate(named) if name == site)
    channels = site_channels(named[index][1])
    for name, m in named[index + 1 :]:
        # A grouped/depthwise conv's weight is (C_out, C_in/groups, ...), not one row per input
        # channel: skip it (e.g. MobileNet) and take the next dense conv on these channels.
        if not name.startswith(site + ".") and isinstance(m, _ConvNd) and m.in_channels == channels and m.groups == 1:
            return m
    return None
