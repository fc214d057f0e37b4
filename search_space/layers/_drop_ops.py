"""Apply a sampled drop to ``x`` with as few passes over memory as possible.

Inside training the activations are far larger than the caches, so a regularizer's cost is
the bytes it moves; every full-size pass costs about as much as the arithmetic of a BN.

* `apply_keep`: the output every zeroing layer computes, ``x * keep * numel / kept``, by the
  cheapest route for the device and layout (below).
* `mask_and_scale`: ``y = x * keep * scale`` in one pass (``addcmul``), forward and backward,
  instead of scaling a float mask first (one more pass each way).
* `scale_and_zero` / `scale_and_zero_pixels`: no mask at all when the sampler already lists
  the dropped units (a few per cent of the map): ``y = x * scale``, then those units (or whole
  pixel rows of a channels_last map) are zeroed or overwritten; only the index list is saved
  for the backward.

Each function checks the layout it relies on (`_layout`), so a caller cannot scramble a mask.
"""

from __future__ import annotations

import torch

from search_space.errors import user_error

from ._blocks import kept_count
from ._layout import channels_last_format, flat_storage, is_dense, pixels_are_rows

# Values are scattered as their bit patterns: CPU ``scatter_`` on a reduced-precision float
# converts the whole target to float and back (two full-size copies); on the same-width
# integer it writes only the scattered units.
_BITS = {
    torch.bfloat16: torch.int16,
    torch.float16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}


def _require_dense(name: str, t: torch.Tensor) -> None:
    if not is_dense(t):
        raise user_error(
            f"{name} layout", tuple(t.stride()), f"a dense layout of shape {tuple(t.shape)} (see _layout.dense_layout)"
        )


def write_units(y: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> None:
    """Set ``y``'s storage units ``index`` to ``values``, in index order (the last repeat wins:
    ``scatter_`` on a 1-D tensor runs serially on CPU). ``y`` must be dense, a float dtype."""
    _require_dense("y", y)
    if y.dtype not in _BITS:
        raise user_error("y dtype", y.dtype, f"one of {list(_BITS)}")
    _write_bits(y, index, values)


def _write_bits(y: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> None:
    bits = _BITS[y.dtype]
    flat_storage(y).view(bits).scatter_(0, index, values.to(y.dtype).view(bits))


class _ScaleAndZero(torch.autograd.Function):
    """``y = x * scale``; rows ``index`` of y's storage seen as (numel / width, width) become
    0, or (width 1) ``values``. The written values do not depend on ``x``, so the gradient is
    ``grad * scale`` with the same rows zeroed."""

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, scale: float, index: torch.Tensor, width: int, values: torch.Tensor | None
    ) -> torch.Tensor:
        y = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
        torch.mul(x, scale, out=y)
        if values is None:
            flat_storage(y).view(-1, width).index_fill_(0, index, 0)
        else:
            _write_bits(y, index, values)
        ctx.save_for_backward(index)
        ctx.scale, ctx.width, ctx.layout = scale, width, (x.shape, x.stride())
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:
        (index,) = ctx.saved_tensors
        shape, strides = ctx.layout
        out = torch.empty_strided(shape, strides, dtype=grad.dtype, device=grad.device)
        torch.mul(grad, ctx.scale, out=out)
        flat_storage(out).view(-1, ctx.width).index_fill_(0, index, 0)
        return out, None, None, None, None


def scale_and_zero(
    x: torch.Tensor, scale: float, index: torch.Tensor, values: torch.Tensor | None = None
) -> torch.Tensor:
    """``x * scale`` with storage units ``index`` (int64, repeats allowed) zeroed, or set to
    ``values`` (one per index, no gradient). ``x`` must be dense; the result has its strides."""
    _require_dense("x", x)
    if values is not None and x.dtype not in _BITS:
        raise user_error("x dtype", x.dtype, f"one of {list(_BITS)} when values are written")
    return _ScaleAndZero.apply(x, float(scale), index.reshape(-1), 1, values)


def scale_and_zero_pixels(x: torch.Tensor, scale: float, pixels: torch.Tensor) -> torch.Tensor:
    """``x * scale`` with every channel of the pixels ``pixels`` zeroed: a mask shared by the
    channels, given as indices (repeats allowed) into a contiguous (N, 1, *spatial) map.

    ``x`` must be stored channels_last (`_layout.pixels_are_rows`): there pixel ``r`` is
    storage row ``r`` of C units. Any other layout would zero the wrong units.
    """
    if not pixels_are_rows(x):
        raise user_error("x layout", tuple(x.stride()), f"channels_last strides for shape {tuple(x.shape)}")
    return _ScaleAndZero.apply(x, float(scale), pixels.reshape(-1), x.shape[1], None)


class _MaskAndScale(torch.autograd.Function):
    """``y = x * mask * scale`` and ``grad_x = grad * mask * scale``, one ``addcmul`` pass each
    (the zero-dim addend broadcasts for free); only the mask is saved for the backward.
    Optionally ``values`` then overwrite storage units ``index`` (which the mask zeroes)."""

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, mask: torch.Tensor, scale: float, index: torch.Tensor | None, values: torch.Tensor | None
    ) -> torch.Tensor:
        ctx.save_for_backward(mask)
        ctx.scale, ctx.layout = scale, (x.shape, x.stride())
        y = _addcmul(x, mask, scale, x.shape, x.stride())
        if index is not None:
            _write_bits(y, index, values)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:
        (mask,) = ctx.saved_tensors
        return _addcmul(grad, mask, ctx.scale, *ctx.layout), None, None, None, None


def _addcmul(
    t: torch.Tensor, mask: torch.Tensor, scale: float, shape: torch.Size, strides: tuple[int, ...]
) -> torch.Tensor:
    out = torch.empty_strided(shape, strides, dtype=t.dtype, device=t.device)
    return torch.addcmul(torch.zeros((), dtype=t.dtype, device=t.device), t, mask, value=scale, out=out)


def mask_and_scale(
    x: torch.Tensor,
    keep: torch.Tensor,
    scale: float,
    index: torch.Tensor | None = None,
    values: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x * keep * scale`` for a 0/1 ``keep`` mask broadcastable to ``x`` (any dtype), in ``x``'s layout.

    ``x`` must be dense; a full-size mask in another layout is copied into ``x``'s (so both
    passes stream). The product is rounded once (``scale`` is not rounded to ``x``'s dtype
    first). ``values`` (no gradient) then overwrite the storage units ``index``, which must
    be dropped ones (Disout's noise).
    """
    _require_dense("x", x)
    if (index is None) != (values is None):
        raise user_error("index, values", (type(index).__name__, type(values).__name__), "both tensors or both None")
    if values is not None and x.dtype not in _BITS:
        raise user_error("x dtype", x.dtype, f"one of {list(_BITS)} when values are written")
    return _MaskAndScale.apply(
        x, mask_like(keep, x), float(scale), None if index is None else index.reshape(-1), values
    )


def mask_like(keep: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``keep`` in ``x``'s dtype; a full-size mask also in ``x``'s strides, so that multiplying
    streams both (channels_last has a blocked conversion kernel; other orders a strided copy)."""
    mask = keep.to(x.dtype)
    if keep.shape != x.shape or keep.stride() == x.stride():
        return mask
    fmt = channels_last_format(x)
    if fmt is not None:
        return mask.contiguous(memory_format=fmt)
    return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device).copy_(mask)


def reference_apply(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The plain ``x * keep * (numel / kept)`` of a bool ``keep`` mask (the reference paths)."""
    return x * keep.to(x.dtype) * (keep.numel() / max(int(keep.sum()), 1))


def apply_keep(
    x: torch.Tensor,
    keep: torch.Tensor,
    how: str,
    kept: torch.Tensor | None = None,
    dropped_pixels: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x * keep * (keep.numel() / kept)``: zero the dropped units, rescale by the kept fraction.

    ``keep``: a dense uint8 0/1 mask, full-size or one per example (N, 1, ...); ``kept``: its
    number of ones when the caller knows it (else counted). ``how`` (`_dispatch.apply_route`):
    "device" keeps the scale on the device (no host sync: CUDA); "rows" zeroes the
    ``dropped_pixels``' rows after a scalar multiply; "masked" is one fused masked multiply.
    """
    if kept is None:
        kept = kept_count(keep)
    if how == "device":
        # a division on the device (``numel / tensor`` would multiply by a rounded reciprocal)
        scale = torch.full((), float(keep.numel()), dtype=torch.float64, device=x.device).div_(kept.clamp_min(1))
        scale = scale.to(x.dtype)
        return x * mask_like(keep, x).mul_(scale)
    scale = keep.numel() / max(int(kept), 1)
    if how == "rows":
        return scale_and_zero_pixels(x, scale, dropped_pixels)
    if how == "masked":
        return mask_and_scale(x, keep, scale)
    raise user_error("how", how, "'device', 'rows' or 'masked'")
