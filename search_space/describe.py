"""Sites from shapes: what a model offers for regularization, seen on one example input.

Site finding by module type alone (`search_space.apply.find_sites`) cannot tell a (N, C, H, W)
map from (N, T, C) tokens, nor find anything in an MLP. Here one forward pass on an example
input records the output shape of every candidate module, and each site is offered only the
methods that run on its shape:

- (N, C, H, W) maps: none, dropout, spatial_dropout, and the 2-D block methods (dropblock,
  disout, pattern) when the map is at least `MIN_BLOCK_MAP` on each side;
- (N, T, C) tokens (or (T, N, C) inside a ``batch_first=False`` Transformer layer): none,
  dropout, seq_pattern;
- (N, C) features: none, dropout (element dropout is feature dropout there).

Stages (`share="stage"`) are runs of sites, in forward order, with the same map resolution
(or token length, or feature width), which is what a user means by a stage for any model:
resnet18's five, mobilenet_v3_small's five, an MLP's hidden widths. Sites inside one
Transformer layer form one stage each (`block_of`).

`describe` shows all of this as a table before a search; `check_plans` runs sampled plans
forward and backward on the example input, so a plan that cannot train is refused before
Ray starts.
"""

from __future__ import annotations

import copy
import logging
import re
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn as nn

from search_space.apply import (
    _batch_first,
    _is_virtual,
    _named_modules,
    apply_plan,
    find_sites,
    transformer_site_blocks,
    transformer_sites,
)
from search_space.errors import UserTypeError, user_error
from search_space.plan import Plan, SiteSpec
from search_space.vocab import METHODS, VOCAB

if TYPE_CHECKING:
    import pandas as pd

    from search_space.space import SearchSpace

__all__ = [
    "MIN_BLOCK_MAP",
    "SiteInfo",
    "BLOCK_METHODS",
    "candidate_sites",
    "check_plans",
    "describe",
    "methods_for_shape",
    "most_common",
    "probe_sites",
]

log = logging.getLogger(__name__)

#: Methods that drop 2-D blocks of a feature map.
BLOCK_METHODS = ("dropblock", "disout", "pattern")
#: A map smaller than this on either side has no block to drop (a 1x1 map after global pooling).
MIN_BLOCK_MAP = 2
_BLOCK_NAMES = re.compile(r"(Attention|Mlp|MLP|FeedForward)$")


@dataclass(frozen=True)
class SiteInfo:
    """One candidate site seen on the example input."""

    path: str
    module_type: str
    shape: tuple[int, ...]  # the output shape as the module returned it
    layout: str  # "N,C,H,W", "N,T,C", "T,N,C", "N,C", or "other"
    methods: tuple[str, ...]  # allowed methods, in table order ("none" first); empty: not a site
    stage: str = ""


def methods_for_shape(shape: Sequence[int]) -> tuple[str, ...]:
    """The methods that run on an output of this shape (see the module docstring)."""
    rank = len(shape)
    if rank == 4:
        fits = {"none", "dropout", "spatial_dropout"}
        if min(shape[2:]) >= MIN_BLOCK_MAP:
            fits |= set(BLOCK_METHODS)
    elif rank == 3:
        fits = {"none", "dropout", "seq_pattern"}
    elif rank == 2:
        fits = {"none", "dropout"}
    else:
        return ()
    return tuple(m for m in METHODS if m in fits)


def _layout(shape: tuple[int, ...], batch_first: bool) -> str:
    return {4: "N,C,H,W", 3: "N,T,C" if batch_first else "T,N,C", 2: "N,C"}.get(len(shape), "other")


def candidate_sites(model: nn.Module) -> list[str]:
    """The sites a search offers by default (before shapes are known), in module order.

    The Transformer sites when the model has Transformer layers (`transformer_sites`); else
    `find_sites` (BatchNorm2d and residual-block outputs) plus attention and MLP blocks
    (class names ending in Attention, Mlp, MLP, FeedForward); for a model with none of these
    (an MLP), its BatchNorm1d and LayerNorm outputs, else its Linear layers but the last
    (the logits)."""
    seq = transformer_sites(model)
    if seq:
        return seq
    named = [(n, m) for n, m in _named_modules(model) if n]
    sites = find_sites(model)
    sites += [n for n, m in named if n not in sites and _BLOCK_NAMES.search(type(m).__name__)]
    if sites:
        order = {n: i for i, (n, _) in enumerate(named)}
        return sorted(sites, key=lambda s: order.get(s, len(order)))
    norms = [n for n, m in named if isinstance(m, (nn.BatchNorm1d, nn.LayerNorm))]
    if norms:
        return norms
    return [n for n, m in named if isinstance(m, nn.Linear)][:-1]


def _example_batch(example_input: Any) -> Any:
    """A batch of at least 2 (BatchNorm in training refuses one sample per channel)."""
    if isinstance(example_input, torch.Tensor) and example_input.dim() >= 1 and example_input.shape[0] == 1:
        return torch.cat([example_input, example_input])
    return example_input


def _forward(model: nn.Module, x: Any) -> Any:
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


def probe_sites(model: nn.Module, example_input: Any, sites: Sequence[str] | None = None) -> list[SiteInfo]:
    """Record the output shape of each site (default `candidate_sites`) in one eval-mode
    forward pass on ``example_input`` (a tensor, a tuple of positional inputs, or a dict of
    keyword inputs). Sites come back in forward order; a site whose output is not a tensor
    (e.g. an ``nn.MultiheadAttention``'s tuple) or never runs gets no methods."""
    paths = list(candidate_sites(model) if sites is None else sites)
    modules = dict(_named_modules(model))
    order: list[str] = []
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []

    def record(site: str, shape: tuple[int, ...]) -> None:
        if site not in shapes:
            shapes[site] = shape
            order.append(site)

    for site in paths:
        if _is_virtual(site):
            mha = modules[site.rsplit(":", 1)[0]]

            def qkv_hook(m: nn.Module, args: tuple, kwargs: dict, _out: Any, site: str = site) -> None:
                q = args[0] if args else kwargs["query"]
                record(site, tuple(q.shape) if m.batch_first else (q.shape[1], q.shape[0], *q.shape[2:]))

            handles.append(mha.register_forward_hook(qkv_hook, with_kwargs=True))
            continue
        if site not in modules:
            raise user_error("sites", site, "module paths of the model", detail=f"bad value {site!r} (no such module)")

        def hook(_m: nn.Module, _i: Any, out: Any, site: str = site) -> None:
            record(site, tuple(out.shape) if isinstance(out, torch.Tensor) else ())

        handles.append(modules[site].register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _forward(model, _example_batch(example_input))
    except Exception as exc:  # noqa: BLE001 - the user's model or input: say which
        raise user_error(
            "example_input",
            detail=f"the model's forward pass failed on it ({type(exc).__name__}: {_first_line(exc)})",
            allowed="one input batch the model accepts",
        ) from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    owners = transformer_site_blocks(model)
    infos = []
    for site in order + [s for s in paths if s not in shapes]:
        shape = shapes.get(site, ())
        batch_first = True if _is_virtual(site) else _batch_first(modules, site)
        layout = _layout(shape, batch_first) if shape else "other"
        module = modules.get(site.rsplit(":", 1)[0] if _is_virtual(site) else site)
        kind = type(module).__name__ + (f":{site.rsplit(':', 1)[1]}" if _is_virtual(site) else "")
        infos.append(SiteInfo(site, kind, shape, layout, methods_for_shape(shape)))
    return _with_stages(infos, owners)


def _with_stages(infos: list[SiteInfo], owners: dict[str, str]) -> list[SiteInfo]:
    """Consecutive sites with the same resolution (map H, W; token length; feature width)
    share a stage; sites inside one Transformer layer share their layer's stage."""
    out: list[SiteInfo] = []
    last: Any = object()
    n = 0
    for info in infos:
        owner = owners.get(info.path, "")
        if not info.methods:
            key: Any = None
        elif owner and owner != info.path:
            key = ("layer", owner)
        elif len(info.shape) == 4:
            key = ("map", info.shape[2:])
        elif len(info.shape) == 3:
            key = ("tokens", info.shape[1] if info.layout == "N,T,C" else info.shape[0])
        else:
            key = ("features", info.shape[-1])
        if key is None:
            out.append(info)
            continue
        if key != last:
            n += 1
            last = key
        out.append(SiteInfo(info.path, info.module_type, info.shape, info.layout, info.methods, f"stage{n}"))
    return out


def describe(
    model: nn.Module, example_input: Any, sites: Sequence[str] | None = None, methods: Sequence[str] | None = None
) -> "pd.DataFrame":
    """One row per candidate site, in forward order: ``site`` (module path), ``module``
    (its type), ``shape`` (output shape on ``example_input``), ``layout``, ``stage`` (the
    group of ``share="stage"``) and ``methods`` (allowed there, restricted to ``methods``
    when given). A row with no methods is not a site (its output is not a feature tensor)."""
    import pandas as pd

    if not isinstance(model, nn.Module):
        raise user_error("model", detail=f"expected an nn.Module, got {type(model).__name__}", cls=UserTypeError)
    rows = []
    for info in probe_sites(model, example_input, sites):
        allowed = [m for m in info.methods if methods is None or m in methods]
        rows.append(
            {
                "site": info.path,
                "module": info.module_type,
                "shape": _shown(info) if info.shape else "-",
                "layout": info.layout,
                "stage": info.stage or "-",
                "methods": ", ".join(allowed) if allowed else "-",
            }
        )
    return pd.DataFrame(rows, columns=["site", "module", "shape", "layout", "stage", "methods"])


def _shown(info: SiteInfo) -> str:
    """The shape with its batch axis as N (the probe may have doubled a batch of one)."""
    axes = info.layout.split(",") if info.layout != "other" else []
    dims = ["N" if i < len(axes) and axes[i] == "N" else str(d) for i, d in enumerate(info.shape)]
    return f"({', '.join(dims)})"


# ------------------------------------------------------------------ plan checks
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


def _demanding(method: str) -> SiteSpec:
    """The method with its largest searched values (biggest blocks, highest rates), the
    settings most likely to fail on a small map."""
    params: dict[str, Any] = {}
    for p, choices in VOCAB[method].items():
        params[p] = 0.0 if p == "ramp" else max(choices)
    return SiteSpec(method, params)


def _train_step(model: nn.Module, plan: Plan, x: Any) -> None:
    net = copy.deepcopy(model)
    apply_plan(net, plan, total_steps=10)  # ramps run as in training
    net.train()
    out = _forward(net, x)
    tensors = [out] if isinstance(out, torch.Tensor) else [t for t in _flatten(out) if isinstance(t, torch.Tensor)]
    loss = sum(t.float().sum() for t in tensors if t.is_floating_point())
    if isinstance(loss, torch.Tensor) and loss.requires_grad:
        loss.backward()


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [v for item in value for v in _flatten(item)]
    return [value]


def check_plans(model: nn.Module, space: "SearchSpace", example_input: Any, samples: int = 2, seed: int = 0) -> None:
    """FieldError naming the site, the method and the shape when a plan of ``space`` fails
    forward and backward on ``example_input`` in training mode. Tries, per method, every
    site allowing it at its most demanding searched values, then ``samples`` random plans.
    The model itself is not changed (each try runs on a copy)."""
    x = _example_batch(example_input)
    shapes = {i.path: i.shape for i in probe_sites(model, example_input, space.sites)}
    tries: list[tuple[str, Plan]] = []
    for method in space.methods:
        if method == "none":
            continue
        chosen = {s: _demanding(method) if method in space.methods_of(s) else SiteSpec("none", {}) for s in space.sites}
        tries.append((method, Plan(chosen, model=space.model)))
    tries += [("sampled", space.random_plan(seed + i)) for i in range(samples)]
    for label, plan in tries:
        try:
            _train_step(model, plan, x)
        except Exception as exc:  # noqa: BLE001 - find the site that fails and name it
            site = _failing_site(model, plan, x) or next(iter(plan.sites))
            spec = plan.sites[site]
            raise user_error(
                "sites",
                site,
                "sites and methods that train on the example input (see --describe / search_space.describe)",
                detail=(
                    f"method {spec.method!r} at {site!r} (output shape {tuple(shapes.get(site, ()))}) fails in a "
                    f"training forward/backward ({label} plan): {type(exc).__name__}: {_first_line(exc)}"
                ),
            ) from None
    log.info("checked %d plans on the example input: all train", len(tries))


def _failing_site(model: nn.Module, plan: Plan, x: Any) -> str | None:
    none = SiteSpec("none", {})
    for site, spec in plan.sites.items():
        if spec.method == "none":
            continue
        try:
            _train_step(model, Plan({s: spec if s == site else none for s in plan.sites}), x)
        except Exception:  # noqa: BLE001
            return site
    return None


def most_common(errors: Sequence[str]) -> tuple[str, int]:
    """The most frequent non-empty error text and its count ("", 0 when none)."""
    counts = Counter(e for e in errors if e)
    return counts.most_common(1)[0] if counts else ("", 0)
