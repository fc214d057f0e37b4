"""Apply a sparse drop without a mask: ``y = x * scale`` with the dropped units zeroed in place.

On CPU a masked multiply costs a mask in ``x``'s dtype (built in 2-3 passes) plus a second
input stream in the forward and the backward. When the sampler already lists the dropped
units (a few per cent to a few tens of per cent of the map), zeroing them after a plain
scalar multiply is cheaper, and only the index list is saved for the backward. Broadcast
masks on channels_last inputs (one mask per example shared by the channels) are the worst
case of a masked multiply (an inner loop as short as the channel count, ~15x slower than
an elementwise multiply): there a dropped unit is a whole row of ``C`` channels.
"""
from __future__ import annotations

import torch

from ._blocks import storage_view


class _ScaleAndZero(torch.autograd.Function):
    """``y = x * scale``; rows ``index`` of y's storage seen as (numel / width, width) become
    0, or (width 1) ``values``. The written values do not depend on ``x``, so the gradient is
    ``grad * scale`` with the same rows zeroed. ``scatter_`` on a 1-D tensor runs serially in
    index order on CPU, so where indices repeat the last write wins deterministically."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float, index: torch.Tensor, width: int,
                values: torch.Tensor | None) -> torch.Tensor:
        y = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
        torch.mul(x, scale, out=y)
        if values is None:
            storage_view(y).view(-1, width).index_fill_(0, index, 0)
        else:
            storage_view(y).scatter_(0, index, values)
        ctx.save_for_backward(index)
        ctx.scale, ctx.width, ctx.layout = scale, width, (x.shape, x.stride())
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:
        (index,) = ctx.saved_tensors
        shape, strides = ctx.layout
        out = torch.empty_strided(shape, strides, dtype=grad.dtype, device=grad.device)
        torch.mul(grad, ctx.scale, out=out)
        storage_view(out).view(-1, ctx.width).index_fill_(0, index, 0)
        return out, None, None, None, None


def scale_and_zero(x: torch.Tensor, scale: float, index: torch.Tensor, width: int = 1,
                   values: torch.Tensor | None = None) -> torch.Tensor:
    """``x * scale`` with storage rows ``index`` (int64, repeats allowed) zeroed or set to ``values``.

    ``x`` must be laid out as `_blocks.dense_layout` returns it; the result has its strides.
    ``width`` > 1 addresses rows of ``width`` consecutive units (e.g. all channels of one
    pixel of a channels_last map); ``values`` (one per index, ``width`` 1) overwrite instead.
    """
    if values is not None and width != 1:
        raise ValueError(f"values need width 1, got width={width}")
    if x.numel() % width:
        raise ValueError(f"width {width} does not divide numel {x.numel()}")
    return _ScaleAndZero.apply(x, float(scale), index.reshape(-1), int(width), values)

