"""Disout (Tang et al., AAAI 2020): replace blocks of units by scaled Gaussian distortion."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from search_space.errors import user_error

from ._axes import LayoutAxes
from ._blocks import (
    BlockSample,
    grow_blocks,
    kept_count,
    reference_seeds,
    sample_blocks,
    seed_rate,
)
from ._dispatch import Route, block_route, check_algorithm, zero_cells_again
from ._drop_ops import mask_and_scale, scale_and_zero
from ._layout import dense_layout, laid_out, storage_view
from ._validate import check_int, check_prob

Scale = torch.Tensor | float  # per input channel, (1, C, 1, 1), or one number


def disout_reference(
    x: torch.Tensor,
    kernel: tuple[int, int],
    rate: float,
    weight: Scale,
    alpha: float,
    seeds: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """The paper's Disout with our exact seed ``rate``: Bernoulli seeds where a whole block
    fits, blocks grown by max-pool, selected units replaced by ``alpha * weight * std(x) *
    N(0, 1)``, everything divided by the kept fraction. ``seeds`` (bool, (N, C, *seed grid))
    and ``noise`` (standard normal, x's shape) replace the random draws."""
    if seeds is None:
        seeds = reference_seeds(tuple(x.shape), kernel, rate, True, x.device)
    keep = (grow_blocks(seeds.float(), tuple(x.shape[2:]), kernel, True) == 0).to(x.dtype)
    if noise is None:
        noise = torch.randn(x.shape, device=x.device)
    std = x.detach().double().var().sqrt()
    dist = (alpha * weight * std * noise).to(x.dtype)
    return (x * keep + dist * (1 - keep)) * (keep.numel() / max(float(keep.sum()), 1.0))


def _distort_cells(x: torch.Tensor, sample: BlockSample, scale: Scale, noise: torch.Tensor | None) -> torch.Tensor:
    """Noise drawn for the listed dropped cells only (``noise``: standard normal per cell, or
    drawn), written over ``x / kept fraction``; the backward zeroes the cells again while they
    are few (no mask saved), else multiplies by the mask."""
    keep, cells = sample.keep, sample.cells
    c = x.shape[1]
    inv_kept_frac = keep.numel() / max(int(kept_count(keep)), 1)
    if isinstance(scale, torch.Tensor):
        # a block lies in one channel: its first cell's storage offset names it (x is dense)
        first = cells[:, 0]
        unit = first if x.stride(1) == 1 else first.div(x.stride(1), rounding_mode="floor")  # channels_last: no div
        seed_scale = scale.reshape(c).index_select(0, unit.remainder(c)).mul_(inv_kept_frac)[:, None]
    else:
        seed_scale = scale * inv_kept_frac
    noise = (
        torch.randn(cells.shape, device=x.device, dtype=torch.float32)
        if noise is None
        else noise.to(torch.float32, copy=True)
    )
    values = noise.mul_(seed_scale).view(-1)
    if zero_cells_again(cells.numel(), x.numel()):
        return scale_and_zero(x, inv_kept_frac, cells, values=values)
    return mask_and_scale(x, keep, inv_kept_frac, cells, values)


def _distort_dense(x: torch.Tensor, keep: torch.Tensor, scale: Scale, noise: torch.Tensor | None) -> torch.Tensor:
    """Noise drawn for every unit, then masked: the dense samplers list no cells. No host sync
    (the CUDA path)."""
    keep_f = keep.to(x.dtype)
    kept_frac = keep_f.mean(dtype=torch.float32).clamp_min(1.0 / keep.numel())
    if noise is None:
        noise = torch.randn(x.shape, device=x.device, dtype=torch.float32)
    dist = (noise * scale * (1 - keep) / kept_frac).to(x.dtype)
    return x * (keep_f / kept_frac.to(x.dtype)) + dist


def _detached_std(x: torch.Tensor) -> torch.Tensor | float:
    """std of all of ``x`` (unbiased, as ``torch.var``), without gradient.

    On CPU from one sum and one norm: two vectorised reductions, where ``torch.var``'s
    Welford pass updates a running mean per element (serial, not vectorised); ``torch.var``
    is kept where the mean dominates the spread (cancellation). bf16 inputs are reduced in
    bf16 (fp32 accumulation inside, one rounding of each result, ~0.4%): asking for an fp32
    result first copies all of ``x`` to fp32 (a full-size write and read). Below float64
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


class Disout(LayoutAxes, nn.Module):
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
    ``layout``: "NCHW" (default) or "NHWC" (a channels-last map: blocks in H, W, seen
    through a permuted view, never copied).
    """

    prob_attr: ClassVar[str] = "dist_prob"

    def __init__(
        self,
        dist_prob: float = 0.09,
        block_size: int = 6,
        alpha: float = 1.0,
        *,
        algorithm: str = "auto",
        layout: str = "NCHW",
    ) -> None:
        super().__init__()
        self.layout = layout
        self.dist_prob = check_prob("dist_prob", dist_prob)
        self.block_size = check_int("block_size", block_size)
        self.alpha = float(alpha)
        if not self.alpha >= 0.0:
            raise user_error("alpha", alpha, "a number >= 0")
        self.algorithm = check_algorithm(algorithm)
        self.weight_behind: torch.Tensor | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "weight_behind":
            if value is not None and not isinstance(value, torch.Tensor):
                raise user_error("weight_behind", type(value).__name__, "a Tensor or None")
            object.__setattr__(self, name, None if value is None else value.detach())
            return
        super().__setattr__(name, value)

    def channel_weight(self, x: torch.Tensor) -> Scale:
        """``w``: per input channel of a channels-first ``x`` from ``weight_behind`` ((1, C, 1, 1)
        float32, random signs drawn here), or 0.01 without it. A Linear weight (out, C), the
        next layer of a channels-last map, counts as a 1x1 kernel."""
        w = self.weight_behind
        if w is None or w.numel() == 0:
            return 0.01
        if w.dim() == 2:
            w = w[:, :, None, None]
        if w.dim() != 4 or w.shape[1] != x.shape[1]:
            raise user_error(
                "weight_behind shape",
                tuple(w.shape),
                f"a conv weight (out, {x.shape[1]}, kh, kw) or a Linear weight (out, {x.shape[1]}) matching the "
                "input channels",
            )
        w_max = w.to(device=x.device, dtype=torch.float32).amax(dim=0, keepdim=True)
        sign = torch.where(torch.rand_like(w_max) < 0.5, -1.0, 1.0)
        w_mean = (w_max * sign).mean(dim=(2, 3), keepdim=True)
        if w.shape[2] * w.shape[3] == 1:
            w_mean = 0.1 * w_mean
        return w_mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lay = self._checked(x)
        p = check_prob("dist_prob", self.dist_prob)
        bs = check_int("block_size", self.block_size)
        if not self.training or p == 0.0:
            return x
        return lay.from_channels_first(self.distort(lay.to_channels_first(x), p, bs))

    def distort(
        self,
        x: torch.Tensor,
        dist_prob: float,
        block_size: int,
        *,
        route: Route | None = None,
        seeds: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Train-mode output of a channels-first ``x`` (N, C, H, W): the layer's one decision
        and its paths.

        ``route`` (default: `_dispatch.block_route`), ``seeds`` (bool, (N, C, *seed grid)) and
        ``noise`` (standard normal, x's shape) replace the dispatch's choice and the random
        draws, so tests drive every path, the reference included, from the same ones.
        """
        x = dense_layout(x)
        kernel = (min(block_size, x.shape[2]), min(block_size, x.shape[3]))
        rate = seed_rate(dist_prob, kernel, tuple(x.shape[2:]), True)
        route = route or block_route(self.algorithm, x, rate, kernel, True, distort=True)
        weight = self.channel_weight(x)
        if route.sampler == "reference":
            return disout_reference(x, kernel, rate, weight, self.alpha, seeds, noise)
        sample = sample_blocks(tuple(x.shape), x.stride(), kernel, rate, True, x.device, route.sampler, seeds, True)
        scale = self.alpha * _detached_std(x) * weight
        if route.apply == "noise":
            return _distort_dense(x, sample.keep, scale, noise)
        if noise is not None:  # injected: each listed cell takes the noise of its unit
            noise = storage_view(laid_out(noise, x.stride())).index_select(0, sample.cells.view(-1))
            noise = noise.view(sample.cells.shape)
        return _distort_cells(x, sample, scale, noise)

    def extra_repr(self) -> str:
        text = f"dist_prob={self.dist_prob}, block_size={self.block_size}, alpha={self.alpha}"
        return text + ("" if self.layout == "NCHW" else f", layout={self.layout!r}")
