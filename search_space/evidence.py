"""The layout of a tensor from what the graph shows, never from its rank alone.

The probe (`search_space.probe`) records, for every module call of one forward pass, the
tensor it took and the tensor it returned. Each module says what it knows (a `Claim`):

- producers and consumers that act on one axis: ``ConvNd``, ``BatchNormNd``, ``InstanceNorm``,
  ``GroupNorm``, pooling and ``DropoutNd`` act on axis 1 (channels first, rank fixed by the
  ``Nd``); ``nn.LayerNorm`` over one dimension, ``nn.Linear``, ``nn.Embedding`` act on the last
  axis (channels last), with the size checked against the tensor's shape; a ``LayerNorm2d``
  (timm, torchvision) normalizes axis 1;
- the recurrent and attention modules (``nn.LSTM``/``GRU``/``RNN``, ``nn.MultiheadAttention``,
  torch's Transformer layers) add ``batch_first``: (N, T, C) or (T, N, C);
- elementwise modules (activations, dropout, identity) and residual blocks whose output has
  their input's shape pass the layout through; so do norms, ``Linear`` and ``ConvNd``, which
  keep the order of the axes: `Evidence` joins their input and output, and what one of them
  shows holds for the other.

`Evidence.resolve` then names the layout (`search_space.layouts`) or says why it cannot: no
module shows the channel axis, or two modules disagree (the site then gets only layout-free
methods, and ``describe`` shows the reason in its ``note`` column). A rank-2 tensor is always
(N, C). Tokens whose batch axis no module states fall back on the model's own recurrent or
attention modules (all ``batch_first`` alike), then on the example's batch size.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.modules.instancenorm import _InstanceNorm

from search_space.layouts import UNKNOWN, get_layout, layout_from_axes

__all__ = [
    "Claim",
    "Evidence",
    "claims_on_input",
    "claims_on_output",
    "keeps_axis_order",
    "model_batch_first",
    "tensor_key",
]

_TORCH_LAYERS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
_POOLS = tuple(
    getattr(nn, f"{kind}{d}d")
    for d in (1, 2, 3)
    for kind in ("MaxPool", "AvgPool", "AdaptiveAvgPool", "AdaptiveMaxPool", "LPPool")
)
_ELEMENTWISE = (
    nn.Identity,
    nn.Dropout,
    nn.AlphaDropout,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Softsign,
    nn.LogSigmoid,
    nn.Threshold,
    nn.Hardshrink,
    nn.Softshrink,
    nn.Tanhshrink,
)
#: Elementwise modules of other libraries, by class name (timm's DropPath, LayerScale-free).
_ELEMENTWISE_NAMES = re.compile(r"^(DropPath|StochasticDepth|Identity|Swish|QuickGELU|GELUTanh)$")
_CHANNELS_FIRST_NORM_NAME = re.compile(r"(1d|2d|3d)$", re.IGNORECASE)


@dataclass(frozen=True)
class Claim:
    """What one module shows about one tensor: its channels are at ``axis`` (non-negative),
    and, for tokens, whether the batch axis comes first (None: not said)."""

    axis: int
    batch_first: bool | None
    source: str  # e.g. "Conv2d 'features.0'" for the notes


def _nd(module: nn.Module) -> int | None:
    """The ``Nd`` of a pooling / DropoutNd / BatchNormNd class (None when its name has none)."""
    m = re.search(r"([123])d$", type(module).__name__)
    return int(m.group(1)) if m else None


def _axis_claim(module: nn.Module, shape: tuple[int, ...], path: str, role: str) -> tuple[int, int | None] | None:
    """(axis, channels) a module acting on one axis claims for a tensor of ``shape``, or None.
    ``role``: "in" (the module's input) or "out" (its output)."""
    rank = len(shape)
    if isinstance(module, _ConvNd):
        nd = len(module.kernel_size)
        if rank != nd + 2:
            return None
        return 1, module.in_channels if role == "in" else module.out_channels
    if isinstance(module, (_BatchNorm, _InstanceNorm)):
        return (1, module.num_features) if rank >= 2 else None
    if isinstance(module, nn.GroupNorm):
        return (1, module.num_channels) if rank >= 2 else None
    if isinstance(module, nn.LayerNorm):
        dims = tuple(module.normalized_shape)
        if _CHANNELS_FIRST_NORM_NAME.search(type(module).__name__):
            return (1, dims[0]) if rank >= 3 and len(dims) == 1 else None
        return (rank - 1, dims[0]) if len(dims) == 1 else None
    if isinstance(module, nn.Linear):
        return rank - 1, module.in_features if role == "in" else module.out_features
    if isinstance(module, nn.Embedding) and role == "out":
        return rank - 1, module.embedding_dim
    if isinstance(module, _POOLS + (_DropoutNd,)) and not isinstance(module, (nn.Dropout, nn.AlphaDropout)):
        nd = _nd(module)
        return (1, None) if nd is not None and rank == nd + 2 else None
    return None


def _tokens_claim(module: nn.Module, role: str) -> tuple[int | None, bool] | None:
    """(channels, batch_first) of a recurrent or attention module's tokens, or None."""
    if isinstance(module, nn.RNNBase):
        if role == "in":
            return module.input_size, module.batch_first
        width = module.proj_size if getattr(module, "proj_size", 0) else module.hidden_size
        return width * (2 if module.bidirectional else 1), module.batch_first
    if isinstance(module, nn.MultiheadAttention):
        return module.embed_dim, module.batch_first
    if isinstance(module, _TORCH_LAYERS):
        return module.self_attn.embed_dim, module.self_attn.batch_first
    if isinstance(module, nn.TransformerEncoder) and len(module.layers):
        return _tokens_claim(module.layers[0], role)
    return None


def _claims(module: nn.Module, shape: tuple[int, ...], path: str, role: str) -> list[Claim]:
    source = f"{type(module).__name__} {path!r}" + (" (input)" if role == "in" else "")
    tokens = _tokens_claim(module, role)
    if tokens is not None:
        width, batch_first = tokens
        if len(shape) == 3 and (width is None or shape[-1] == width):
            return [Claim(2, batch_first, source)]
        return []
    found = _axis_claim(module, shape, path, role)
    if found is None:
        return []
    axis, size = found
    if size is not None and shape[axis] != size:
        return []  # the module acts on another axis of this tensor than the one it names
    return [Claim(axis, None, source)]


def claims_on_output(module: nn.Module, shape: tuple[int, ...], path: str) -> list[Claim]:
    """What ``module`` shows about the layout of its own output of ``shape``."""
    return _claims(module, shape, path, "out")


def claims_on_input(module: nn.Module, shape: tuple[int, ...], path: str) -> list[Claim]:
    """What ``module`` shows about the layout of its (first) input of ``shape``."""
    return _claims(module, shape, path, "in")


def keeps_axis_order(module: nn.Module, residual_block: bool, same_shape: bool) -> bool:
    """Whether ``module``'s output has its input's layout (axes in the same order): norms,
    Linear, ConvNd, pooling and DropoutNd always; elementwise modules and residual blocks when
    the output has the input's shape."""
    if isinstance(module, (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm, nn.Linear, _ConvNd, _DropoutNd)):
        return True
    if isinstance(module, _POOLS):
        return True
    elementwise = isinstance(module, _ELEMENTWISE) or bool(_ELEMENTWISE_NAMES.match(type(module).__name__))
    return same_shape and (elementwise or residual_block)


def model_batch_first(model: nn.Module) -> bool | None:
    """The model's own word on token order: True/False when all its recurrent, attention and
    torch Transformer layers agree, None when it has none or they differ."""
    said = set()
    for m in model.modules():
        if isinstance(m, (nn.RNNBase, nn.MultiheadAttention)):
            said.add(bool(m.batch_first))
    return said.pop() if len(said) == 1 else None


@dataclass
class _Group:
    rank: int
    claims: list[Claim] = field(default_factory=list)


class Evidence:
    """Claims per tensor, with tensors of one layout joined (a union-find over tensor keys)."""

    def __init__(self) -> None:
        self._parent: dict[Any, Any] = {}
        self._groups: dict[Any, _Group] = {}

    def _find(self, key: Any) -> Any:
        while self._parent[key] != key:
            self._parent[key] = self._parent[self._parent[key]]
            key = self._parent[key]
        return key

    def add(self, key: Any, rank: int, claims: Sequence[Claim] = ()) -> None:
        """Note tensor ``key`` of ``rank`` and what is claimed about it."""
        if key not in self._parent:
            self._parent[key] = key
            self._groups[key] = _Group(rank)
        self._groups[self._find(key)].claims.extend(claims)

    def join(self, a: Any, b: Any) -> None:
        """Tensors ``a`` and ``b`` (both added, same rank) have the same layout."""
        ra, rb = self._find(a), self._find(b)
        if ra == rb or self._groups[ra].rank != self._groups[rb].rank:
            return
        self._parent[rb] = ra
        self._groups[ra].claims.extend(self._groups.pop(rb).claims)

    def claims(self, key: Any) -> list[Claim]:
        return list(self._groups[self._find(key)].claims) if key in self._parent else []

    def resolve(
        self, key: Any, shape: tuple[int, ...], batch_first: bool | None, batch_size: int | None
    ) -> tuple[str, str]:
        """(layout name, note) of tensor ``key`` with ``shape``; "unknown" with the reason in
        the note when the evidence is missing or contradicts itself. Tokens whose batch axis
        no claim states take ``batch_first`` (the model's or the site's declared word), else
        the axis of the example's ``batch_size``."""
        rank = len(shape)
        if rank == 2:
            return "NC", ""
        if rank not in (3, 4, 5):
            return UNKNOWN, f"rank {rank}: no layout of this rank"
        claims = self.claims(key)
        axes: dict[int, Claim] = {}
        for c in claims:
            axes.setdefault(c.axis, c)
        if not axes:
            return UNKNOWN, "layout unknown: no module around it shows which axis holds the channels; state it"
        if len(axes) > 1:
            (a, ca), (b, cb) = list(axes.items())[:2]
            return UNKNOWN, f"evidence contradicts: {ca.source} acts on axis {a}, {cb.source} on axis {b}; state it"
        axis, claim = next(iter(axes.items()))
        note = ""
        default, batch_first = batch_first, True
        if rank == 3 and axis == 2:
            said = {c.batch_first for c in claims if c.batch_first is not None}
            if len(said) > 1:
                return UNKNOWN, "evidence contradicts: batch_first True and False for these tokens; state NTC or TNC"
            batch_first = said.pop() if said else default
            if batch_first is None:
                batch_first = _by_batch_size(shape, batch_size)
                if batch_first is None:
                    return UNKNOWN, (
                        f"tokens (channels last: {claim.source}) but no module shows the batch axis and the "
                        f"example's batch size {batch_size} does not tell it; state NTC or TNC"
                    )
                note = f"batch axis by the example's batch size ({batch_size})"
        name = layout_from_axes(rank, axis, batch_first)
        if name is None:
            return UNKNOWN, f"channels at axis {axis} ({claim.source}): no layout of rank {rank} has them there"
        return get_layout(name).name, note


def _by_batch_size(shape: tuple[int, ...], batch_size: int | None) -> bool | None:
    """True/False when exactly one of the first two axes has the example's batch size."""
    if batch_size is None:
        return None
    first, second = shape[0] == batch_size, shape[1] == batch_size
    return True if first and not second else False if second and not first else None


def tensor_key(t: torch.Tensor) -> tuple[int, int]:
    """One tensor's identity while the probe holds it: the object and its in-place version
    (an in-place op after a hook makes the same object another value)."""
    return id(t), t._version
