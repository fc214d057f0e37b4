"""Which sites of a model a search space covers, how they group into shared decision sets,
and which methods each group is offered: everything `SearchSpace.for_model` decides from the
model (its module tree, or one forward pass on an example input) before the space is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch.nn as nn

from search_space.errors import user_error
from search_space.plan import PlanError
from search_space.probe import check_layouts, probe_sites
from search_space.sites import check_sites, default_methods, find_sites, transformer_site_blocks, transformer_sites
from search_space.vocab import CONV_METHODS, METHODS, VOCAB


@dataclass(frozen=True)
class Grouping:
    """The model-dependent arguments of `SearchSpace`: its site groups (key -> member sites, in
    order), the methods searched, the share name ("stage", "custom" or None), per group the
    methods that fit it (None: all), and the sites' layouts."""

    groups: list[tuple[str, list[str]]]
    methods: tuple[str, ...]
    share: str | None
    group_methods: dict[str, tuple[str, ...]] | None = None
    layouts: dict[str, str] | None = None


def stage_of(site: str) -> str:
    """Stage key of a site for ``share="stage"``: the path components before the first
    numeric one plus ".*" (``layer2.1.bn2`` -> ``layer2.*``, our CIFAR ResNets' stages are
    ``layer1..3`` too); a site without such a prefix (``bn1``, ``0.bn``) is its own stage."""
    parts = site.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:i]) + ".*" if i > 0 else site
    return site


def block_of(model: nn.Module) -> Callable[[str], str]:
    """Group key function for a Transformer under ``share="stage"``: a site inside a
    Transformer layer maps to ``<layer path>.*`` (``blocks.1.attn.q_proj`` -> ``blocks.1.*``,
    ``1.layers.0.self_attn:q`` -> ``1.layers.0.*``), so each block gets one decision set; an
    embedding site (or any other) is its own group."""
    owners = {
        site: owner
        for site, owner in transformer_site_blocks(model).items()
        if owner and owner != site and site.startswith(owner)
    }
    return lambda site: owners[site] + ".*" if site in owners else site


def model_grouping(
    model: nn.Module,
    sites: Sequence[str] | None = None,
    share: str | Callable[[str], str] | None = None,
    methods: Sequence[str] | None = None,
    example_input: Any = None,
    layouts: Mapping[str, str] | None = None,
) -> Grouping:
    """The grouping `SearchSpace.for_model` builds its space from (see its docstring for the
    arguments): from the module tree, or with ``example_input`` from one forward pass."""
    if example_input is not None:
        return _shaped_grouping(model, sites, share, methods, example_input, layouts)
    if sites is None:
        sites = transformer_sites(model) or find_sites(model)
    sites = list(sites)
    if not sites:
        raise user_error(
            "sites",
            [],
            "pass example_input (sites from output shapes: Linear, BatchNorm1d, LayerNorm ...) or name module paths",
            detail=f"none found in {type(model).__name__} (no BatchNorm2d, residual block or Transformer layer)",
        )
    check_sites(model, sites)
    sequence = default_methods(model, sites) != CONV_METHODS  # every site a Transformer site
    if methods is None:
        methods = default_methods(model, sites)
    if share is None:
        key_fn: Callable[[str], str] = str
    elif share == "stage":
        key_fn = block_of(model) if sequence else stage_of
    elif callable(share):
        key_fn = share
    else:
        raise user_error("share", share, "None, 'stage' or a function", cls=PlanError)
    groups: dict[str, list[str]] = {}
    for s in sites:
        groups.setdefault(key_fn(s), []).append(s)
    share_name = share if share in (None, "stage") else "custom"
    stated = check_layouts(layouts, sites)
    return Grouping(list(groups.items()), tuple(methods), share_name, layouts=stated)


def _shaped_grouping(
    model: nn.Module,
    sites: Sequence[str] | None,
    share: str | Callable[[str], str] | None,
    methods: Sequence[str] | None,
    example_input: Any,
    layouts: Mapping[str, str] | None = None,
) -> Grouping:
    """`model_grouping` with an example input: sites, layouts and methods from one forward pass."""
    infos = probe_sites(model, example_input, sites, layouts)
    named = [i for i in infos if sites is not None and i.path in sites]
    bad = next((i for i in named if not i.methods), None)
    if bad is not None:
        raise user_error(
            "sites",
            bad.path,
            "modules whose output is a feature tensor: (N, C) features, maps, tokens",
            detail=f"bad value {bad.path!r} (output {bad.shape or 'not a tensor'} on the example input: {bad.note})",
        )
    infos = [i for i in infos if i.methods]
    if not infos:
        raise user_error(
            "sites",
            [],
            "module paths whose output is a feature tensor (see search_space.describe(model, example_input))",
            detail=f"none found in {type(model).__name__}: no module returns a feature tensor (features, maps or "
            "tokens) on the example input but the logits",
        )
    offered = [m for m in METHODS if any(m in i.methods for i in infos)]
    if methods is None:
        methods = tuple(offered)
    methods = tuple(methods)
    for m in methods:
        if m in VOCAB and m not in offered:
            shapes = sorted({i.axes for i in infos})
            raise user_error(
                "methods",
                m,
                ", ".join(offered),
                detail=f"bad value {m!r} fits no site of {type(model).__name__} (site layouts: {', '.join(shapes)})",
            )
    if share is None:
        key_fn: Callable[[str], str] = str
    elif share == "stage":
        stage = {i.path: i.stage for i in infos}
        key_fn = stage.__getitem__
    elif callable(share):
        key_fn = share
    else:
        raise user_error("share", share, "None, 'stage' or a function", cls=PlanError)
    groups: dict[str, list[str]] = {}
    fits: dict[str, set[str]] = {}
    for info in infos:
        key = key_fn(info.path)
        groups.setdefault(key, []).append(info.path)
        fits[key] = fits.get(key, set(methods)) & set(info.methods)
    group_methods = {k: tuple(m for m in methods if m in fits[k]) for k in groups}
    empty = next((k for k, v in group_methods.items() if not v), None)
    if empty is not None:
        site = groups[empty][0]
        raise user_error(
            "methods",
            list(methods),
            "include 'none', or methods that fit every site",
            detail=f"bad value {list(methods)}: none fits site {site!r} "
            f"(output {next(i.shape for i in infos if i.path == site)})",
        )
    share_name = share if share in (None, "stage") else "custom"
    site_layouts = {i.path: i.layout for i in infos}
    return Grouping(list(groups.items()), methods, share_name, group_methods, site_layouts)
