"""Hand-set baseline plans at the papers' settings, adapted to whatever model the run searched.

The papers fix sites and sizes for ImageNet ResNet-50 (DropBlock) and CIFAR ResNet-56 (Disout);
our models differ, so sites are chosen by *feature-map resolution* (a "stage" is a run of
sites with the same spatial size) and block sizes are clamped or scaled to the map:

- ``none``: no regularization anywhere.
- ``dropout``: elementwise dropout, drop_prob 0.1, constant, at the DropBlock sites below
  (same sites and rate as DropBlock, so the pair isolates the effect of block structure).
- ``dropblock`` (Ghiasi et al. 2018, best ImageNet setting): keep_prob 0.9 -> drop_prob 0.1,
  block_size 7 clamped to the map (min(7, H, W)), one mask per channel, ramped linearly from 0
  over the whole training, at every batch-norm output of the last two stages including the
  projection shortcuts ("groups 3 and 4 and the skip connections").
- ``disout`` (Tang et al. 2020, CIFAR ResNet-56 setting): dist_prob 0.09, alpha 5.0,
  block_size 6 of an 8x8 map scaled to the map (round(0.75 * min(H, W)), at least 1), ramped
  linearly from 0 over the whole training, after both convolutions (their batch-norm outputs)
  of every block of the last stage, not on shortcuts.

A model whose last stage(s) hold no batch-norm site uses every 4-D site of those stages.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads only when plans are built, so the CLI parser stays light
    import torch
    from torch import nn

__all__ = ["BASELINES", "baseline_plans", "stage_sites", "site_shapes", "TUNED_GRIDS", "tuned_methods", "tuned_grid"]

log = logging.getLogger(__name__)

BASELINES = ("none", "dropout", "dropblock", "disout")
DROPBLOCK = {"drop_prob": 0.1, "block_size": 7}
DISOUT = {"dist_prob": 0.09, "block_size": 6, "alpha": 5.0, "paper_map": 8}
_SHORTCUT_NAMES = ("shortcut", "downsample", "skip")


def stage_sites(shapes: dict[str, tuple[int, ...]]) -> list[list[str]]:
    """Group 4-D sites into stages: consecutive distinct spatial sizes, in model order."""
    stages: list[list[str]] = []
    sizes: list[tuple[int, ...]] = []
    for site, shape in shapes.items():
        if len(shape) != 4:
            continue
        hw = tuple(shape[2:])
        if hw not in sizes:
            sizes.append(hw)
            stages.append([])
        stages[sizes.index(hw)].append(site)
    return stages


def _is_bn(model: nn.Module, site: str) -> bool:
    from torch.nn.modules.batchnorm import _BatchNorm

    return isinstance(model.get_submodule(site), _BatchNorm)


def _is_shortcut(site: str) -> bool:
    return any(part in _SHORTCUT_NAMES for part in site.split("."))


def _bn_or_all(model: nn.Module, sites: list[str], shortcuts: bool) -> list[str]:
    chosen = [s for s in sites if _is_bn(model, s) and (shortcuts or not _is_shortcut(s))]
    return chosen or sites


def baseline_plans(
    model: nn.Module, sites: list[str], x: torch.Tensor, model_name: str = "", names: tuple[str, ...] = BASELINES
) -> dict[str, Any]:
    """The baseline plans for ``model`` (unregularized) given one input batch ``x``.

    Returns name -> ``search_space.Plan`` covering every site in ``sites`` (unused ones "none").
    """
    from search_space.errors import user_error
    from search_space.plan import Plan, SiteSpec

    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise user_error("baselines", detail=f"unknown baseline(s) {', '.join(unknown)}", allowed=", ".join(BASELINES))
    shapes = site_shapes(model, sites, x)
    stages = stage_sites(shapes)
    if not stages:
        raise user_error(detail=f"model {model_name!r}: no site with a 4-D (N, C, H, W) output; sites: {sites}")
    late = [s for stage in stages[-2:] for s in stage]
    block_sites = _bn_or_all(model, late, shortcuts=True)
    disout_sites = _bn_or_all(model, stages[-1], shortcuts=False)

    def plan(chosen: dict[str, SiteSpec], ramp: float, note: str) -> Any:
        specs = {s: chosen.get(s, SiteSpec("none", {})) for s in sites}
        return Plan(sites=specs, model=model_name, ramp_fraction=ramp, metadata={"baseline": note})

    def side(site: str) -> int:
        return int(min(shapes[site][2:]))

    out = {
        "none": plan({}, 0.0, "none: no regularization"),
        "dropout": plan(
            {s: SiteSpec("dropout", {"drop_prob": 0.1}) for s in block_sites},
            0.0,
            "dropout p=0.1 at the DropBlock sites",
        ),
        "dropblock": plan(
            {
                s: SiteSpec(
                    "dropblock",
                    {
                        "drop_prob": DROPBLOCK["drop_prob"],
                        "block_size": min(DROPBLOCK["block_size"], side(s)),
                        "share_channels": False,
                    },
                )
                for s in block_sites
            },
            1.0,
            "DropBlock paper: keep_prob 0.9, block 7 clamped, last two stages + shortcuts, ramped",
        ),
        "disout": plan(
            {
                s: SiteSpec(
                    "disout",
                    {
                        "dist_prob": DISOUT["dist_prob"],
                        "alpha": DISOUT["alpha"],
                        "block_size": max(1, round(DISOUT["block_size"] * side(s) / DISOUT["paper_map"])),
                    },
                )
                for s in disout_sites
            },
            1.0,
            "Disout paper: dist_prob 0.09, block 6/8 of the map, alpha 5, last stage, ramped",
        ),
    }
    for name in names:
        log.info("baseline %s: %s", name, out[name].summary())
    return {name: out[name] for name in names}


def site_shapes(model: nn.Module, sites: list[str], x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Output shape of each site module for input ``x`` (eval mode, one forward pass).

    A virtual q/k/v site of a MultiheadAttention (``<module>:q``) has its query's shape,
    batch first."""
    import torch

    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for site in sites:
        if ":" in site:
            module = model.get_submodule(site.rsplit(":", 1)[0])

            def hook(m: nn.Module, args: tuple, kwargs: dict, _out: Any, site: str = site) -> None:
                q = args[0] if args else kwargs["query"]
                shapes[site] = tuple(q.shape) if m.batch_first else (q.shape[1], q.shape[0], *q.shape[2:])

            handles.append(module.register_forward_hook(hook, with_kwargs=True))
            continue
        module = model.get_submodule(site)
        handles.append(
            module.register_forward_hook(lambda _m, _i, out, site=site: shapes.__setitem__(site, tuple(out.shape)))
        )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return shapes


# ------------------------------------------------------------------ tuned global recipes
#: What a practitioner tunes instead of a per-site search: one method at every site, its rate
#: (and block size) picked on a small grid. Each grid is ordered coarse-to-fine, so a budget
#: of n trials takes the first n points (2 points: the usual rate and a stronger one).
TUNED_GRIDS: dict[str, tuple[dict[str, Any], ...]] = {
    "dropout": tuple({"drop_prob": p, "ramp": 0.0} for p in (0.1, 0.2, 0.05, 0.3, 0.15, 0.4, 0.25)),
    "dropblock": tuple(
        {"drop_prob": p, "block_size": b, "share_channels": False, "ramp": 1.0}
        for p, b in ((0.1, 3), (0.1, 5), (0.2, 3), (0.05, 3), (0.2, 5), (0.1, 7), (0.3, 3), (0.05, 5))
    ),
    "seq_pattern": tuple(
        {"drop_prob": p, "size": size, "stride": stride, "share_t": True, "share_c": share_c, "ramp": 0.0}
        for p, size, stride, share_c in (
            (0.1, 2, 4, True),
            (0.2, 2, 4, True),
            (0.1, 1, 2, False),
            (0.3, 1, 2, True),
            (0.2, 3, 6, True),
            (0.05, 2, 4, True),
        )
    ),
}


def tuned_methods(space_methods: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The methods a practitioner would tune globally for this space: dropout and the sequence
    pattern for a Transformer space, dropout and DropBlock for a ConvNet space (those the
    space offers)."""
    wanted = ("dropout", "seq_pattern") if "seq_pattern" in space_methods else ("dropout", "dropblock")
    return tuple(m for m in wanted if m in space_methods)


def tuned_grid(space: Any, method: str, n: int, exclude: Any = ()) -> list[Any]:
    """The first ``n`` grid points of ``method`` as plans with that method at every site of
    ``space`` (a ``SearchSpace``) that allows it (none elsewhere; no plans when no site does),
    skipping plans equal to one in ``exclude`` (a hand-set baseline trains anyway); a block
    size larger than a map is clamped to it by the layer."""
    from search_space.errors import user_error
    from search_space.plan import plan_key

    if method not in TUNED_GRIDS:
        raise user_error("tuned method", method, ", ".join(TUNED_GRIDS))
    grid = TUNED_GRIDS[method]
    if not 1 <= n <= len(grid):
        raise user_error("tuned trials per method", n, f"1..{len(grid)} for {method}")
    from search_space.plan import Plan, SiteSpec

    skip = {plan_key(p) for p in exclude}
    fits = [s for s in space.sites if method in space.methods_of(s)]  # shape-aware spaces narrow per group
    if not fits:
        return []
    plans = []
    for params in grid:
        plan = Plan(
            {s: SiteSpec(method, dict(params)) if s in fits else SiteSpec("none") for s in space.sites},
            model=space.model,
            ramp_fraction=space.ramp_fraction,
        )
        if plan_key(plan) in skip:
            continue
        plan.metadata = {"baseline": f"tuned-{method}: " + plan.summary()}
        plans.append(plan)
        if len(plans) == n:
            break
    return plans
