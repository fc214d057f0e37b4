"""AutoDropout's ConvNet dropout pattern (Pham & Le 2021): tiled rectangles, transformed."""
from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ._blocks import dense_layout
from ._checks import check_pair, check_prob, check_rank
from ._drop_ops import mask_and_scale, mask_like, pixels_are_rows, scale_and_zero

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
        raise ValueError(f"shear_x={shear_x} and shear_y={shear_y} make the transform singular (shear_x*shear_y == 1)")
    inv = np.linalg.inv(fwd)
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    pts = np.stack([yy.ravel(), xx.ravel()], axis=0) - centre[:, None]
    src = np.floor(inv @ pts + centre[:, None] + 0.5).astype(np.int64)
    return src.reshape(2, h, w)


_TABLE_MAX_UNITS = 4096  # maps up to 64x64: a table of at most 16 MiB per pattern and map size


@lru_cache(maxsize=32)
def _offset_table(
    shape: tuple[int, int], size: tuple[int, int], stride: tuple[int, int], repeat: tuple[int, int],
    rotate: float, shear_x: float, shear_y: float, device: torch.device,
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


class PatternDropout(nn.Module):
    """Zero a tiled grid of rectangles (the AutoDropout ConvNet pattern) and rescale the rest.

    Pattern: rectangles of ``size`` (h, w) whose top-left corners are ``(a*sh, b*sw)`` for
    ``a < rh``, ``b < rw`` (``stride``, ``repeat``); the rectangles are the dropped units. The
    pattern is optionally rotated (degrees) and sheared about the map centre (nearest
    neighbour), then translated by a uniform random offset on the torus, per example and per
    channel (one offset per example when ``share_channels``). Each example/channel gets the
    pattern with probability ``apply_prob`` (the value a scheduler ramps). Kept units are
    rescaled by ``numel / kept`` of the realized mask. Input (N, C, H, W).
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
    ) -> None:
        super().__init__()
        self.size = check_pair("size", size)
        self.stride = check_pair("stride", stride)
        self.repeat = check_pair("repeat", repeat)
        for name, v in (("rotate", rotate), ("shear_x", shear_x), ("shear_y", shear_y)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        self.rotate, self.shear_x, self.shear_y = float(rotate), float(shear_x), float(shear_y)
        _source_grid((3, 3), self.rotate, self.shear_x, self.shear_y)  # fail early if singular
        self.share_channels = bool(share_channels)
        self.apply_prob = check_prob("apply_prob", apply_prob, allow_one=True)

    def pattern(self, shape: tuple[int, int]) -> np.ndarray:
        """The untransformed pattern at offset (0, 0) on an (H, W) map (True = dropped)."""
        return tiled_pattern(shape, self.size, self.stride, self.repeat)

    def keep_masks(self, m: int, shape: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``m`` uint8 keep masks (1 = kept): shape (m, H, W), and the total kept count.

        Small maps look the masks up in a cached table of all H*W offsets (one row copy per
        mask); larger maps index the pattern per unit.
        """
        h, w = shape
        cells = h * w
        offset = torch.randint(0, cells, (m,), device=device)
        if self.apply_prob < 1.0:
            off = torch.rand((m,), device=device) >= self.apply_prob
            offset = offset.masked_fill_(off, cells)  # the table's all-kept row
        if cells <= _TABLE_MAX_UNITS:
            table, kept = _offset_table(shape, self.size, self.stride, self.repeat, self.rotate, self.shear_x,
                                        self.shear_y, device)
            return table.index_select(0, offset).view(m, h, w), kept.index_select(0, offset).sum()
        base = torch.as_tensor(np.append(~self.pattern(shape).reshape(-1), True).astype(np.uint8), device=device)
        src = torch.as_tensor(_source_grid(shape, self.rotate, self.shear_x, self.shear_y), device=device)
        oy, ox = offset.div(w, rounding_mode="floor").view(m, 1, 1), (offset % w).view(m, 1, 1)
        idx = ((src[0] - oy) % h) * w + (src[1] - ox) % w
        keep = base[torch.where(offset.view(m, 1, 1) == cells, cells, idx)]
        return keep, keep.sum(dtype=torch.int64)

    def masks(self, m: int, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
        """Sample ``m`` boolean drop masks (True = dropped) of ``shape``: shape (m, H, W)."""
        return self.keep_masks(m, shape, device)[0] == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_rank("PatternDropout", x, (4,), "(N, C, H, W)")
        p = check_prob("apply_prob", self.apply_prob, allow_one=True)
        if not self.training or p == 0.0:
            return x
        x = dense_layout(x)
        n, c, h, w = x.shape
        m_c = 1 if self.share_channels else c
        keep, kept = self.keep_masks(n * m_c, (h, w), x.device)
        keep = keep.view(n, m_c, h, w)
        numel = keep.numel()
        if x.device.type == "cpu":  # host scalar: cheap here, saves small ops
            scale = numel / max(int(kept), 1)
            if self.share_channels and pixels_are_rows(x):  # channels_last: a dropped unit is a row of C
                return scale_and_zero(x, scale, torch.nonzero(keep.view(-1) == 0).view(-1), c)
            return mask_and_scale(x, keep, scale)
        scale_t = (numel / kept.clamp_min(1).double()).to(x.dtype)  # no host sync on CUDA
        return x * mask_like(keep, x).mul_(scale_t)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, stride={self.stride}, repeat={self.repeat}, rotate={self.rotate}, "
            f"shear_x={self.shear_x}, shear_y={self.shear_y}, share_channels={self.share_channels}, "
            f"apply_prob={self.apply_prob}"
        )
