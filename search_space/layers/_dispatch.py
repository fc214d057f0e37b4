"""Which implementation a layer runs: every device/sampler decision and its thresholds.

Each layer has a short ``algorithm="reference"`` path (the paper's algorithm: Bernoulli seeds,
max-pool dilation, one masked multiply) and faster paths that compute the same function;
tests require equal outputs and gradients from the same seeds or masks. A layer's
``forward`` asks this module once which path to take and runs it.

The thresholds below are cost crossovers, not one machine's timings. On CPU, inside
training, activations are far larger than the caches, so a regularizer's cost is the bytes
it moves; each threshold sits where a scattered write per dropped cell starts to cost more
than one more streaming pass over the map (or the other way round). Moving one only moves
work between exact paths: results keep the same distribution.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import torch

from ._layout import pixels_are_rows
from ._validate import check_choice

#: the values of the block layers' and Dropout's ``algorithm`` argument ("auto" picks by
#: device and density; "sparse"/"dense" force a sampler)
ALGORITHMS = ("auto", "reference", "sparse", "dense")
#: the ``algorithm`` values of the layers with one fast path (PatternDropout, SequenceDropout,
#: SpatialDropout): nothing to force, so only "auto" or the reference
ONE_FAST_PATH = ("auto", "reference")

#: Block sampler: below this many dropped cells per map unit (block repeats included) the
#: sparse sampler scatters each seed's cells into a kept-everywhere mask; above it the dense
#: sampler (seeds + separable shifted maxima, a few uint8 passes whose cost does not grow with
#: the rate) is cheaper. A scattered write costs several streaming uint8 units.
SPARSE_MAX_CELLS_PER_UNIT = 0.15
#: The same crossover when the caller uses the dropped cells' offsets (Disout writes its
#: noise there; shared masks on channels_last zero those pixel rows): the dense sampler
#: would then cost a full-size noise draw or a broadcast multiply, so sparse wins far longer.
SPARSE_MAX_CELLS_PER_UNIT_WITH_CELLS = 8.0
#: Independent drops (block size 1): below this mean number of hits per unit,
#: ``-log(1 - p)``, sparse hits (a 32-bit draw and a scattered write each) are cheaper than
#: one random byte per unit (8 units per 64-bit draw, one streaming pass).
HITS_MAX_RATE = 0.15
#: Disout's backward: below this many noise cells per unit the gradient is ``grad * scale``
#: with the cells zeroed again (no mask kept); above it, one multiply by the saved mask.
ZERO_AGAIN_MAX_CELLS_PER_UNIT = 0.15
#: Counting a uint8 mask's ones as 64-bit words (`_blocks.kept_count`) pays from this size
#: on; below it the few extra small ops cost more than the one pass they save.
WORDS_MIN_UNITS = 1 << 18
#: PatternDropout looks masks up in a cached table of every offset's mask up to maps of
#: this many units (64x64: a table of at most 16 MiB per pattern and map size); larger maps
#: index the pattern per unit, like the reference.
TABLE_MAX_UNITS = 4096


def check_algorithm(algorithm: object, choices: tuple[str, ...] = ALGORITHMS) -> str:
    """Return ``algorithm`` if it is one of ``choices`` (`ALGORITHMS` or `ONE_FAST_PATH`)."""
    return check_choice("algorithm", algorithm, choices)


def hits_are_sparse(drop_prob: float) -> bool:
    """Whether sparse hits are the cheaper way to draw independent drops of ``drop_prob``."""
    return -math.log1p(-drop_prob) < HITS_MAX_RATE


class Route(NamedTuple):
    """A layer's path: how the mask is sampled, how it is applied, and whether the caller uses
    the dropped cells' offsets (so the sampler should keep them)."""

    sampler: str
    apply: str
    want_cells: bool = False


@lru_cache(maxsize=1024)  # called per forward with few distinct arguments
def block_path(
    algorithm: str,
    device: torch.device,
    rate: float,
    kernel: tuple[int, ...],
    size: tuple[int, ...],
    valid_only: bool,
    want_cells: bool,
) -> str:
    """The block sampler: "reference", "hits" (block 1: independent units), "sparse" (scattered
    cells), "dense" (CPU shifted maxima) or "pool" (max-pool, one launch each on CUDA).

    ``rate`` is the seed rate on a map of ``size`` with ``kernel``. "sparse" and "dense" force
    the sampler (on CUDA "dense" means the pool).
    """
    on_cpu = device.type == "cpu"
    if algorithm == "auto":
        if not on_cpu:
            return "pool"
        positions = math.prod(s - k + 1 if valid_only else s for s, k in zip(size, kernel))
        cells_per_unit = -math.log1p(-rate) * math.prod(kernel) * positions / math.prod(size)
        limit = SPARSE_MAX_CELLS_PER_UNIT_WITH_CELLS if want_cells else SPARSE_MAX_CELLS_PER_UNIT
        algorithm = "sparse" if all(k == 1 for k in kernel) or cells_per_unit < limit else "dense"
    if algorithm == "sparse":
        return "hits" if all(k == 1 for k in kernel) else "sparse"
    if algorithm == "dense":
        return "dense" if on_cpu else "pool"
    return check_algorithm(algorithm)  # "reference"


def block_route(
    algorithm: str,
    x: torch.Tensor,
    rate: float,
    kernel: tuple[int, ...],
    valid_only: bool,
    shared: bool = False,
    distort: bool = False,
) -> Route:
    """DropBlock's (``distort=False``) or Disout's route for input ``x``.

    apply: "reference"; for DropBlock one of `apply_route`'s; for Disout "cells" (noise drawn
    for the listed dropped cells only and written over ``x * scale``) or "noise" (the dense
    samplers list no cells: a full-size noise draw, masked; no host sync).
    """
    want_cells = distort or zero_pixel_rows(x, shared)
    sampler = block_path(algorithm, x.device, rate, kernel, tuple(x.shape[2:]), valid_only, want_cells)
    listed = sampler in ("sparse", "hits")
    if sampler == "reference":
        return Route("reference", "reference")
    if distort:
        return Route(sampler, "cells" if listed else "noise", True)
    return Route(sampler, apply_route(x, shared, listed), want_cells)


def pattern_route(algorithm: str, x: torch.Tensor, shared: bool) -> Route:
    """PatternDropout's route: sampler "table" (maps up to `TABLE_MAX_UNITS`: one cached row
    per offset) or "gather" (per-unit indexing, as the reference); apply as `apply_route`."""
    check_algorithm(algorithm, ONE_FAST_PATH)
    small = math.prod(x.shape[2:]) <= TABLE_MAX_UNITS
    if algorithm == "reference":
        return Route("gather", "reference")
    return Route("table" if small else "gather", apply_route(x, shared, True))


def sequence_route(algorithm: str, x: torch.Tensor) -> Route:
    """SequenceDropout's route: sampler "index" (broadcast index arithmetic on the offsets) or
    "loops" (the reference: plain Python loops over examples and tokens); apply "reference"
    (`_drop_ops.reference_apply`) or as `apply_route` for a mask that is never a pixel row
    ("device" or "masked"). Both rescale by the realized kept fraction."""
    if check_algorithm(algorithm, ONE_FAST_PATH) == "reference":
        return Route("loops", "reference")
    return Route("index", apply_route(x, False, False))


def spatial_route(algorithm: str) -> Route:
    """SpatialDropout's route: one Bernoulli draw per (example, channel) either way ("channels");
    apply "reference" (`simple.dropout_reference`, the textbook multiply) or "masked" (one fused
    masked multiply forward and backward, `_drop_ops.mask_and_scale`, on every device: the
    scale ``1 / (1 - p)`` is a constant, so there is no host sync to avoid)."""
    if check_algorithm(algorithm, ONE_FAST_PATH) == "reference":
        return Route("channels", "reference")
    return Route("channels", "masked")


def dropout_path(algorithm: str, device: torch.device, drop_prob: float) -> str:
    """Dropout's path: "reference", "hits" (CPU: the few dropped units zeroed after a scalar
    multiply), "bytes" (CPU: a mask from one random byte per unit) or "fused" (CUDA's
    ``F.dropout`` kernel). "sparse"/"dense" force hits/bytes on CPU."""
    if algorithm == "reference":
        return "reference"
    if device.type != "cpu" and algorithm in ("auto", "dense"):
        return "fused"
    if algorithm == "auto":
        return "hits" if hits_are_sparse(drop_prob) else "bytes"
    return {"sparse": "hits", "dense": "bytes"}[check_algorithm(algorithm)]


def zero_pixel_rows(x: torch.Tensor, shared: bool) -> bool:
    """Whether a mask shared by the channels is best applied by zeroing whole pixel rows: on a
    CPU input stored channels_last, where one pixel's C units are one storage row. A broadcast
    multiply there has an inner loop only C long (no vectorised streaming), while a scalar
    multiply streams and the few dropped rows are zeroed afterwards."""
    return shared and x.device.type == "cpu" and pixels_are_rows(x)


def apply_route(x: torch.Tensor, shared: bool, have_pixels: bool) -> str:
    """How `_drop_ops.apply_keep` applies a keep mask: "device" (off CPU: the rescale stays on
    the device, no host sync), "rows" (`zero_pixel_rows`, when the dropped pixels are listed)
    or "masked" (one fused masked multiply)."""
    if x.device.type != "cpu":
        return "device"
    return "rows" if have_pixels and zero_pixel_rows(x, shared) else "masked"


def zero_cells_again(cells: int, units: int) -> bool:
    """Whether Disout's backward zeroes its noise cells again instead of saving the mask."""
    return cells <= ZERO_AGAIN_MAX_CELLS_PER_UNIT * units
