"""DropBlock (Ghiasi et al. 2018) that realizes the requested drop rate exactly."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ._axes import LayoutAxes
from ._blocks import grow_blocks, reference_seeds, sample_blocks, seed_rate
from ._dispatch import Route, block_route, check_algorithm
from ._drop_ops import apply_keep, reference_apply
from ._layout import contiguous_strides, dense_layout
from ._validate import check_int, check_prob


def dropblock_reference(
    x: torch.Tensor, kernel: tuple[int, ...], rate: float, share_channels: bool, seeds: torch.Tensor | None = None
) -> torch.Tensor:
    """The paper's DropBlock with our exact seed ``rate``: a Bernoulli seed per unit and mask
    (one mask per example when ``share_channels``), blocks grown by max-pool, one masked
    multiply rescaled by the realized kept fraction. ``seeds`` replace the random draw."""
    n, c, *size = x.shape
    if seeds is None:
        seeds = reference_seeds((n, 1 if share_channels else c, *size), kernel, rate, False, x.device)
    return reference_apply(x, grow_blocks(seeds.float(), tuple(size), kernel, False) == 0)


def drop_block(
    x: torch.Tensor,
    drop_prob: float,
    block_size: int,
    share_channels: bool = False,
    algorithm: str = "auto",
    *,
    route: Route | None = None,
    seeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Train-mode DropBlock of ``x`` (N, C, *spatial): the layer's one decision and its paths.

    ``route`` (default: `_dispatch.block_route`) and ``seeds`` (bool, (N, C or 1, *spatial))
    replace the dispatch's choice and the random draw, so tests can drive every path, the
    reference included, from the same seeds.
    """
    x = dense_layout(x)
    n, _, *size = x.shape
    kernel = tuple(min(block_size, s) for s in size)
    rate = seed_rate(drop_prob, kernel, tuple(size), False)
    route = route or block_route(algorithm, x, rate, kernel, False, shared=share_channels)
    if route.sampler == "reference":
        return dropblock_reference(x, kernel, rate, share_channels, seeds)
    # per-channel masks take the input's strides (channels_last stays channels_last)
    shape = (n, 1, *size) if share_channels else tuple(x.shape)
    strides = contiguous_strides(shape) if share_channels else x.stride()
    sample = sample_blocks(shape, strides, kernel, rate, False, x.device, route.sampler, seeds, route.want_cells)
    return apply_keep(x, sample.keep, route.apply, dropped_pixels=sample.cells)


class _DropBlockNd(LayoutAxes, nn.Module):
    """Zero contiguous blocks; the expected zeroed fraction equals ``drop_prob``.

    Seeds may fall on every unit and the block is centred on its seed (clipped at the border),
    as in timm and the ``dropblock`` package; the seed rate accounts for block overlap and
    border clipping (see ``_blocks.seed_rate``). A block larger than the map is clamped to the
    map size per dimension. Kept units are rescaled by ``numel / kept`` of the realized mask.
    ``share_channels=True`` draws one mask per example shared by all channels (timm's
    ``couple_channels=True``, the ``dropblock`` package); otherwise one mask per channel.
    ``algorithm``: "reference" (the paper's algorithm, `dropblock_reference`), or a fast
    sampler ("sparse", "dense"; "auto" picks by device and density, `_dispatch.block_route`);
    all sample the same distribution and apply it the same way.
    ``layout`` (`search_space.layouts`): where the channels and map axes are, e.g. "NHWC" for
    a channels-last map (blocks in H, W, a shared mask drops whole positions); the input is
    seen through a permuted view, never copied.
    """

    prob_attr: ClassVar[str] = "drop_prob"
    _default_layout: ClassVar[str] = "NCHW"

    def __init__(
        self,
        drop_prob: float = 0.1,
        block_size: int = 7,
        share_channels: bool = False,
        *,
        algorithm: str = "auto",
        layout: str | None = None,
    ) -> None:
        super().__init__()
        self.drop_prob = check_prob("drop_prob", drop_prob)
        self.block_size = check_int("block_size", block_size)
        self.share_channels = bool(share_channels)
        self.algorithm = check_algorithm(algorithm)
        self.layout = self._default_layout if layout is None else layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lay = self._checked(x)
        p = check_prob("drop_prob", self.drop_prob)
        bs = check_int("block_size", self.block_size)
        if not self.training or p == 0.0:
            return x
        return lay.from_channels_first(drop_block(lay.to_channels_first(x), p, bs, self.share_channels, self.algorithm))

    def extra_repr(self) -> str:
        text = f"drop_prob={self.drop_prob}, block_size={self.block_size}, share_channels={self.share_channels}"
        return text + ("" if self.layout == self._default_layout else f", layout={self.layout!r}")


class DropBlock1d(_DropBlockNd):
    """DropBlock on 1-D maps, (N, C, L) by default (blocks of ``block_size`` along L) or tokens
    (``layout="NTC"``/``"TNC"``: blocks along T), with an exact realized drop rate."""

    _spatial = (1,)
    _default_layout = "NCL"


class DropBlock2d(_DropBlockNd):
    """DropBlock on (N, C, H, W) feature maps (or ``layout="NHWC"``) with an exact realized drop rate."""

    _spatial = (2,)
    _default_layout = "NCHW"


class DropBlock3d(_DropBlockNd):
    """DropBlock on (N, C, D, H, W) volumes (or ``layout="NDHWC"``; cubic blocks) with an exact
    realized drop rate."""

    _spatial = (3,)
    _default_layout = "NCDHW"
