"""Plain element-wise and channel-wise dropout with the same interface as the block layers."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ._axes import LayoutAxes
from ._blocks import bernoulli_keep, sparse_hits
from ._dispatch import ONE_FAST_PATH, Route, check_algorithm, dropout_path, spatial_route
from ._drop_ops import mask_and_scale, scale_and_zero
from ._layout import dense_layout, laid_out, storage_offsets
from ._validate import check_prob, check_rank


def dropout_reference(x: torch.Tensor, drop_prob: float, dropped: torch.Tensor | None = None) -> torch.Tensor:
    """Element-wise dropout as the textbook has it: drop each unit independently with
    probability p (``dropped``, bool, replaces the draw), scale the rest by ``1 / (1 - p)``."""
    if dropped is None:
        dropped = torch.rand(x.shape, device=x.device) < drop_prob
    return x * (~dropped).to(x.dtype) * (1.0 / (1.0 - drop_prob))


def drop_units(x: torch.Tensor, drop_prob: float, path: str, dropped: torch.Tensor | None = None) -> torch.Tensor:
    """Train-mode dropout by ``path`` (`_dispatch.dropout_path`). ``dropped`` (bool, x's shape)
    replaces the random draw, so tests drive every path but "fused" from the same drops."""
    if path == "reference":
        return dropout_reference(x, drop_prob, dropped)
    if path == "fused":
        return F.dropout(x, drop_prob, training=True)
    x = dense_layout(x)
    scale = 1.0 / (1.0 - drop_prob)
    if path == "hits":  # the few dropped units zeroed after a scalar multiply: no mask
        hits = sparse_hits(x.numel(), drop_prob, x.device) if dropped is None else storage_offsets(dropped, x.stride())
        return scale_and_zero(x, scale, hits)
    keep = bernoulli_keep(x, drop_prob) if dropped is None else laid_out((~dropped).to(torch.uint8), x.stride())
    return mask_and_scale(x, keep, scale)  # path "bytes"


class _ProbLayer(nn.Module):
    """A stateless layer driven by one probability ``drop_prob`` in [0, 1)."""

    prob_attr: ClassVar[str] = "drop_prob"

    def __init__(self, drop_prob: float = 0.1) -> None:
        super().__init__()
        self.drop_prob = check_prob("drop_prob", drop_prob)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Dropout(_ProbLayer):
    """Element-wise dropout, scale ``1 / (1 - p)`` (``F.dropout``); any input of rank 2..5.

    ``algorithm``: "reference" (`dropout_reference`) or the fast paths (`drop_units`): on CPU
    exact sparse Bernoulli hits (`_blocks.sparse_hits`; a dense draw makes a random number per
    unit) zeroed after a scalar multiply for small ``p`` ("sparse"), else a mask from one
    random byte per unit ("dense"); on CUDA ``F.dropout``'s fused kernel. "auto" picks.
    """

    def __init__(self, drop_prob: float = 0.1, *, algorithm: str = "auto") -> None:
        super().__init__(drop_prob)
        self.algorithm = check_algorithm(algorithm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_rank("Dropout", x, (2, 3, 4, 5), "(N, F) or (N, C, ...)")
        p = check_prob("drop_prob", self.drop_prob)
        if not self.training or p == 0.0:
            return x
        return drop_units(x, p, dropout_path(self.algorithm, x.device, p))


class SpatialDropout(LayoutAxes, _ProbLayer):
    """Drop whole channels per example, scale 1/(1-p): (N, C, L), (N, C, H, W) or (N, C, D, H, W)
    inputs, or any layout with a channel axis (``layout="NHWC"``, "NTC", ...: the channel is
    dropped over every position of the map or sequence).

    ``algorithm``: "reference" (`dropout_reference` with one drop per channel) or "auto" (one
    fused masked multiply, `_dispatch.spatial_route`); both draw the same numbers, so a
    seeded layer gives the same output either way. ``layout=None`` (default): channels first,
    whatever the rank.
    """

    _spatial = (1, 2, 3)

    def __init__(self, drop_prob: float = 0.1, *, algorithm: str = "auto", layout: str | None = None) -> None:
        super().__init__(drop_prob)
        self.algorithm = check_algorithm(algorithm, ONE_FAST_PATH)
        self.layout = layout

    @property
    def layout(self) -> str | None:
        """The layout of the inputs, or None: channels first (N, C, ...) of any rank 3 to 5."""
        lay = self._layout
        return None if lay is None else lay.name

    @layout.setter
    def layout(self, value: object) -> None:
        if value is None:
            object.__setattr__(self, "_layout", None)
        else:
            self._set_layout(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._layout is None:
            check_rank("SpatialDropout", x, (3, 4, 5), "(N, C, L), (N, C, H, W) or (N, C, D, H, W)")
        else:
            self._checked(x)
        p = check_prob("drop_prob", self.drop_prob)
        if not self.training or p == 0.0:
            return x
        if self._layout is None:
            return self.drop(x)
        return self._layout.from_channels_first(self.drop(self._layout.to_channels_first(x)))

    def drop(self, x: torch.Tensor, *, route: Route | None = None, dropped: torch.Tensor | None = None) -> torch.Tensor:
        """Train-mode output of a channels-first ``x`` (N, C, ...). ``route`` (default
        `_dispatch.spatial_route`) and ``dropped`` (bool, (N, C, 1, ...)) replace the
        dispatch's choice and the draw."""
        p = check_prob("drop_prob", self.drop_prob)
        route = route or spatial_route(self.algorithm)
        if dropped is None:
            dropped = torch.rand(x.shape[:2] + (1,) * (x.dim() - 2), device=x.device) < p
        if route.apply == "reference":
            return dropout_reference(x, p, dropped)
        return mask_and_scale(dense_layout(x), (~dropped).to(torch.uint8), 1.0 / (1.0 - p))

    def extra_repr(self) -> str:
        text = f"drop_prob={self.drop_prob}, algorithm={self.algorithm!r}"
        return text + ("" if self.layout is None else f", layout={self.layout!r}")
