"""Apply a sampled drop to ``x`` on CPU with as few passes over memory as possible.

Inside training the activations are far larger than the caches, so a regularizer's cost is
the bytes it moves: every full-size pass costs about as much as the arithmetic of a BN.

* `mask_and_scale`: ``y = x * keep * scale`` in one pass (``addcmul``), forward and backward,
  instead of scaling a float mask first (one more pass each way).
* `scale_and_zero`: no mask at all when the sampler already lists the dropped units (a few
  per cent of the map): ``y = x * scale``, then those units are zeroed (or overwritten);
  only the index list is saved for the backward. Broadcast masks on channels_last inputs
  (one mask per example shared by the channels) are the worst case of a masked multiply (an
  inner loop as short as the channel count, ~15x slower than an elementwise one): there a
  dropped unit is a whole row of ``C`` channels.
"""
from __future__ import annotations

import torch

from ._blocks import storage_view


# Values are scattered as their bit patterns: CPU ``scatter_`` on bf16 converts the whole
# target to float and back (two full copies, 17x slower than on int16 for 200k of 2M units).
_BITS = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32,
         torch.float64: torch.int64}


def _write(y: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> None:
    """``y``'s storage units ``index`` = ``values``, in index order (the last repeat wins)."""
    bits = _BITS.get(y.dtype, y.dtype)
    storage_view(y).view(bits).scatter_(0, index, values.to(y.dtype).view(bits))


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
            _write(y, index, values)
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


def _channels_last_format(x: torch.Tensor) -> torch.memory_format | None:
    """channels_last (4-D) or channels_last_3d (5-D) when ``x`` is stored that way, else None."""
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
    return fmt if fmt is not None and x.is_contiguous(memory_format=fmt) else None


def pixels_are_rows(x: torch.Tensor) -> bool:
    """Whether ``x`` is stored (N, *spatial, C): then the units of one pixel are one storage row
    of C, and row ``r`` is unit ``r`` of a contiguous (N, 1, *spatial) map. Other gap-free
    orders with the channels innermost (e.g. N, W, H, C) number their pixels differently."""
    return _channels_last_format(x) is not None


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



class _MaskAndScale(torch.autograd.Function):
    """``y = x * mask * scale`` and ``grad_x = grad * mask * scale``, one ``addcmul`` pass each
    (the zero-dim addend broadcasts for free); only the mask is saved for the backward.
    Optionally ``values`` then overwrite storage units ``index`` (which the mask zeroes)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor, scale: float, index: torch.Tensor | None,
                values: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(mask)
        ctx.scale, ctx.layout = scale, (x.shape, x.stride())
        y = _addcmul(x, mask, scale, x.shape, x.stride())
        if index is not None:
            _write(y, index, values)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:
        (mask,) = ctx.saved_tensors
        return _addcmul(grad, mask, ctx.scale, *ctx.layout), None, None, None, None


def _addcmul(t: torch.Tensor, mask: torch.Tensor, scale: float, shape: torch.Size, strides: tuple[int, ...]) -> torch.Tensor:
    out = torch.empty_strided(shape, strides, dtype=t.dtype, device=t.device)
    return torch.addcmul(torch.zeros((), dtype=t.dtype, device=t.device), t, mask, value=scale, out=out)


def mask_and_scale(x: torch.Tensor, keep: torch.Tensor, scale: float, index: torch.Tensor | None = None,
                   values: torch.Tensor | None = None) -> torch.Tensor:
    """``x * keep * scale`` for a 0/1 ``keep`` mask broadcastable to ``x`` (any dtype), in ``x``'s layout.

    ``x`` must be laid out as `_blocks.dense_layout` returns it; a full-size mask in another
    layout is copied into ``x``'s (so both passes stream). The product is rounded once
    (``scale`` is not rounded to ``x``'s dtype first). ``values`` (no gradient) then overwrite
    the storage units ``index``, which must be dropped ones (Disout's noise).
    """
    if (index is None) != (values is None):
        raise ValueError("index and values go together")
    return _MaskAndScale.apply(x, mask_like(keep, x), float(scale), None if index is None else index.reshape(-1), values)


def mask_like(keep: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``keep`` in ``x``'s dtype; a full-size mask also in ``x``'s strides, so that multiplying
    streams both. The channels_last conversion has a blocked kernel (a contiguous bf16 mask to
    channels_last: 0.33 ms vs 1.6 ms for a strided copy_ of 2M units)."""
    mask = keep.to(x.dtype)
    if keep.shape != x.shape or keep.stride() == x.stride():
        return mask
    fmt = _channels_last_format(x)
    if fmt is not None:
        return mask.contiguous(memory_format=fmt)
    return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device).copy_(mask)
