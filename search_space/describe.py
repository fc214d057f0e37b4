"""The preview and the pre-flight check of a search on one example input.

`describe` shows what `search_space.probe` finds (each site's output shape, layout, stage,
allowed methods and a note where methods are left out) as a table before any compute, like
torchinfo's summary; `check_plans` runs sampled plans forward and backward on the example
input, so a plan that cannot train is refused before Ray starts.

Offered per layout (`search_space.layouts.methods_for`):

- maps, N,C,H,W or N,H,W,C: none, dropout, spatial_dropout, and the 2-D block methods
  (dropblock, disout, pattern) when the map is at least `MIN_BLOCK_MAP` on each side;
- 1-D maps N,C,L: none, dropout, spatial_dropout, dropblock and seq_pattern along L;
- volumes N,C,D,H,W (or N,D,H,W,C): none, dropout, spatial_dropout, dropblock;
- tokens N,T,C or T,N,C: none, dropout, seq_pattern;
- features N,C, and any site whose layout the evidence does not show: none, dropout.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn as nn

from search_space.apply import apply_plan
from search_space.errors import UserTypeError, user_error
from search_space.insertion import _named_modules
from search_space.layouts import MIN_BLOCK_MAP, get_layout, methods_for
from search_space.plan import Plan, SiteSpec
from search_space.probe import BLOCK_NAMES, SiteInfo, call_model, example_batch, first_line, probe_sites
from search_space.sites import find_sites, transformer_sites
from search_space.space import SearchSpace
from search_space.vocab import VOCAB

if TYPE_CHECKING:
    import pandas as pd

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
#: The columns of `describe`.
COLUMNS = ["site", "module", "shape", "layout", "stage", "methods", "note"]


def methods_for_shape(shape: Sequence[int], layout: str | None = None) -> tuple[str, ...]:
    """The methods that run on an output of ``shape`` in ``layout`` (default: channels first,
    N,C,H,W for rank 4, N,C,D,H,W for rank 5, N,T,C for rank 3, N,C for rank 2; a site's
    true layout comes from `probe_sites`)."""
    if layout is None:
        layout = {2: "NC", 3: "NTC", 4: "NCHW", 5: "NCDHW"}.get(len(shape))
        if layout is None:
            return ()
    return methods_for(layout, shape)[0]


def candidate_sites(model: nn.Module, example_input: Any = None) -> list[str]:
    """The sites a search offers by default, in forward order.

    With ``example_input``: the sites `probe_sites` finds that take some method. Without
    (module types only, before shapes are known): the Transformer sites when the model has
    Transformer layers (`transformer_sites`); else `find_sites` (BatchNorm2d and residual-block
    outputs) plus attention and MLP blocks; for a model with none of these (an MLP), its
    BatchNorm1d and LayerNorm outputs, else its Linear layers but the last."""
    if example_input is not None:
        return [i.path for i in probe_sites(model, example_input) if i.methods]
    seq = transformer_sites(model)
    if seq:
        return seq
    named = [(n, m) for n, m in _named_modules(model) if n]
    sites = find_sites(model)
    sites += [n for n, m in named if n not in sites and BLOCK_NAMES.search(type(m).__name__)]
    if sites:
        order = {n: i for i, (n, _) in enumerate(named)}
        return sorted(sites, key=lambda s: order.get(s, len(order)))
    norms = [n for n, m in named if isinstance(m, (nn.BatchNorm1d, nn.LayerNorm))]
    if norms:
        return norms
    return [n for n, m in named if isinstance(m, nn.Linear)][:-1]


def describe(
    model: nn.Module,
    example_input: Any,
    sites: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    layouts: Mapping[str, str] | None = None,
) -> "pd.DataFrame":
    """One row per site, in forward order: ``site`` (module path), ``module`` (its type),
    ``shape`` (output shape on ``example_input``, batch as N), ``layout`` (its axes, e.g.
    N,H,W,C), ``stage`` (the group of ``share="stage"``), ``methods`` (allowed there,
    restricted to ``methods`` when given) and ``note`` (why methods are left out: a small map,
    a layout the evidence does not show, a tensor that is another site's). A row with no
    methods is not a site. ``example_input``: a tensor, a tuple of positional arguments or a
    dict of keyword arguments; ``layouts`` states layouts (site path or pattern -> name)."""
    import pandas as pd

    if not isinstance(model, nn.Module):
        raise user_error("model", detail=f"expected an nn.Module, got {type(model).__name__}", cls=UserTypeError)
    rows = []
    for info in probe_sites(model, example_input, sites, layouts):
        allowed = [m for m in info.methods if methods is None or m in methods]
        rows.append(
            {
                "site": info.path,
                "module": info.module_type,
                "shape": _shown(info) if info.shape else "-",
                "layout": info.axes,
                "stage": info.stage or "-",
                "methods": ", ".join(allowed) if allowed else "-",
                "note": info.note,
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def _shown(info: SiteInfo) -> str:
    """The shape with its batch axis as N (the probe may have doubled a batch of one)."""
    batch = get_layout(info.layout).batch
    dims = ["N" if i == batch else str(d) for i, d in enumerate(info.shape)]
    return f"({', '.join(dims)})"


# ------------------------------------------------------------------ plan checks
def _demanding(method: str) -> SiteSpec:
    """The method with its largest searched values (biggest blocks, highest rates), the
    settings most likely to fail on a small map."""
    params: dict[str, Any] = {}
    for p, choices in VOCAB[method].items():
        params[p] = 0.0 if p == "ramp" else max(choices)
    return SiteSpec(method, params)


def _train_step(model: nn.Module, plan: Plan, x: Any) -> None:
    net = copy.deepcopy(model)
    apply_plan(net, plan, total_steps=10)  # ramps run as in training (logged at DEBUG, not as a real plan)
    net.train()
    out = call_model(net, x)
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


def check_plans(model: nn.Module, space: SearchSpace, example_input: Any, samples: int = 2, seed: int = 0) -> None:
    """FieldError naming the site, the method and the shape when a plan of ``space`` fails
    forward and backward on ``example_input`` in training mode. Tries, per method, every
    site allowing it at its most demanding searched values, then ``samples`` random plans.
    The model itself is not changed (each try runs on a copy)."""
    x = example_batch(example_input)
    shapes = {i.path: i.shape for i in probe_sites(model, example_input, space.sites, space.layouts or None)}
    tries: list[tuple[str, Plan]] = []
    for method in space.methods:
        if method == "none":
            continue
        chosen = {s: _demanding(method) if method in space.methods_of(s) else SiteSpec("none", {}) for s in space.sites}
        tries.append((method, space.with_layouts(Plan(chosen, model=space.model))))
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
                    f"training forward/backward ({label} plan): {type(exc).__name__}: {first_line(exc)}"
                ),
            ) from None
    log.info(
        "pre-flight: checked %d plans on the example input (each method at its largest searched values, %d sampled): "
        "all ran forward and backward",
        len(tries),
        samples,
    )


def _failing_site(model: nn.Module, plan: Plan, x: Any) -> str | None:
    none = SiteSpec("none", {})
    for site, spec in plan.sites.items():
        if spec.method == "none":
            continue
        try:
            _train_step(model, Plan({s: spec if s == site else none for s in plan.sites}, layouts=plan.layouts), x)
        except Exception:  # noqa: BLE001
            return site
    return None


def most_common(errors: Sequence[str]) -> tuple[str, int]:
    """The most frequent non-empty error text and its count ("", 0 when none)."""
    counts = Counter(e for e in errors if e)
    return counts.most_common(1)[0] if counts else ("", 0)
