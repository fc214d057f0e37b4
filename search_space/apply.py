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

Pattern ``residual=True``: the same pattern (a second, independent instance) is also
applied to the output of the nearest enclosing residual block of the site, i.e. to the
residual stream after the skip connection is added. It has no effect for a site that is not
inside a residual block.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Iterator

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from search_space import layers as _layers
from search_space.plan import Plan, PlanError, SiteSpec
from search_space.vocab import APPLY_ONLY_PARAMS, METHOD_LAYERS

log = logging.getLogger(__name__)

REG_ATTR = "plan_regularizers"
_BEHIND = "_plan_behind_conv"
_RESIDUAL_SUFFIX = ":residual"
_SCHEDULERS = "_plan_schedulers"
_SITE_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)  # 4-D outputs, which every method accepts
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


# ---------------------------------------------------------------------- sites
def is_residual_block(module: nn.Module) -> bool:
    """The generic residual-block test used by `find_sites` (see module docstring)."""
    if type(module).__module__.startswith(_layers.__name__):
        return False
    name = type(module).__name__
    return (name.endswith(("Block", "Bottleneck")) or hasattr(module, "downsample")
            or hasattr(module, "shortcut"))


def _named_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """named_modules() without the regularizers this module inserted."""
    for name, m in model.named_modules():
        if REG_ATTR not in name.split("."):
            yield name, m


def find_sites(model: nn.Module) -> list[str]:
    """BatchNorm2d (and SyncBatchNorm) outputs and residual-block outputs, in module order.
    BatchNorm1d is left out: its (N, F) output only suits plain dropout."""
    return [name for name, m in _named_modules(model)
            if name and (isinstance(m, _SITE_NORMS) or is_residual_block(m))]


def check_sites(model: nn.Module, sites: Iterable[str]) -> None:
    """PlanError naming the first site that is not a module of `model`."""
    names = {name for name, _ in _named_modules(model) if name}
    for site in sites:
        if site not in names:
            hint = find_sites(model)
            raise PlanError(f"sites[{site!r}]: unknown site, no such module in "
                            f"{type(model).__name__}; allowed: module paths, e.g. "
                            f"{hint[:8]}{'...' if len(hint) > 8 else ''}")


# ---------------------------------------------------------------------- holders and hook
def _holder(module: nn.Module) -> nn.ModuleList | None:
    holder = module._modules.get(REG_ATTR)
    return module.__dict__.get(REG_ATTR) if holder is None else holder  # type: ignore[return-value]


def _run_regularizers(module: nn.Module, args: Any, output: Any) -> Any:
    """Forward hook: pass the site output through its regularizers (training mode only)."""
    holder = _holder(module)
    if holder is None:
        return None
    if REG_ATTR in module.__dict__ and holder.training != module.training:
        holder.train(module.training)  # hidden holder: follow the site's mode
    if not module.training or not isinstance(output, torch.Tensor):
        return None
    for reg in holder:
        conv = reg.__dict__.get(_BEHIND)
        if conv is not None:
            unwrap_regularizer(reg).weight_behind = conv.weight.detach()
        output = reg(output)
    return output


def _attach(module: nn.Module, reg: nn.Module) -> None:
    holder = _holder(module)
    if holder is None:
        holder = nn.ModuleList()
        if isinstance(module, _CONTAINERS):
            module.__dict__[REG_ATTR] = holder
        else:
            module.add_module(REG_ATTR, holder)
        module.register_forward_hook(_run_regularizers)
    holder.append(reg)


def _holders(model: nn.Module) -> Iterator[nn.ModuleList]:
    for _, m in _named_modules(model):
        holder = _holder(m)
        if holder is not None:
            yield holder


def unwrap_regularizer(reg: nn.Module) -> nn.Module:
    """The regularizer layer itself, unwrapped from its LinearScheduler when ramped."""
    return reg.layer if isinstance(reg, _layers.LinearScheduler) else reg


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
    model.__dict__.pop(_SCHEDULERS, None)
    return model


def _build(site: str, spec: SiteSpec) -> nn.Module:
    try:
        return build_layer(spec)
    except ValueError as e:
        raise PlanError(f"sites[{site!r}]: {e}") from None


def build_layer(spec: SiteSpec) -> nn.Module:
    """The layer for one SiteSpec (parameters named as the layer's arguments)."""
    layer_name = METHOD_LAYERS[spec.method]
    if layer_name is None:
        raise PlanError(f"method {spec.method!r} has no layer")
    kwargs = {k: v for k, v in spec.params.items() if k not in APPLY_ONLY_PARAMS}
    return getattr(_layers, layer_name)(**kwargs)


def apply_plan(model: nn.Module, plan: Plan, total_steps: int | None = None) -> nn.Module:
    """Insert `plan`'s regularizers into `model` in place (replacing any earlier plan).

    With plan.ramp_fraction > 0 and total_steps given, every probability ramps linearly
    from 0 to its target over int(ramp_fraction * total_steps) calls of `step_schedulers`.
    """
    if not isinstance(plan, Plan):
        raise PlanError(f"plan: bad value of type {type(plan).__name__}; allowed: a Plan")
    if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int)
                                    or total_steps < 0):
        raise ValueError(f"total_steps: bad value {total_steps!r}; allowed: None or an int >= 0")
    check_sites(model, plan.sites)
    named = list(_named_modules(model))
    modules = dict(named)
    nr_steps = None
    if plan.ramp_fraction > 0:
        if total_steps is None:
            log.warning("plan.ramp_fraction=%s ignored: apply_plan got no total_steps",
                        plan.ramp_fraction)
        else:
            nr_steps = max(1, int(plan.ramp_fraction * total_steps))
    # Build everything first, so a failure leaves the model (and any earlier plan) untouched.
    own: list[tuple[str, nn.Module]] = []
    residual: list[tuple[str, nn.Module]] = []
    for site, spec in plan.sites.items():
        if spec.method == "none":
            continue
        layer = _build(site, spec)
        if spec.method == "disout":
            conv = _next_conv(named, site)
            if conv is None:
                log.info("site %s: no following convolution; Disout uses its constant weight",
                         site)
            else:
                object.__setattr__(layer, _BEHIND, conv)
        own.append((site, _ramped(layer, nr_steps, site)))
        if spec.params.get("residual"):
            block = _enclosing_block(modules, site)
            if block is None:
                log.info("site %s: residual=True but no enclosing residual block", site)
            else:
                residual.append((block, _ramped(_build(site, spec), nr_steps,
                                                site + _RESIDUAL_SUFFIX)))
    remove_plan(model)
    for path, reg in own + residual:  # a block's own regularizer runs before residual ones
        _attach(modules[path], reg)
    # step_schedulers runs every iteration: keep the list instead of walking the model
    # (a plain attribute, so deepcopy/pickle carry it along with the copied modules).
    model.__dict__[_SCHEDULERS] = _find_schedulers(model)
    log.info("applied plan to %d sites: %s", len(plan.sites), plan.summary())
    return model


def _ramped(layer: nn.Module, nr_steps: int | None, key: str) -> nn.Module:
    reg = layer
    if nr_steps is not None:
        attr = type(layer).prob_attr
        reg = _layers.LinearScheduler(layer, start_value=0.0, stop_value=getattr(layer, attr),
                                      nr_steps=nr_steps)
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
    for name, m in named[index + 1:]:
        # A grouped/depthwise conv's weight is (C_out, C_in/groups, ...), not one row per input
        # channel: skip it (e.g. MobileNet) and take the next dense conv on these channels.
        if (not name.startswith(site + ".") and isinstance(m, _ConvNd)
                and m.in_channels == channels and m.groups == 1):
            return m
    return None
