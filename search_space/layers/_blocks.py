"""Exact block-mask sampling shared by DropBlock, Disout and (block size 1) Dropout.

Geometry: a seed at index ``t`` (per spatial dim) drops the block ``[t - off, t - off + k)``
of the map, clipped to the map. Two seed regions are used:

* ``valid_only=False`` (DropBlock, like timm/dropblock): a seed may sit on every map unit and
  the block is centred on it (``off = k // 2``); blocks near the border are clipped.
* ``valid_only=True`` (Disout, like the paper): seeds only where the whole block fits
  (``off = 0``, ``H - k + 1`` seed positions).

Units near the border are covered by fewer seed positions, and blocks overlap, so the naive
seed rate ``p / k**2`` misses the target. :func:`seed_rate` instead solves
``1 - mean_u (1 - g) ** c(u) = p`` where ``c(u)`` counts the seed positions covering unit ``u``;
the *expected* dropped fraction is then exactly ``p``.

Two exact samplers of the same distribution, both returning a uint8 *keep* mask (1 = kept)
laid out like the input (channels_last stays channels_last, so the final multiply streams):

* ``sparse`` (CPU default for few dropped cells, and for block 1): draws a Poisson number of
  seeds with rate ``-log(1 - g)`` per position at uniform positions (`sparse_hits`), so
  every position is occupied independently with probability exactly ``g``; then clears each
  seed's block cells (a cached per-position table of storage offsets) in the mask. Work is
  proportional to the number of dropped cells, and their offsets come for free (Disout
  writes its noise there without a pass over the map).
* ``dense`` (CUDA default, and CPU for many dropped cells): Bernoulli seeds + stride-1
  max-pool. On CPU the seeds are placed sparsely too, and the pool is separable shifted
  maxima on uint8 (log2(k) passes per dimension), so its cost does not grow with ``p``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

ALGORITHMS = ("auto", "sparse", "dense")
# CPU, bf16 channels_last, fwd+bwd of DropBlock2d on ResNet-20's maps: sparse wins below
# ~0.15 dropped cells (repeats included) per map unit (p <= 0.1 for blocks >= 3), dense above
# (up to 6x at p 0.3-0.5: scattered writes cost more than a few streaming uint8 passes).
_SPARSE_MAX_DENSITY = 0.15
# Disout needs the cells for its noise (the dense path draws noise for every unit instead).
_SPARSE_MAX_DENSITY_WITH_CELLS = 8.0


def _geometry(size: int, k: int, valid_only: bool) -> tuple[int, int]:
    """Return (number of seed positions, offset of the block start from the seed index)."""
    return (size - k + 1, 0) if valid_only else (size, k // 2)


def coverage(size: int, k: int, valid_only: bool) -> np.ndarray:
    """Number of seed positions whose block covers each unit of a 1-D map of ``size``."""
    n, off = _geometry(size, k, valid_only)
    i = np.arange(size)
    # seed t covers unit i iff t - off <= i <= t - off + k - 1
    lo = np.maximum(0, i + off - k + 1)
    hi = np.minimum(n - 1, i + off)
    return np.maximum(hi - lo + 1, 0)


@lru_cache(maxsize=4096)
def seed_rate(drop_prob: float, kernel: tuple[int, ...], size: tuple[int, ...], valid_only: bool) -> float:
    """Per-position seed probability whose expected dropped fraction equals ``drop_prob``.

    Solved by bisection in float64 on the exact expectation and cached per arguments.
    """
    if drop_prob <= 0.0:
        return 0.0
    counts = np.ones(1, dtype=np.int64)
    for s, k in zip(size, kernel):
        counts = np.multiply.outer(counts, coverage(s, k, valid_only)).reshape(-1)
    values, mult = np.unique(counts, return_counts=True)
    weights = mult / mult.sum()

    def dropped(g: float) -> float:
        return float(1.0 - np.sum(weights * np.power(1.0 - g, values)))

    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if dropped(mid) < drop_prob:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15:
            break
    return 0.5 * (lo + hi)


def dense_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when its elements tile a block of memory without gaps (contiguous in some
    dimension order, e.g. channels_last), else a contiguous copy. Masks are then allocated
    with ``x``'s strides, so mask and input stream through memory in the same order."""
    expected = 1
    for d in sorted(range(x.dim()), key=x.stride):
        if x.shape[d] == 1:
            continue
        if x.stride(d) != expected:
            return x.contiguous()
        expected *= x.shape[d]
    return x


def storage_view(t: torch.Tensor) -> torch.Tensor:
    """1-D view, in memory order, of a tensor laid out as `dense_layout` returns it."""
    return t.as_strided((t.numel(),), (1,), t.storage_offset())


@dataclass
class BlockSample:
    """A sampled keep mask and, from the sparse sampler, where its blocks were dropped.

    keep: uint8, 1 = kept, with the requested shape and strides.
    cells: (seeds, block cells) storage offsets of every dropped cell (with repeats where
        blocks overlap or are clipped; one row per seed, so a row lies in one channel), or
        None (dense sampler).
    """

    keep: torch.Tensor
    cells: torch.Tensor | None = None


def _choose(
    algorithm: str, device: torch.device, rate: float, kernel: tuple[int, ...], size: tuple[int, ...], valid_only: bool,
    want_cells: bool,
) -> str:
    if algorithm != "auto":
        return algorithm
    if device.type != "cpu":
        return "dense"
    positions = math.prod(_geometry(s, k, valid_only)[0] for s, k in zip(size, kernel))
    cells_per_unit = -math.log1p(-rate) * math.prod(kernel) * positions / math.prod(size)
    limit = _SPARSE_MAX_DENSITY_WITH_CELLS if want_cells else _SPARSE_MAX_DENSITY
    return "sparse" if cells_per_unit < limit else "dense"


def sample_blocks(
    shape: tuple[int, ...],
    strides: tuple[int, ...],
    kernel: tuple[int, ...],
    rate: float,
    valid_only: bool,
    device: torch.device,
    algorithm: str = "auto",
    want_cells: bool = False,
) -> BlockSample:
    """Sample independent block masks, one per ``(example, channel)`` of ``shape = (N, M, *size)``.

    ``strides`` are the mask's (dense) strides, e.g. the input's, so that a channels_last
    input gets a channels_last mask. ``kernel`` must already be clamped to ``size``.
    ``want_cells``: the caller uses the dropped cells when it gets them (Disout, shared masks
    on channels_last), so "auto" keeps the sparse sampler up to a higher density.
    """
    if all(k == 1 for k in kernel) and (algorithm == "sparse" or (algorithm == "auto" and device.type == "cpu")):
        return _hits(shape, strides, rate, device, want_cells)  # every unit is its own seed position
    if _choose(algorithm, device, rate, kernel, tuple(shape[2:]), valid_only, want_cells) == "sparse":
        return _sparse(shape, strides, kernel, rate, valid_only, device)
    return BlockSample(_dense(shape, strides, kernel, rate, valid_only, device))


def block_drop_mask(
    m: int,
    size: tuple[int, ...],
    kernel: tuple[int, ...],
    rate: float,
    valid_only: bool,
    device: torch.device,
    algorithm: str = "auto",
) -> torch.Tensor:
    """Sample ``m`` independent boolean drop masks of spatial ``size`` (True = dropped).

    ``kernel`` must already be clamped to ``size``. Returns shape ``(m, *size)``, contiguous;
    the same draws as a layer on a contiguous ``(N, C, *size)`` input with ``m = N * C``.
    """
    shape = (m, 1, *size)
    keep = sample_blocks(shape, contiguous_strides(shape), kernel, rate, valid_only, device, algorithm).keep
    return keep.view(m, *size) == 0


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The strides of a contiguous tensor of ``shape``."""
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(strides))


def _dense(shape, strides, kernel, rate, valid_only, device) -> torch.Tensor:
    n, mc, *size = shape
    geo = [_geometry(s, k, valid_only) for s, k in zip(size, kernel)]
    pads = [(k - 1 - off, s + k - 1 - (k - 1 - off) - g) for s, k, (g, off) in zip(size, kernel, geo)]
    if device.type != "cpu":  # one Bernoulli + max-pool launch; fp16 seeds halve the traffic
        seeds = torch.empty((n * mc, 1, *(g for g, _ in geo)), dtype=torch.float16, device=device).bernoulli_(rate)
        if any(k > 1 for k in kernel):
            seeds = F.pad(seeds, [v for pad in reversed(pads) for v in pad])  # F.pad lists the last dim first
            pool = F.max_pool2d if len(size) == 2 else F.max_pool3d
            seeds = pool(seeds, kernel, stride=1)
        keep = torch.empty_strided(shape, strides, dtype=torch.bool, device=device)
        torch.eq(seeds.view(shape), 0, out=keep)
        return keep.view(torch.uint8)
    # CPU: seeds in the mask's memory order (so the result has its strides), zero-padded, then
    # dilated per spatial dim by log2(k) shifted maxima on uint8 (max_pool is slow on CPU).
    order = sorted(range(len(shape)), key=lambda d: -strides[d])  # stable: outermost dim first
    padded = [n, mc, *(g + left + right for (g, _), (left, right) in zip(geo, pads))]
    dropped = torch.zeros([padded[d] for d in order], dtype=torch.uint8, device=device)
    interior = dropped
    for d in range(2, len(shape)):
        interior = interior.narrow(order.index(d), pads[d - 2][0], geo[d - 2][0])
    seeds = torch.zeros(interior.shape, dtype=torch.uint8, device=device)  # Bernoulli(rate) seeds, drawn sparsely
    seeds.view(-1).index_fill_(0, sparse_hits(seeds.numel(), rate, device), 1)
    interior.copy_(seeds)
    for d, k in zip(range(2, len(shape)), kernel):
        dropped = _dilate(dropped, order.index(d), k)
    return torch.rsub(dropped, 1).permute([order.index(d) for d in range(len(shape))])


def _dilate(t: torch.Tensor, dim: int, k: int) -> torch.Tensor:
    """Sliding-window maximum of width ``k`` along ``dim`` (valid: length shrinks by k - 1)."""
    width = 1
    while width < k:
        step = min(width, k - width)  # windows [i, i + width) and [i + step, ...) cover width + step
        length = t.shape[dim] - step
        t = torch.maximum(t.narrow(dim, 0, length), t.narrow(dim, step, length))
        width += step
    return t


@lru_cache(maxsize=64)
def _cell_table(
    size: tuple[int, ...], kernel: tuple[int, ...], valid_only: bool, strides: tuple[int, ...], device: torch.device
) -> torch.Tensor:
    """For every seed position, the storage offsets (within one map) of the cells its block drops.

    Shape (number of seed positions, prod(kernel)). Block cells clipped by the border are
    replaced by the seed's own (always dropped) cell, so no index ever leaves the map.
    """
    geo = [_geometry(s, k, valid_only) for s, k in zip(size, kernel)]
    seeds = np.stack(np.meshgrid(*[np.arange(n) for n, _ in geo], indexing="ij"), -1).reshape(-1, len(size))
    offs = np.stack(np.meshgrid(*[np.arange(k) for k in kernel], indexing="ij"), -1).reshape(-1, len(size))
    starts = seeds - np.array([off for _, off in geo])
    cells = starts[:, None, :] + offs[None, :, :]
    inside = np.all((cells >= 0) & (cells < np.array(size)), axis=-1)
    # a seed's block always contains the seed itself (DropBlock) or its start (Disout)
    own = starts if valid_only else seeds
    cells = np.where(inside[..., None], cells, own[:, None, :])
    flat = cells @ np.asarray(strides, dtype=np.int64)
    return torch.as_tensor(flat, dtype=torch.int64, device=device)


def _sparse(shape, strides, kernel, rate, valid_only, device) -> BlockSample:
    n, mc, *size = shape
    numel = math.prod(shape)
    keep = torch.ones(numel, dtype=torch.uint8, device=device)
    geo = [_geometry(s, k, valid_only) for s, k in zip(size, kernel)]
    per_mask = math.prod(g for g, _ in geo)
    total = n * mc * per_mask
    seed = sparse_hits(total, rate, device)  # occupied seed positions
    mask_id = torch.div(seed, per_mask, rounding_mode="floor")
    pos = seed - mask_id * per_mask
    if mc == 1:
        base = mask_id * strides[0]
    elif n == 1 or strides[1] * mc == strides[0]:  # the masks of one example follow each other
        base = mask_id * strides[1]
    else:  # e.g. channels_last: the channel is the fastest dimension
        example = torch.div(mask_id, mc, rounding_mode="floor")
        base = example * strides[0] + (mask_id - example * mc) * strides[1]
    table = _cell_table(tuple(size), tuple(kernel), valid_only, tuple(strides[2:]), device)
    cells = table.index_select(0, pos).add_(base[:, None])
    keep.index_fill_(0, cells.view(-1), 0)
    return BlockSample(keep.as_strided(shape, strides), cells)


# Above this per-unit hit rate, independent drops come from one random byte per unit instead
# of sparse hits (a hit costs a 32-bit draw plus a scattered write; 8 bytes cost one 64-bit draw).
_BYTES_MIN_RATE = 0.15


def sparse_hits(numel: int, rate: float, device: torch.device) -> torch.Tensor:
    """Indices (int64, with repeats) of units hit independently with probability exactly ``rate``.

    A Poisson number of uniform hits with mean ``-log(1 - rate)`` per unit misses each unit
    with probability ``exp(-mean) = 1 - rate``, independently of the others.
    """
    if rate <= 0.0 or numel == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    lam = torch.tensor([numel * -math.log1p(-rate)], dtype=torch.float64, device=device)
    return torch.randint(0, numel, (int(torch.poisson(lam).item()),), device=device)


def hits_are_sparse(drop_prob: float) -> bool:
    """Whether `sparse_hits` is the cheaper way to draw independent drops of ``drop_prob``."""
    return -math.log1p(-drop_prob) < _BYTES_MIN_RATE


def _hits(shape, strides, drop_prob, device, want_cells: bool) -> BlockSample:
    """Independent Bernoulli drops (block size 1), exact.

    Sparse (`sparse_hits`): hits mark the dropped units (q = p) when p <= 1/2 or the dropped
    cells are wanted, else the kept ones (q = 1 - p), so the work is
    ``min(-log(1 - p), -log(p))`` draws per unit. For larger q without wanted cells, the marked
    set is ``{u < a} | H`` with ``u`` a uniform random byte per unit, ``a = floor(256 q)``, and
    ``H`` independent sparse hits of rate ``r = (q - a/256) / (1 - a/256) < 1/128``: so each
    unit is marked independently with probability exactly ``a/256 + (1 - a/256) r = q``.
    Units are independent, so marks index storage order directly, whatever the layout.
    """
    numel = math.prod(shape)
    mark_kept = drop_prob > 0.5 and not want_cells
    q = 1.0 - drop_prob if mark_kept else drop_prob
    if want_cells or hits_are_sparse(q):
        keep = torch.full((numel,), 0 if mark_kept else 1, dtype=torch.uint8, device=device)
        rate = q
    else:
        a = math.floor(256 * q)
        words = torch.empty(-(-numel // 8), dtype=torch.int64, device=device).random_(-(2**63), None)  # all 64 bits
        byte = words.view(torch.uint8)[:numel]
        keep = (byte < a if mark_kept else byte >= a).view(torch.uint8)
        rate = (q - a / 256) / (1 - a / 256)
    hits = sparse_hits(numel, rate, device)
    if hits.numel():
        keep.index_fill_(0, hits, 1 if mark_kept else 0)
    return BlockSample(keep.as_strided(shape, strides), hits[:, None] if want_cells else None)


def bernoulli_keep(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """uint8 mask with ``x``'s shape and strides, each unit kept independently w.p. 1 - p."""
    return _hits(tuple(x.shape), x.stride(), drop_prob, x.device, want_cells=False).keep


def keep_scale(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Multiplicative mask: 0 where dropped, ``numel / kept`` elsewhere (mean-preserving).

    The scale stays on the device (no host sync: the CUDA path; CPU layers fuse the rescale
    into the multiply, `_drop_ops.mask_and_scale`). Keeps ``keep``'s strides.
    """
    scale = (keep.numel() / kept_count(keep).clamp_min(1).double()).to(dtype)
    return keep.to(dtype).mul_(scale)


_BYTE_LANES = 0x0101010101010101
_WORDS_MIN_UNITS = 1 << 18


def kept_count(keep: torch.Tensor) -> torch.Tensor:
    """Number of ones of a 0/1 uint8 mask laid out densely (as `dense_layout` returns it).

    Reads the mask as 64-bit words: with 0/1 bytes, the top byte of ``word * 0x0101..01`` is
    the word's byte sum. On CPU this avoids ``sum``'s full int32 copy of the mask and is ~2x
    faster than ``count_nonzero``.
    """
    flat = storage_view(keep)
    if flat.numel() < _WORDS_MIN_UNITS:  # a few small ops would cost more than one pass
        return torch.count_nonzero(flat)
    whole = flat.numel() // 8 * 8 if flat.storage_offset() % 8 == 0 else 0
    total = flat[whole:].sum(dtype=torch.int64)
    if whole:
        words = flat[:whole].view(torch.int64)
        total = total + torch.mul(words, _BYTE_LANES).bitwise_right_shift_(56).bitwise_and_(0xFF).sum()
    return total
