"""Disout (Tang et al., AAAI 2020): replace blocks of units by scaled Gaussian distortion."""
from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from ._blocks import ALGORITHMS, dense_layout, kept_count, sample_blocks, seed_rate
from ._checks import check_int, check_prob, check_rank
from ._drop_ops import mask_and_scale, scale_and_zero

# Above this many noise cells (repeats included) per unit the backward multiplies by the mask
# instead of zeroing the cells again (scattered writes cost more than one streaming pass).
_ZERO_MAX_CELLS_PER_UNIT = 0.15


def _detached_std(x: torch.Tensor) -> torch.Tensor | float:
    """std of all of ``x`` (unbiased, as ``torch.var``), without gradient.

    On CPU from one sum and one norm, ~8x cheaper than ``torch.var``'s Welford pass;
    ``torch.var`` is kept where the mean dominates the spread (cancellation). bf16 inputs are
    reduced in bf16 (fp32 accumulation inside, one rounding of each result, ~0.4%): asking
    for an fp32 result first copies all of ``x`` to fp32, which took 4x longer. Below float64
    the cancellation guard is strict (mean^2 <= var): the std's error is then ~1% in bf16
    (the precision of the bf16 noise) and far below in fp32.
    """
    x = x.detach()
    n = x.numel()
    if n < 2:
        return 0.0  # no spread to measure (torch.var would warn and give nan)
    if x.device.type != "cpu":
        return x.float().var().clamp_min(0.0).sqrt()
    acc = {torch.bfloat16: torch.bfloat16, torch.float64: torch.float64}.get(x.dtype, torch.float32)
    mean = float(x.sum(dtype=acc)) / n
    sq = float(torch.linalg.vector_norm(x, dtype=acc)) ** 2 / n
    var = (sq - mean * mean) * n / (n - 1)
    if mean * mean > (100.0 if acc == torch.float64 else 1.0) * var:
        var = float(x.to(torch.float64 if x.dtype == torch.float64 else torch.float32).var())
    return math.sqrt(max(var, 0.0))


class Disout(nn.Module):
    """Block-structured feature-map distortion, same interface as the official layer.

    Selection follows the official code's geometry: seeds per example and channel, only where
    a whole block fits (the valid region); the block is clamped to the map when larger. The
    seed rate is solved exactly (``_blocks.seed_rate``) instead of the official closed form,
    which ignores block overlap; so the realized selected fraction matches ``dist_prob``.
    Selected units become ``alpha * w * std(x) * N(0, 1)`` with ``std`` a detached scalar over
    the tensor and ``w`` per input channel from ``weight_behind`` (the next conv's weight:
    max over output channels, random sign per entry, mean over the kernel window, x0.1 for
    1x1 kernels), or 0.01 without it. Output is divided by the realized kept fraction.
    ``weight_behind`` is stored detached (it shares storage, so optimizer updates are seen,
    but it never becomes a parameter of this module nor receives gradients from it).
    """

    prob_attr: ClassVar[str] = "dist_prob"

    def __init__(self, dist_prob: float = 0.09, block_size: int = 6, alpha: float = 1.0, *, algorithm: str = "auto") -> None:
        super().__init__()
        self.dist_prob = check_prob("dist_prob", dist_prob)
        self.block_size = check_int("block_size", block_size)
        self.alpha = float(alpha)
        if not self.alpha >= 0.0:
            raise ValueError(f"alpha must be a number >= 0, got {alpha!r}")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        self.algorithm = algorithm
        self.weight_behind: torch.Tensor | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "weight_behind":
            if value is not None and not isinstance(value, torch.Tensor):
                raise ValueError(f"weight_behind must be a Tensor or None, got {type(value).__name__}")
            object.__setattr__(self, name, None if value is None else value.detach())
            return
        super().__setattr__(name, value)

    def _channel_weight(self, x: torch.Tensor) -> torch.Tensor | float:
        w = self.weight_behind
        if w is None or w.numel() == 0:
            return 0.01
        if w.dim() != 4 or w.shape[1] != x.shape[1]:
            raise ValueError(
                f"weight_behind must be a conv weight (out, {x.shape[1]}, kh, kw) matching the input "
                f"channels, got shape {tuple(w.shape)}"
            )
        w_max = w.to(device=x.device, dtype=torch.float32).amax(dim=0, keepdim=True)
        sign = torch.where(torch.rand_like(w_max) < 0.5, -1.0, 1.0)
        w_mean = (w_max * sign).mean(dim=(2, 3), keepdim=True)
        if w.shape[2] * w.shape[3] == 1:
            w_mean = 0.1 * w_mean
        return w_mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_rank("Disout", x, (4,), "(N, C, H, W)")
        p = check_prob("dist_prob", self.dist_prob)
        bs = check_int("block_size", self.block_size)
        if not self.training or p == 0.0:
            return x
        x = dense_layout(x)
        n, c, h, w = x.shape
        kernel = (min(bs, h), min(bs, w))
        rate = seed_rate(p, kernel, (h, w), True)
        sample = sample_blocks(tuple(x.shape), x.stride(), kernel, rate, True, x.device, self.algorithm, want_cells=True)
        keep = sample.keep
        if sample.cells is None:  # dense sampler (CUDA): noise drawn for every unit, then masked
            keep_f = keep.to(x.dtype)
            kept_frac = keep_f.mean(dtype=torch.float32).clamp_min(1.0 / keep.numel())
            scale = (self.alpha * _detached_std(x)) * self._channel_weight(x)
            dist = torch.randn(x.shape, device=x.device, dtype=torch.float32) * scale
            dist = (dist * (1 - keep) / kept_frac).to(x.dtype)
            return x * (keep_f / kept_frac.to(x.dtype)) + dist
        # sparse sampler (CPU): noise drawn only for the dropped cells, written over x * scale
        inv_kept_frac = keep.numel() / max(int(kept_count(keep)), 1)
        weight = self._channel_weight(x)
        scale = self.alpha * _detached_std(x) * inv_kept_frac
        if isinstance(weight, torch.Tensor):
            first = sample.cells[:, 0]  # a block lies in one channel: its first cell names it
            unit = first if x.stride(1) == 1 else first.div(x.stride(1), rounding_mode="floor")  # channels_last: no div
            channel = unit.remainder(c)
            seed_scale = weight.view(c).index_select(0, channel).mul_(scale)[:, None]
        else:
            seed_scale = weight * scale
        noise = torch.randn(sample.cells.shape, device=x.device, dtype=torch.float32).mul_(seed_scale).view(-1)
        if sample.cells.numel() <= _ZERO_MAX_CELLS_PER_UNIT * x.numel():  # backward: zero the cells again
            return scale_and_zero(x, inv_kept_frac, sample.cells, values=noise)
        return mask_and_scale(x, keep, inv_kept_frac, sample.cells, noise)  # backward: one masked multiply

    def extra_repr(self) -> str:
        return f"dist_prob={self.dist_prob}, block_size={self.block_size}, alpha={self.alpha}"
