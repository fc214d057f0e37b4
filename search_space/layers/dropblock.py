"""DropBlock (Ghiasi et al. 2018) that realizes the requested drop rate exactly."""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ._blocks import ALGORITHMS, contiguous_strides, dense_layout, keep_scale, kept_count, sample_blocks, seed_rate
from ._checks import check_int, check_prob, check_rank
from ._drop_ops import mask_and_scale, pixels_are_rows, scale_and_zero


class _DropBlockNd(nn.Module):
    """Zero contiguous blocks; the expected zeroed fraction equals ``drop_prob``.

    Seeds may fall on every unit and the block is centred on its seed (clipped at the border),
    as in timm and the ``dropblock`` package; the seed rate accounts for block overlap and
    border clipping (see ``_blocks.seed_rate``). A block larger than the map is clamped to the
    map size per dimension. Kept units are rescaled by ``numel / kept`` of the realized mask.
    ``share_channels=True`` draws one mask per example shared by all channels (timm's
    ``couple_channels=True``, the ``dropblock`` package); otherwise one mask per channel.
    ``algorithm`` picks the sampler ("auto": sparse scatter on CPU, dense max-pool on CUDA);
    all choices sample the same distribution. The backward pass is one multiply by the mask
    (on CPU fused with the rescale; shared masks on channels_last: a scalar multiply and the
    same rows zeroed, see `_drop_ops`).
    """

    prob_attr: ClassVar[str] = "drop_prob"
    _spatial: ClassVar[int] = 2

    def __init__(
        self,
        drop_prob: float = 0.1,
        block_size: int = 7,
        share_channels: bool = False,
        *,
        algorithm: str = "auto",
    ) -> None:
        super().__init__()
        self.drop_prob = check_prob("drop_prob", drop_prob)
        self.block_size = check_int("block_size", block_size)
        self.share_channels = bool(share_channels)
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        self.algorithm = algorithm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layout = "(N, C, H, W)" if self._spatial == 2 else "(N, C, D, H, W)"
        check_rank(type(self).__name__, x, (self._spatial + 2,), layout)
        p = check_prob("drop_prob", self.drop_prob)
        bs = check_int("block_size", self.block_size)
        if not self.training or p == 0.0:
            return x
        x = dense_layout(x)
        n, c, *size = x.shape
        kernel = tuple(min(bs, s) for s in size)
        rate = seed_rate(p, kernel, tuple(size), False)
        # per-channel masks take the input's strides (channels_last stays channels_last)
        shape = (n, 1, *size) if self.share_channels else tuple(x.shape)
        strides = contiguous_strides(shape) if self.share_channels else x.stride()
        rows = self.share_channels and pixels_are_rows(x)  # channels_last: a shared cell is a row of C units
        sample = sample_blocks(shape, strides, kernel, rate, False, x.device, self.algorithm, want_cells=rows)
        if x.device.type != "cpu":
            return x * keep_scale(sample.keep, x.dtype)
        scale = sample.keep.numel() / max(int(kept_count(sample.keep)), 1)
        if rows and sample.cells is not None:
            # zeroing rows after a scalar multiply is 2-5x faster than the broadcast multiply
            # (its inner loop is as short as the channel count)
            return scale_and_zero(x, scale, sample.cells, c)
        return mask_and_scale(x, sample.keep, scale)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, block_size={self.block_size}, share_channels={self.share_channels}"


class DropBlock2d(_DropBlockNd):
    """DropBlock on (N, C, H, W) feature maps with an exact realized drop rate."""

    _spatial = 2


class DropBlock3d(_DropBlockNd):
    """DropBlock on (N, C, D, H, W) volumes (cubic blocks) with an exact realized drop rate."""

    _spatial = 3
