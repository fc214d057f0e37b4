"""Exact block-mask sampling shared by DropBlock and Disout.

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

The reference (:func:`reference_seeds`, :func:`grow_blocks`) is the paper's algorithm: a
Bernoulli(g) seed per position, blocks grown by a stride-1 max-pool. :func:`sample_blocks`
builds the same mask by faster routes (`_dispatch.block_path` picks one), each returning a
uint8 *keep* mask (1 = kept) laid out like the input:

* "pool": the reference dilation on fp16 seeds (one launch each on CUDA).
* "sparse": seeds as a Poisson number of uniform positions (`sparse_hits`: every position
  occupied independently with probability exactly ``g``); each seed's block cells are
  cleared from a cached per-position table of storage offsets. Work grows with the dropped
  cells, and their offsets come for free (Disout writes its noise there).
* "dense": the same seeds placed in a zero-padded uint8 grid in the mask's memory order,
  dilated by separable shifted maxima (log2(k) passes per dim; max_pool has no fast uint8
  CPU kernel), so its cost does not grow with the rate.
* "hits" (block 1): independent units, drawn directly in storage order.

``seeds`` (bool, shape (N, M, *seed grid)) can be injected instead of drawn, so tests drive
every route and the reference from the same seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from search_space.errors import user_error

from ._dispatch import WORDS_MIN_UNITS, hits_are_sparse
from ._layout import storage_offsets, storage_view


def _geometry(size: int, k: int, valid_only: bool) -> tuple[int, int]:
    """Return (number of seed positions, offset of the block start from the seed index)."""
    return (size - k + 1, 0) if valid_only else (size, k // 2)


def seed_grid(size: tuple[int, ...], kernel: tuple[int, ...], valid_only: bool) -> tuple[int, ...]:
    """Number of seed positions per spatial dim of a map of ``size``."""
    return tuple(_geometry(s, k, valid_only)[0] for s, k in zip(size, kernel))


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


# ---- the reference: Bernoulli seeds, max-pool dilation --------------------------------------


def reference_seeds(
    shape: tuple[int, ...], kernel: tuple[int, ...], rate: float, valid_only: bool, device: torch.device
) -> torch.Tensor:
    """Bernoulli(``rate``) seeds, bool (N, M, *seed grid), for masks of ``shape = (N, M, *size)``."""
    n, m, *size = shape
    return torch.rand((n, m, *seed_grid(tuple(size), kernel, valid_only)), device=device) < rate


def grow_blocks(seeds: torch.Tensor, size: tuple[int, ...], kernel: tuple[int, ...], valid_only: bool) -> torch.Tensor:
    """The block of every seed: (N, M, *size), nonzero where dropped, in ``seeds``' float dtype.

    The seed grid is zero-padded so that a stride-1 max-pool of ``kernel`` puts each seed's
    block at its place (clipped at the border): a unit is dropped iff a seed covers it.
    """
    n, m = seeds.shape[:2]
    if all(k == 1 for k in kernel):
        return seeds
    pads = []
    for s, k in zip(size, kernel):
        g, off = _geometry(s, k, valid_only)
        left = k - 1 - off
        pads.append((left, s + k - 1 - left - g))
    padded = F.pad(seeds.reshape(n * m, 1, *seeds.shape[2:]), [v for pad in reversed(pads) for v in pad])
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(size)]
    return pool(padded, kernel, stride=1).view(n, m, *size)


# ---- the fast routes ------------------------------------------------------------------------


@dataclass
class BlockSample:
    """A sampled keep mask and, from the sparse routes, where its blocks were dropped.

    keep: uint8, 1 = kept, with the requested shape and strides.
    cells: (seeds, block cells) storage offsets of every dropped cell (with repeats where
        blocks overlap or are clipped; one row per seed, so a row lies in one channel), or
        None (dense routes).
    """

    keep: torch.Tensor
    cells: torch.Tensor | None = None


def sample_blocks(
    shape: tuple[int, ...],
    strides: tuple[int, ...],
    kernel: tuple[int, ...],
    rate: float,
    valid_only: bool,
    device: torch.device,
    path: str,
    seeds: torch.Tensor | None = None,
    want_cells: bool = False,
) -> BlockSample:
    """Sample independent block masks, one per ``(example, channel)`` of ``shape = (N, M, *size)``.

    ``strides`` are the mask's (dense) strides, e.g. the input's, so that a channels_last
    input gets a channels_last mask. ``kernel`` must already be clamped to ``size``. ``path``
    is one of `_dispatch.block_path`'s fast routes; ``seeds`` (bool, (N, M, *seed grid))
    replace the random draw. ``want_cells``: the caller uses the dropped cells' offsets.
    """
    size = tuple(shape[2:])
    if seeds is not None and tuple(seeds.shape) != (*shape[:2], *seed_grid(size, kernel, valid_only)):
        raise user_error("seeds", tuple(seeds.shape), f"shape {(*shape[:2], *seed_grid(size, kernel, valid_only))}")
    if path == "pool":
        grid = (*shape[:2], *seed_grid(size, kernel, valid_only))
        # fp16 seeds: half the traffic of fp32, and max-pool has half-precision kernels
        fp16 = (
            torch.empty(grid, dtype=torch.float16, device=device).bernoulli_(rate)
            if seeds is None
            else seeds.to(torch.float16)
        )
        keep = torch.empty_strided(shape, strides, dtype=torch.bool, device=device)
        torch.eq(grow_blocks(fp16, size, kernel, valid_only), 0, out=keep)
        return BlockSample(keep.view(torch.uint8))
    if path == "hits":
        if any(k != 1 for k in kernel):
            raise user_error("kernel", kernel, "all ones for the hits route")
        return _hits(shape, strides, rate, device, want_cells, seeds)
    if path == "sparse":
        return _sparse(shape, strides, kernel, rate, valid_only, device, seeds)
    if path == "dense":
        return BlockSample(_dense(shape, strides, kernel, rate, valid_only, device, seeds))
    raise user_error("path", path, "'pool', 'hits', 'sparse' or 'dense'")


def _dense(shape, strides, kernel, rate, valid_only, device, seeds) -> torch.Tensor:
    """Seeds in the mask's memory order (so the result has its strides), zero-padded, then
    dilated per spatial dim by shifted maxima on uint8."""
    n, mc, *size = shape
    geo = [_geometry(s, k, valid_only) for s, k in zip(size, kernel)]
    lefts = [k - 1 - off for k, (_, off) in zip(kernel, geo)]
    order = sorted(range(len(shape)), key=lambda d: -strides[d])  # stable: outermost dim first
    padded = [n, mc, *(s + k - 1 for s, k in zip(size, kernel))]
    dropped = torch.zeros([padded[d] for d in order], dtype=torch.uint8, device=device)
    interior = dropped
    for d in range(2, len(shape)):
        interior = interior.narrow(order.index(d), lefts[d - 2], geo[d - 2][0])
    if seeds is None:  # Bernoulli(rate) seeds, drawn sparsely in memory order
        grid = torch.zeros(interior.shape, dtype=torch.uint8, device=device)
        grid.view(-1).index_fill_(0, sparse_hits(grid.numel(), rate, device), 1)
        interior.copy_(grid)
    else:
        interior.copy_(seeds.permute(order))
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


def _sparse(shape, strides, kernel, rate, valid_only, device, seeds) -> BlockSample:
    n, mc, *size = shape
    keep = torch.ones(math.prod(shape), dtype=torch.uint8, device=device)
    per_mask = math.prod(seed_grid(tuple(size), kernel, valid_only))
    seed = (
        sparse_hits(n * mc * per_mask, rate, device) if seeds is None else seeds.reshape(-1).nonzero().view(-1)
    )  # occupied seed positions
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


def sparse_hits(numel: int, rate: float, device: torch.device) -> torch.Tensor:
    """Indices (int64, with repeats) of units hit independently with probability exactly ``rate``.

    A Poisson number of uniform hits with mean ``-log(1 - rate)`` per unit misses each unit
    with probability ``exp(-mean) = 1 - rate``, independently of the others.
    """
    if rate <= 0.0 or numel == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    lam = torch.tensor([numel * -math.log1p(-rate)], dtype=torch.float64, device=device)
    return torch.randint(0, numel, (int(torch.poisson(lam).item()),), device=device)


def _hits(shape, strides, drop_prob, device, want_cells: bool, seeds: torch.Tensor | None = None) -> BlockSample:
    """Independent Bernoulli drops (block size 1), exact, drawn in storage order (units are
    independent, so any order of the same units has the same distribution).

    Sparse (`sparse_hits`): hits mark the dropped units (q = p) when p <= 1/2 or the dropped
    cells are wanted, else the kept ones (q = 1 - p), so the work is
    ``min(-log(1 - p), -log(p))`` draws per unit. For larger q without wanted cells, the marked
    set is ``{u < a} | H`` with ``u`` a uniform random byte per unit, ``a = floor(256 q)``, and
    ``H`` independent sparse hits of rate ``r = (q - a/256) / (1 - a/256) < 1/128``: so each
    unit is marked independently with probability exactly ``a/256 + (1 - a/256) r = q``.
    Injected ``seeds`` (bool, logical order) are the dropped units.
    """
    numel = math.prod(shape)
    mark_kept = drop_prob > 0.5 and not want_cells and seeds is None
    q = 1.0 - drop_prob if mark_kept else drop_prob
    if seeds is not None or want_cells or hits_are_sparse(q):
        keep = torch.full((numel,), 0 if mark_kept else 1, dtype=torch.uint8, device=device)
        rate = q
    else:
        a = math.floor(256 * q)
        words = torch.empty(-(-numel // 8), dtype=torch.int64, device=device).random_(-(2**63), None)  # all 64 bits
        byte = words.view(torch.uint8)[:numel]
        keep = (byte < a if mark_kept else byte >= a).view(torch.uint8)
        rate = (q - a / 256) / (1 - a / 256)
    if seeds is None:
        hits = sparse_hits(numel, rate, device)
    else:
        hits = storage_offsets(seeds, strides)
    if hits.numel():
        keep.index_fill_(0, hits, 1 if mark_kept else 0)
    return BlockSample(keep.as_strided(shape, strides), hits[:, None] if want_cells else None)


def bernoulli_keep(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """uint8 mask with ``x``'s shape and strides, each unit kept independently w.p. 1 - p."""
    return _hits(tuple(x.shape), x.stride(), drop_prob, x.device, want_cells=False).keep


_BYTE_LANES = 0x0101010101010101


def kept_count(keep: torch.Tensor) -> torch.Tensor:
    """Number of ones of a dense 0/1 uint8 mask (a 0-dim int64 tensor on its device).

    Reads large masks as 64-bit words: with 0/1 bytes, the top byte of ``word * 0x0101..01``
    is the word's byte sum. That reads the mask once in wide words, where ``sum`` first
    widens every byte to int32 and ``count_nonzero`` tests byte by byte.
    """
    if keep.dtype != torch.uint8:
        raise user_error("keep dtype", keep.dtype, "torch.uint8 (a 0/1 mask)")
    flat = storage_view(keep)  # checks that the layout is dense
    if flat.numel() < WORDS_MIN_UNITS:
        return torch.count_nonzero(flat)
    whole = flat.numel() // 8 * 8 if flat.storage_offset() % 8 == 0 else 0
    total = flat[whole:].sum(dtype=torch.int64)
    if whole:
        words = flat[:whole].view(torch.int64)
        total = total + torch.mul(words, _BYTE_LANES).bitwise_right_shift_(56).bitwise_and_(0xFF).sum()
    return total
