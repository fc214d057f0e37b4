"""One forward pass on an example input: which modules are sites, their output shapes and
layouts, and the stages of ``share="stage"``.

`probe_sites` hooks every module, runs the model once in eval mode without gradients, and
records what each module took and returned (`search_space.forward_record`, whose
`call_model` is the one way the project calls a model on an example input). From that record:

- **sites** (`default_sites`): the outputs of batch norms (any rank), residual blocks,
  attention and MLP blocks, embeddings and recurrent layers (the output tensor of an LSTM or
  GRU, not its state), and one site per hidden layer elsewhere (a Linear or ConvNd outside
  those blocks: its norm's output when a norm takes it, else its own). The logits (the output
  of the last layer that runs, or the model's output) are never a site, and one tensor is
  one site (a stage that returns its last block's output is left out). A model with torch
  Transformer layers (or declared ``regularization_sites``) gets its Transformer sites.
- **layouts** (`search_space.evidence`): from the modules that made and took each tensor;
  a user may state them (``layouts={"stages.*": "NHWC"}``), checked against the shape.
- **methods** (`search_space.layouts.methods_for`) and a **note** where some are left out.
- **stages**: runs of sites, in forward order, with the same map resolution (or token length,
  or feature width); token sites inside one Transformer block share that block's stage.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.instancenorm import _InstanceNorm

from search_space.errors import user_error
from search_space.evidence import (
    Evidence,
    claims_on_input,
    claims_on_output,
    keeps_axis_order,
    model_batch_first,
    tensor_key,
)
from search_space.forward_record import _batch_size, _Call, _record
from search_space.forward_record import call_model as call_model
from search_space.forward_record import example_batch as example_batch
from search_space.forward_record import first_line as first_line
from search_space.insertion import _named_modules
from search_space.layouts import UNKNOWN, get_layout, methods_for
from search_space.sites import _batch_first, _is_virtual, is_residual_block, transformer_site_blocks

__all__ = ["SiteInfo", "call_model", "example_batch", "probe_sites", "default_sites", "check_layouts"]

log = logging.getLogger(__name__)

#: Class names of attention and MLP blocks (sites of their own, like residual blocks).
BLOCK_NAMES = re.compile(r"(Attention|Mlp|MLP|FeedForward)$")
#: Sub-layers of a Transformer block (not a block of their own for stages).
_SUBLAYER = re.compile(r"(Attention|Mlp|MLP|FeedForward)(Block)?$")
_NORMS = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class SiteInfo:
    """One site seen on the example input.

    ``layout`` is a name of `search_space.layouts` ("NCHW", "NHWC", "NCL", "NTC", ... or
    "unknown"); ``methods`` the allowed methods in table order ("none" first; empty: not a
    site); ``note`` why methods are left out, or where the layout came from when stated.
    """

    path: str
    module_type: str
    shape: tuple[int, ...]  # the output shape as the module returned it (of its output tensor)
    layout: str
    methods: tuple[str, ...]
    stage: str = ""
    note: str = ""

    @property
    def axes(self) -> str:
        """The layout's axes as shown to users ("N,H,W,C"), "-" when the output is no tensor."""
        return get_layout(self.layout).axes if self.shape else "-"


def _evidence(calls: list[_Call]) -> Evidence:
    ev = Evidence()
    for c in calls:
        if c.in_key is not None:
            ev.add(c.in_key, len(c.in_shape), claims_on_input(c.module, c.in_shape, c.path))
        if c.out_key is not None:
            ev.add(c.out_key, len(c.out_shape), claims_on_output(c.module, c.out_shape, c.path))
        if c.in_key is None or c.out_key is None or len(c.in_shape) != len(c.out_shape):
            continue
        if keeps_axis_order(c.module, is_residual_block(c.module), c.in_shape == c.out_shape):
            ev.join(c.in_key, c.out_key)
    return ev


# ------------------------------------------------------------------ sites
def _output_keys(out: Any) -> set:
    if isinstance(out, torch.Tensor):
        return {tensor_key(out)}
    values = out.values() if isinstance(out, Mapping) else out if isinstance(out, (tuple, list)) else ()
    return {k for v in values for k in _output_keys(v)}


def _inside(path: str, parents: Sequence[str]) -> bool:
    return any(path.startswith(p + ".") for p in parents)


def _is_block(module: nn.Module) -> bool:
    """A residual block, or an attention or MLP block: a site of its own."""
    return is_residual_block(module) or bool(BLOCK_NAMES.search(type(module).__name__))


def default_sites(calls: Sequence[_Call], model_output: Any) -> list[str]:
    """The sites a search offers by default, in forward order (see the module docstring)."""
    first: dict[str, _Call] = {}
    for c in calls:
        if c.path and c.path not in first:
            first[c.path] = c
    tensors = {p: c for p, c in first.items() if c.out_key is not None}
    logits = _output_keys(model_output)
    layers = [p for p, c in tensors.items() if isinstance(c.module, (nn.Linear, _ConvNd)) and not c.module._modules]
    head = layers[-1] if layers else None
    blocks = [p for p, c in tensors.items() if _is_block(c.module)]
    chosen = set(blocks)
    chosen |= {p for p, c in tensors.items() if isinstance(c.module, (_BatchNorm, nn.Embedding, nn.RNNBase))}
    takers: dict[Any, list[str]] = {}
    for c in calls:
        if c.in_key is not None:
            takers.setdefault(c.in_key, []).append(c.path)
    for p in layers:
        c = tensors[p]
        if p == head or _inside(p, blocks) or c.out_key in logits:
            continue
        spatial = c.out_shape[2:] if isinstance(c.module, _ConvNd) else c.out_shape[1:-1]
        if spatial and all(s == 1 for s in spatial):
            continue  # a gate on a pooled map (squeeze-and-excitation), not a layer of features
        norm = next((t for t in takers.get(c.out_key, []) if isinstance(first[t].module, _NORMS)), None)
        chosen.add(norm or p)
    sites, seen = [], set()
    for p, c in tensors.items():  # completion order: inner modules first
        if p in chosen and c.out_key not in logits and p != head and c.out_key not in seen:
            seen.add(c.out_key)
            sites.append(p)
    return sites


def check_layouts(
    layouts: Mapping[str, str] | None, sites: Sequence[str], shapes: Mapping[str, tuple[int, ...]] | None = None
) -> dict[str, str]:
    """Site -> stated layout name for ``layouts`` (site path or glob pattern -> layout name),
    each pattern matching some site of ``sites``, each layout of the rank of the site's shape
    (when ``shapes`` are known). An exact path wins over a pattern; else the first pattern."""
    if layouts is None:
        return {}
    if not isinstance(layouts, Mapping):
        raise user_error("layouts", layouts, 'a dict of site path or pattern -> layout, e.g. {"stages.*": "NHWC"}')
    stated: dict[str, str] = {}
    for pattern, name in layouts.items():
        if not isinstance(pattern, str):
            raise user_error("layouts", pattern, "site paths or glob patterns (strings)")
        lay = get_layout(name, f"layouts[{pattern!r}]")
        matched = [s for s in sites if s == pattern or fnmatch.fnmatchcase(s, pattern)]
        if not matched:
            shown = list(sites[:8]) + (["..."] if len(sites) > 8 else [])
            raise user_error("layouts", pattern, f"site paths or patterns over {shown}", detail=f"bad value "
                             f"{pattern!r} (matches no site)")  # fmt: skip
        for site in matched:
            shape = (shapes or {}).get(site)
            if shape and lay.rank is not None and lay.rank != len(shape):
                raise user_error(
                    f"layouts[{pattern!r}]",
                    detail=f"bad value {name!r} for site {site!r} with output {shape}",
                    allowed=f"a layout of rank {len(shape)}",
                )
            if site not in stated or site == pattern:
                stated[site] = lay.name
    return stated


def probe_sites(
    model: nn.Module,
    example_input: Any,
    sites: Sequence[str] | None = None,
    layouts: Mapping[str, str] | None = None,
) -> list[SiteInfo]:
    """The sites of ``model`` on ``example_input`` (default `default_sites`, or the Transformer
    sites of a model that has them; else the named module paths and ``<attention>:q|k|v``),
    in forward order, each with its output shape, layout, methods, stage and note. A named
    site whose output is no tensor, that never runs, or that is the same tensor as an earlier
    site gets no methods, and the note says why. ``layouts`` states layouts (path or glob
    pattern -> name), checked against the output shapes."""
    modules = dict(_named_modules(model))
    owners = transformer_site_blocks(model)
    named = list(sites) if sites is not None else None
    for site in named or ():
        base = site.rsplit(":", 1)[0] if _is_virtual(site) else site
        if base not in modules or (_is_virtual(site) and not isinstance(modules[base], nn.MultiheadAttention)):
            raise user_error("sites", site, "module paths of the model", detail=f"bad value {site!r} (no such module)")
    declared = list(owners) if named is None else []
    paths = named if named is not None else declared
    calls, qkv, out = _record(model, example_input, [s for s in paths or () if _is_virtual(s)])
    if not paths:
        paths = default_sites(calls, out)
    first: dict[str, _Call] = {}
    counts: dict[str, int] = {}
    for c in calls:
        first.setdefault(c.path, c)
        counts[c.path] = counts.get(c.path, 0) + 1
    ev = _evidence(calls)
    model_bf = model_batch_first(model)
    batch = _batch_size(example_batch(example_input))
    ran = [p for p in paths if (p in qkv if _is_virtual(p) else p in first)]
    position = {path: i for i, path in enumerate(first)}
    ordered = sorted(ran, key=lambda p: position[p.rsplit(":", 1)[0]]) + [p for p in paths if p not in ran]
    shapes = {p: qkv[p] if _is_virtual(p) else first[p].out_shape for p in ran}
    stated = check_layouts(layouts, ordered, shapes)
    infos, seen = [], {}
    for p in ordered:
        module = modules[p.rsplit(":", 1)[0]]
        kind = type(module).__name__ + (f":{p.rsplit(':', 1)[1]}" if _is_virtual(p) else "")
        if p not in ran:
            infos.append(SiteInfo(p, kind, (), UNKNOWN, (), note="never runs on the example input"))
            continue
        if _is_virtual(p):
            layout, note = "NTC", ""
        else:
            c = first[p]
            if c.out_key is None:
                infos.append(SiteInfo(p, kind, (), UNKNOWN, (), note=c.out_what))
                continue
            if c.out_key in seen:
                infos.append(SiteInfo(p, kind, c.out_shape, UNKNOWN, (), note=f"the same tensor as {seen[c.out_key]}"))
                continue
            seen[c.out_key] = p
            declared = p in owners and len(c.out_shape) == 3
            said = _batch_first(modules, p) if declared else model_bf
            layout, note = ev.resolve(c.out_key, c.out_shape, said, batch)
            if layout == UNKNOWN and not ev.claims(c.out_key):
                inner = _inner_evidence(calls, ev, c)
                if inner is not None:
                    layout, _ = ev.resolve(inner.out_key, inner.out_shape, said, batch)
                    note = f"layout of its inner {type(inner.module).__name__} {inner.path!r}"
                elif declared:
                    layout, note = ("NTC" if said else "TNC"), "declared Transformer site"
        if p in stated:
            layout, note = stated[p], "layout stated"
        methods, why = methods_for(layout, shapes[p])
        if layout == UNKNOWN and note:
            why = ""  # the evidence's note already says why
        note = "; ".join(n for n in (note, why) if n)
        if counts.get(p.rsplit(":", 1)[0], 1) > 1 and not _is_virtual(p):
            again = f"runs {counts[p]} times per forward: its regularizer acts on each"
            note = "; ".join(n for n in (note, again) if n)
        infos.append(SiteInfo(p, kind, shapes[p], layout, methods, note=note))
    return _with_stages(infos, owners, modules)


def _inner_evidence(calls: Sequence[_Call], ev: Evidence, outer: _Call) -> _Call | None:
    """The last module run inside ``outer`` whose output has ``outer``'s shape and shows its
    layout: a block whose output comes from a functional op (``relu(out + shortcut)``) and
    that no module takes has the layout of its last such inner output (its shortcut, its
    last norm)."""
    prefix = outer.path + "."
    for c in reversed(calls):
        inside = c.path.startswith(prefix) and c.out_key is not None
        if inside and c.out_shape == outer.out_shape and ev.claims(c.out_key):
            return c
    return None


def _owner_block(path: str, modules: Mapping[str, nn.Module]) -> str:
    """The innermost residual block enclosing ``path`` (or ``path`` itself) that is not a
    sub-layer (attention, MLP): the Transformer block of a token site."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        m = modules.get(prefix)
        if m is not None and is_residual_block(m) and not _SUBLAYER.search(type(m).__name__):
            return prefix
    return ""


def _with_stages(infos: list[SiteInfo], owners: Mapping[str, str], modules: Mapping[str, nn.Module]) -> list[SiteInfo]:
    """Consecutive sites with the same resolution (map axes; token length; feature width)
    share a stage; token sites inside one Transformer block (or torch Transformer layer)
    share their block's stage (sites of unknown layout there, another one)."""
    out: list[SiteInfo] = []
    last: Any = object()
    n = 0
    for info in infos:
        if not info.methods:
            out.append(info)
            continue
        lay = get_layout(info.layout)
        owner = owners.get(info.path, "")
        block = owner if owner and owner != info.path else _owner_block(info.path.rsplit(":", 1)[0], modules)
        if lay.kind in ("tokens", UNKNOWN) and block:
            key: Any = ("block", block, lay.kind)
        elif lay.kind in ("map", "tokens"):
            key = (lay.kind, tuple(info.shape[a] for a in lay.spatial))
        else:
            key = (lay.kind, info.shape[-1])
        if key != last:
            n += 1
            last = key
        out.append(replace(info, stage=f"stage{n}"))
    return out
