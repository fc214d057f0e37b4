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

A model whose last stage(s) hold no batch-norm site uses every map site of those stages.
Maps are sites whose layout (`search_space.layouts`, from the probe's evidence) is a map:
N,C,H,W and N,H,W,C, and N,C,L or N,C,D,H,W volumes (DropBlock1d/3d; Disout takes 2-D maps
only). A model with token sites (a Transformer, a recurrent model) gets the practitioners'
recipe instead (`convnet_baselines`): none and dropout.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads only when plans are built, so the CLI parser stays light
    from torch import nn

__all__ = [
    "BASELINES",
    "baseline_plans",
    "convnet_baselines",
    "available_baselines",
    "stage_sites",
    "site_shapes",
    "TUNED_GRIDS",
    "tuned_methods",
    "tuned_grid",
]

log = logging.getLogger(__name__)

BASELINES = ("none", "dropout", "dropblock", "disout")
DROPBLOCK = {"drop_prob": 0.1, "block_size": 7}
DISOUT = {"dist_prob": 0.09, "block_size": 6, "alpha": 5.0, "paper_map": 8}
_SHORTCUT_NAMES = ("shortcut", "downsample", "skip")


def stage_sites(shapes: dict[str, tuple[int, ...]], layouts: dict[str, str] | None = None) -> list[list[str]]:
    """Group map sites into stages: consecutive distinct map sizes, in model order. A site's
    map axes come from its layout in ``layouts`` (default: a 4-D output is N,C,H,W); sites
    that are not maps are left out."""
    from search_space.layouts import get_layout

    stages: list[list[str]] = []
    sizes: list[tuple[int, ...]] = []
    for site, shape in shapes.items():
        name = (layouts or {}).get(site) or ("NCHW" if len(shape) == 4 else None)
        lay = get_layout(name) if name else None
        if lay is None or lay.kind != "map" or lay.rank != len(shape):
            continue
        hw = tuple(shape[a] for a in lay.spatial)
        if hw not in sizes:
            sizes.append(hw)
            stages.append([])
        stages[sizes.index(hw)].append(site)
    return stages


def convnet_baselines(space: Any) -> bool:
    """Whether the papers' ConvNet baselines (DropBlock, Disout) apply to a ``SearchSpace``:
    where it knows its sites' layouts, when it has maps and no token sites (whatever methods
    it searches: the baselines are references); otherwise when it offers dropblock and not
    seq_pattern (a space without shapes: its methods say what the model is)."""
    from search_space.layouts import get_layout

    if not space.layouts:
        return "dropblock" in space.methods and "seq_pattern" not in space.methods
    kinds = {get_layout(name).kind for name in space.layouts.values()}
    return "map" in kinds and "tokens" not in kinds


def available_baselines(space: Any) -> tuple[str, ...]:
    """The hand-set baselines that apply to ``space``: for a ConvNet (`convnet_baselines`) all
    of `BASELINES` (Disout only where some site is a 2-D map), else ``none`` and ``dropout``."""
    from search_space.layouts import get_layout

    if not convnet_baselines(space):
        return ("none", "dropout")
    flat = not space.layouts or any(len(get_layout(n).spatial) == 2 for n in space.layouts.values()
                                    if get_layout(n).kind == "map")  # fmt: skip
    return tuple(b for b in BASELINES if b != "disout" or flat)


def _is_bn(model: nn.Module, site: str) -> bool:
    from torch.nn.modules.batchnorm import _BatchNorm

    return isinstance(model.get_submodule(site), _BatchNorm)


def _is_shortcut(site: str) -> bool:
    return any(part in _SHORTCUT_NAMES for part in site.split("."))


def _bn_or_all(model: nn.Module, sites: list[str], shortcuts: bool) -> list[str]:
    chosen = [s for s in sites if _is_bn(model, s) and (shortcuts or not _is_shortcut(s))]
    return chosen or sites


def baseline_plans(
    model: nn.Module,
    sites: list[str],
    x: Any,
    model_name: str = "",
    names: tuple[str, ...] = BASELINES,
    layouts: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The baseline plans for ``model`` (unregularized) given one input batch ``x`` (a tensor,
    a tuple of positional arguments or a dict of keyword arguments, as for ``describe``).
    ``layouts``: site (or pattern) -> layout, stated (e.g. a search space's ``layouts``);
    others come from the probe's evidence.

    Returns name -> ``search_space.Plan`` covering every site in ``sites`` (unused ones "none"),
    the sites' layouts included.
    """
    from search_space.errors import user_error
    from search_space.plan import Plan, SiteSpec
    from search_space.probe import probe_sites

    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise user_error("baselines", detail=f"unknown baseline(s) {', '.join(unknown)}", allowed=", ".join(BASELINES))
    infos = {i.path: i for i in probe_sites(model, x, sites, layouts) if i.methods}
    shapes = {s: infos[s].shape for s in sites if s in infos}
    site_layouts = {s: infos[s].layout for s in shapes}
    stages = stage_sites(shapes, site_layouts)
    if not stages:
        raise user_error(
            detail=f"model {model_name!r}: no site with a feature map output (N,C,H,W, N,H,W,C, N,C,L or "
            f"N,C,D,H,W); sites: {sites}"
        )
    late = [s for stage in stages[-2:] for s in stage]
    block_sites = _bn_or_all(model, late, shortcuts=True)
    flat = [s for s in stages[-1] if len(_sides(shapes[s], site_layouts[s])) == 2]  # Disout: 2-D maps
    disout_sites = _bn_or_all(model, flat, shortcuts=False) if flat else []
    if "disout" in names and not disout_sites:
        raise user_error("baselines", "disout", "baselines other than disout", detail="bad value 'disout' (Disout "
                         f"needs 2-D maps; the last stage of {model_name or 'this model'} has none)")  # fmt: skip

    def plan(chosen: dict[str, SiteSpec], ramp: float, note: str) -> Any:
        specs = {s: chosen.get(s, SiteSpec("none", {})) for s in sites}
        used = {s: site_layouts[s] for s in sites if s in site_layouts}
        return Plan(sites=specs, model=model_name, ramp_fraction=ramp, metadata={"baseline": note}, layouts=used)

    def side(site: str) -> int:
        return int(min(_sides(shapes[site], site_layouts[site])))

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


def _sides(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    from search_space.layouts import get_layout

    return tuple(shape[a] for a in get_layout(layout).spatial)


def site_shapes(model: nn.Module, sites: list[str], x: Any) -> dict[str, tuple[int, ...]]:
    """Output shape of each site module for input ``x`` (eval mode, one forward pass through
    `search_space.probe.call_model`: a tensor, a tuple of positional arguments or a dict of
    keyword arguments); the output tensor of an LSTM/GRU or MultiheadAttention, not its
    tuple. A virtual q/k/v site of a MultiheadAttention (``<module>:q``) has its query's
    shape, batch first. Sites whose output is no tensor are left out."""
    from search_space.probe import probe_sites

    return {i.path: i.shape for i in probe_sites(model, x, sites) if i.shape}


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


def tuned_methods(space: Any) -> tuple[str, ...]:
    """The methods a practitioner would tune globally for ``space`` (a ``SearchSpace``, or its
    methods): dropout and DropBlock for a ConvNet space (`convnet_baselines`), dropout and the
    sequence pattern otherwise (those the space offers)."""
    if hasattr(space, "methods"):
        methods, convnet = tuple(space.methods), convnet_baselines(space)
    else:
        methods = tuple(space)
        convnet = "seq_pattern" not in methods
    wanted = ("dropout", "dropblock") if convnet else ("dropout", "seq_pattern")
    return tuple(m for m in wanted if m in methods)


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
            layouts=dict(getattr(space, "layouts", {})),
        )
        if plan_key(plan) in skip:
            continue
        plan.metadata = {"baseline": f"tuned-{method}: " + plan.summary()}
        plans.append(plan)
        if len(plans) == n:
            break
    return plans
