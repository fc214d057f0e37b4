"""Which modules of a model are regularization sites, found from the module tree alone.

Sites (`find_sites`): the output of every ``nn.BatchNorm2d``/``SyncBatchNorm`` (where
AutoDropout applies its patterns) and of every residual block, detected generically: a
module whose class name ends with ``Block`` or ``Bottleneck``, or that has a ``downsample``
or ``shortcut`` attribute (torchvision BasicBlock/Bottleneck, our CIFAR ResNet/WRN blocks).

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
``<path>:q|k|v`` sites. ``nn.TransformerDecoderLayer`` offers the same sites plus its
cross-attention (``multihead_attn:q|k|v``, ``dropout2``) and ``dropout3``.

Also here, because apply and probe both ask them of the module tree: a site's channels, the
convolution after it (Disout's ``weight_behind``), its enclosing residual block and torch
Transformer layer. Shape-aware sites (any model, an example input): `search_space.probe`.
"""

from __future__ import annotations

from typing import Iterable

import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from search_space import layers as _layers
from search_space.attention import _QKV
from search_space.errors import user_error
from search_space.insertion import _named_modules
from search_space.plan import PlanError
from search_space.vocab import CONV_METHODS, SEQUENCE_METHODS

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
_SITE_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)  # 4-D outputs, which every method accepts


def is_residual_block(module: nn.Module) -> bool:
    """The generic residual-block test used by `find_sites` (see module docstring)."""
    if type(module).__module__.startswith(_layers.__name__):
        return False
    name = type(module).__name__
    return name.endswith(("Block", "Bottleneck")) or hasattr(module, "downsample") or hasattr(module, "shortcut")


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
