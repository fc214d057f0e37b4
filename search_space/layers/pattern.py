"""AutoDropout's ConvNet dropout pattern (Pham & Le 2021): tiled rectangles, transformed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from search_space.errors import user_error

from ._axes import LayoutAxes
from ._dispatch import ONE_FAST_PATH, Route, check_algorithm, pattern_route
from ._drop_ops import apply_keep, reference_apply
from ._layout import dense_layout
from ._validate import (
    check_choice,
    check_finite,
    check_pair,
    check_prob,
)

Pair = int | Sequence[int]


def tiled_pattern(
    shape: tuple[int, int], size: tuple[int, int], stride: tuple[int, int], repeat: tuple[int, int]
) -> np.ndarray:
    """Boolean (H, W) pattern at offset 0: rectangles ``size`` at rows ``a*sh`` / cols ``b*sw``.

    The map is a torus: rectangles crossing the bottom/right edge wrap around, and tiles whose
    start would lie beyond one map period are dropped (``repeat`` is clamped to
    ``ceil(H / sh)``), so an oversized ``size`` or ``repeat`` saturates instead of failing.
    """
    axes = []
    for n, k, st, rep in zip(shape, size, stride, repeat):
        rep = min(rep, math.ceil(n / st))
        rows = (np.arange(rep)[:, None] * st + np.arange(min(k, n))[None, :]) % n
        axis = np.zeros(n, dtype=bool)
        axis[rows.reshape(-1)] = True
        axes.append(axis)
    return np.logical_and.outer(axes[0], axes[1])


@lru_cache(maxsize=256)
def _source_grid(shape: tuple[int, int], rotate: float, shear_x: float, shear_y: float) -> np.ndarray:
    """For each output unit, the integer (row, col) of the untransformed pattern it shows.

    The forward transform (about the map centre, (y, x) coordinates, y pointing down) is
    ``R(rotate) @ S``, ``S = [[1, shear_y], [shear_x, 1]]``; it is inverted exactly and
    sampled nearest-neighbour, so the identity transform reproduces the pattern unchanged.
    """
    h, w = shape
    th = math.radians(rotate)
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    shear = np.array([[1.0, shear_y], [shear_x, 1.0]])
    fwd = rot @ shear
    if abs(np.linalg.det(fwd)) < 1e-6:
        raise user_error(
            "shear_x, shear_y", (shear_x, shear_y), "shear_x * shear_y != 1 (else the transform is singular)"
        )
    inv = np.linalg.inv(fwd)
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    pts = np.stack([yy.ravel(), xx.ravel()], axis=0) - centre[:, None]
    src = np.floor(inv @ pts + centre[:, None] + 0.5).astype(np.int64)
    return src.reshape(2, h, w)


@lru_cache(maxsize=32)
def _offset_table(
    shape: tuple[int, int],
    size: tuple[int, int],
    stride: tuple[int, int],
    repeat: tuple[int, int],
    rotate: float,
    shear_x: float,
    shear_y: float,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every mask the layer can draw on an (H, W) map, as one uint8 keep table.

    Row ``oy * W + ox`` is the flattened keep mask (1 = kept) for the random offset (oy, ox);
    the extra last row keeps everything (an example/channel that does not get the pattern).
    Also returns the number of kept units per row, so the rescale needs no pass over masks.
    """
    h, w = shape
    base = tiled_pattern(shape, size, stride, repeat)
    src_y, src_x = _source_grid(shape, rotate, shear_x, shear_y).reshape(2, 1, h * w)
    oy, ox = np.divmod(np.arange(h * w)[:, None], w)
    dropped = base[(src_y - oy) % h, (src_x - ox) % w]
    keep = np.concatenate([~dropped, np.ones((1, h * w), dtype=bool)]).astype(np.uint8)
    return torch.as_tensor(keep, device=device), torch.as_tensor(keep.sum(1, dtype=np.int64), device=device)


class PatternDropout(LayoutAxes, nn.Module):
    """Zero a tiled grid of rectangles (the AutoDropout ConvNet pattern) and rescale the rest.

    Pattern: rectangles of ``size`` (h, w) whose top-left corners are ``(a*sh, b*sw)`` for
    ``a < rh``, ``b < rw`` (``stride``, ``repeat``); the rectangles are the dropped units. The
    pattern is optionally rotated (degrees) and sheared about the map centre (nearest
    neighbour), then translated by a uniform random offset on the torus, per example and per
    channel (one offset per example when ``share_channels``). Each example/channel gets the
    pattern with probability ``apply_prob`` (the value a scheduler ramps). Kept units are
    rescaled by ``numel / kept`` of the realized mask. Input (N, C, H, W), or (N, H, W, C) with
    ``layout="NHWC"`` (seen through a permuted view, never copied).
    ``algorithm``: "reference" (per-unit pattern lookup, one masked multiply) or "auto" (a
    cached table of masks on small maps, pixel rows zeroed for shared masks on channels_last).
    """

    prob_attr: ClassVar[str] = "apply_prob"

    def __init__(
        self,
        size: Pair = 2,
        stride: Pair = 4,
        repeat: Pair = 2,
        rotate: float = 0.0,
        shear_x: float = 0.0,
        shear_y: float = 0.0,
        share_channels: bool = False,
        apply_prob: float = 1.0,
        *,
        algorithm: str = "auto",
        layout: str = "NCHW",
    ) -> None:
        super().__init__()
        self.layout = layout
        self.size = check_pair("size", size)
        self.stride = check_pair("stride", stride)
        self.repeat = check_pair("repeat", repeat)
        self.rotate = check_finite("rotate", rotate)
        self.shear_x = check_finite("shear_x", shear_x)
        self.shear_y = check_finite("shear_y", shear_y)
        _source_grid((3, 3), self.rotate, self.shear_x, self.shear_y)  # fail early if singular
        self.share_channels = bool(share_channels)
        self.apply_prob = check_prob("apply_prob", apply_prob, allow_one=True)
        self.algorithm = check_algorithm(algorithm, ONE_FAST_PATH)

    def pattern(self, shape: tuple[int, int]) -> np.ndarray:
        """The untransformed pattern at offset (0, 0) on an (H, W) map (True = dropped)."""
        return tiled_pattern(shape, self.size, self.stride, self.repeat)

    def offsets(self, m: int, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
        """``m`` uniform random offsets ``oy * W + ox``; ``H * W`` (no pattern) for the masks
        that do not get the pattern (probability ``1 - apply_prob``)."""
        cells = shape[0] * shape[1]
        offset = torch.randint(0, cells, (m,), device=device)
        if self.apply_prob < 1.0:
            offset = offset.masked_fill_(torch.rand((m,), device=device) >= self.apply_prob, cells)
        return offset

    def keep_masks(
        self,
        offsets: torch.Tensor,
        shape: tuple[int, int],
        sampler: str = "gather",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 keep masks (1 = kept) for ``offsets``: shape (m, H, W), and the total kept count.

        "gather" (the reference) reads each unit's pattern cell: the unit's source under the
        inverse transform, shifted back by the offset, on the torus. "table" copies one row per
        mask from a cached table of every offset's mask (`_offset_table`).
        """
        h, w = shape
        cells, m, device = h * w, offsets.numel(), offsets.device
        if sampler == "table":
            table, kept = _offset_table(
                shape, self.size, self.stride, self.repeat, self.rotate, self.shear_x, self.shear_y, device
            )
            return table.index_select(0, offsets).view(m, h, w), kept.index_select(0, offsets).sum()
        check_choice("sampler", sampler, ("gather", "table"))
        base = torch.as_tensor(np.append(~self.pattern(shape).reshape(-1), True).astype(np.uint8), device=device)
        src = torch.as_tensor(_source_grid(shape, self.rotate, self.shear_x, self.shear_y), device=device)
        oy, ox = offsets.div(w, rounding_mode="floor").view(m, 1, 1), (offsets % w).view(m, 1, 1)
        idx = ((src[0] - oy) % h) * w + (src[1] - ox) % w
        keep = base[torch.where(offsets.view(m, 1, 1) == cells, cells, idx)]
        return keep, keep.sum(dtype=torch.int64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lay = self._checked(x)
        p = check_prob("apply_prob", self.apply_prob, allow_one=True)
        if not self.training or p == 0.0:
            return x
        return lay.from_channels_first(self.drop(lay.to_channels_first(x)))

    def drop(self, x: torch.Tensor, *, route: Route | None = None, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """Train-mode output of a channels-first ``x`` (N, C, H, W): the layer's one decision
        and its paths. ``route`` (default:
        `_dispatch.pattern_route`) and ``offsets`` replace the dispatch's choice and the draw."""
        x = dense_layout(x)
        n, c, h, w = x.shape
        m_c = 1 if self.share_channels else c
        route = route or pattern_route(self.algorithm, x, self.share_channels)
        if offsets is None:
            offsets = self.offsets(n * m_c, (h, w), x.device)
        keep, kept = self.keep_masks(offsets, (h, w), route.sampler)
        keep = keep.view(n, m_c, h, w)
        if route.apply == "reference":
            return reference_apply(x, keep == 1)
        pixels = torch.nonzero(keep.view(-1) == 0).view(-1) if route.apply == "rows" else None
        return apply_keep(x, keep, route.apply, kept, pixels)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, stride={self.stride}, repeat={self.repeat}, rotate={self.rotate}, "
            f"shear_x={self.shear_x}, shear_y={self.shear_y}, share_channels={self.share_channels}, "
            f"apply_prob={self.apply_prob}" + ("" if self.layout == "NCHW" else f", layout={self.layout!r}")
        )
