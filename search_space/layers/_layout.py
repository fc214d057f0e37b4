"""Memory layouts the fast CPU paths rely on, named and checked in one place.

The fast paths address units by their offset in storage (a mask, a list of dropped cells,
one row per pixel); that is only right for the layouts these functions accept, so each one
checks its precondition and fails loudly instead of scrambling a mask.
"""

from __future__ import annotations

import torch

from search_space.errors import user_error


def is_dense(x: torch.Tensor) -> bool:
    """Whether ``x``'s elements tile one block of memory without gaps or overlaps (contiguous
    in some order of its dimensions, e.g. channels_last)."""
    if x.is_contiguous() or _is_channels_last(x):  # the usual layouts, checked in C++
        return True
    expected = 1
    for d in sorted(range(x.dim()), key=x.stride):
        if x.shape[d] == 1:
            continue
        if x.stride(d) != expected:
            return False
        expected *= x.shape[d]
    return True


def dense_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when `is_dense`, else a contiguous copy. Masks are then allocated with
    ``x``'s strides, so mask and input stream through memory in the same order."""
    return x if is_dense(x) else x.contiguous()


def storage_view(t: torch.Tensor) -> torch.Tensor:
    """1-D view of ``t`` in memory order; ``t`` must be dense (`is_dense`)."""
    if not is_dense(t):
        raise user_error("layout", tuple(t.stride()), f"the strides of a dense layout of shape {tuple(t.shape)}")
    return flat_storage(t)


def flat_storage(t: torch.Tensor) -> torch.Tensor:
    """`storage_view` without the check, for tensors allocated here with a dense input's strides."""
    return t.as_strided((t.numel(),), (1,), t.storage_offset())


def laid_out(t: torch.Tensor, strides: tuple[int, ...]) -> torch.Tensor:
    """A copy of ``t`` with the dense ``strides`` (e.g. an input's), same values."""
    return torch.empty_strided(t.shape, strides, dtype=t.dtype, device=t.device).copy_(t)


def storage_offsets(mask: torch.Tensor, strides: tuple[int, ...]) -> torch.Tensor:
    """Storage offsets (int64) of the True units of bool ``mask`` in a tensor with ``strides``."""
    return storage_view(laid_out(mask, strides)).nonzero().view(-1)


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The strides of a contiguous tensor of ``shape``."""
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(strides))


_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def _is_channels_last(x: torch.Tensor) -> bool:
    fmt = _CHANNELS_LAST.get(x.dim())
    return fmt is not None and x.is_contiguous(memory_format=fmt)


def channels_last_format(x: torch.Tensor) -> torch.memory_format | None:
    """channels_last (4-D) or channels_last_3d (5-D) when ``x`` is stored that way, else None."""
    return _CHANNELS_LAST[x.dim()] if _is_channels_last(x) else None


def pixels_are_rows(x: torch.Tensor) -> bool:
    """Whether ``x`` (N, C, *spatial) is stored (N, *spatial, C): channels_last (4-D),
    channels_last_3d (5-D), or the same order for a 1-D map (N, C, L) stored (N, L, C), e.g. a
    channels-first view of (N, T, C) tokens. Then the units of one pixel are one storage row
    of C, and row ``r`` is unit ``r`` of a contiguous (N, 1, *spatial) map. Other gap-free
    orders with the channels innermost (e.g. N, W, H, C) number their pixels differently."""
    if channels_last_format(x) is not None:
        return True
    return x.dim() == 3 and x.permute(0, 2, 1).is_contiguous()
