"""Plain element-wise and channel-wise dropout with the same interface as the block layers."""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ._blocks import bernoulli_keep, dense_layout, hits_are_sparse, sparse_hits
from ._checks import check_prob, check_rank
from ._drop_ops import mask_and_scale, scale_and_zero


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

    On CPU the drops come from the exact sparse Bernoulli sampler (`_blocks.sparse_hits`,
    several times faster than ``F.dropout``'s dense ``bernoulli_``): for small ``p`` the hit
    units are zeroed after a scalar multiply (`_drop_ops.scale_and_zero`, no mask), else a mask
    in the input's layout is built from random bytes. On CUDA ``F.dropout``'s fused kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_rank("Dropout", x, (2, 3, 4, 5), "(N, F) or (N, C, ...)")
        p = check_prob("drop_prob", self.drop_prob)
        if not self.training or p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, p, training=True)
        x = dense_layout(x)
        if hits_are_sparse(p):
            return scale_and_zero(x, 1.0 / (1.0 - p), sparse_hits(x.numel(), p, x.device))
        return mask_and_scale(x, bernoulli_keep(x, p), 1.0 / (1.0 - p))


class SpatialDropout(_ProbLayer):
    """Drop whole channels per example (input (N, C, H, W) or (N, C, D, H, W)), scale 1/(1-p)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_rank("SpatialDropout", x, (4, 5), "(N, C, H, W) or (N, C, D, H, W)")
        p = check_prob("drop_prob", self.drop_prob)
        if not self.training or p == 0.0:
            return x
        shape = x.shape[:2] + (1,) * (x.dim() - 2)
        mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1.0 - p).div_(1.0 - p)
        return x * mask
