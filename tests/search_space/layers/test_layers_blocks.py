"""DropBlock / Disout: realized rates, exact block geometry, rescaling, distortion statistics.

Statistical tests use fixed seeds; tolerances are stated next to each assertion and sized at
>= 3 standard deviations of the estimate for the sample sizes used.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from search_space.layers import Disout, DropBlock2d, DropBlock3d, Dropout, seed_rate
from search_space.layers._blocks import (
    _dilate,
    bernoulli_keep,
    coverage,
    grow_blocks,
    reference_seeds,
    sample_blocks,
    seed_grid,
)
from search_space.layers._layout import contiguous_strides

PROBS = [0.05, 0.1, 0.2, 0.3]
BLOCKS = [1, 3, 5, 7]
MAPS = [(8, 8), (16, 16), (32, 32), (12, 20), (20, 9)]
ELEMENTS = 1 << 17  # elements per pass for the few fixed-size checks
CPU = torch.device("cpu")
SAMPLERS = ["reference", "sparse", "dense", "pool"]  # pool: the CUDA sampler, run on CPU


def dropped_maps(
    m: int,
    size: tuple[int, ...],
    kernel: tuple[int, ...],
    rate: float,
    valid_only: bool,
    sampler: str,
    seeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """``m`` boolean drop masks (m, *size) from ``sampler`` (random seeds, or ``seeds``)."""
    shape = (m, 1, *size)
    if sampler == "reference":
        if seeds is None:
            seeds = reference_seeds(shape, kernel, rate, valid_only, CPU)
        return grow_blocks(seeds.float(), size, kernel, valid_only).view(m, *size) > 0
    keep = sample_blocks(shape, contiguous_strides(shape), kernel, rate, valid_only, CPU, sampler, seeds).keep
    return keep.view(m, *size) == 0


def zero_fraction(layer: torch.nn.Module, shape: tuple[int, ...], passes: int = 20) -> float:
    """Realized zeroed fraction averaged over ``passes`` forwards on a ones tensor."""
    x = torch.ones(shape)
    with torch.no_grad():
        return float(np.mean([float((layer(x) == 0).float().mean()) for _ in range(passes)]))


def batch_for(hw: tuple[int, int], channels: int, block: int = 7) -> int:
    """Batch size giving a standard error of the 20-pass mean rate <= 0.0033 (3 sigma in 0.01).

    The variance of one mask's dropped fraction is about p(1-p) * block_area / map_area <=
    0.21 * a, so 20 passes need about 1000 * a masks per pass.
    """
    area = min(block, hw[0]) * min(block, hw[1]) / (hw[0] * hw[1])
    masks = int(np.ceil(1000 * area)) + 16
    return max(1, -(-masks // channels))


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("p", PROBS)
def test_dropblock_realizes_drop_prob(p: float, share: bool) -> None:
    torch.manual_seed(1)
    c = 1 if share else 16  # sharing itself: test_shared_mask_is_identical_across_channels
    for bs in BLOCKS:
        for hw in MAPS:
            layer = DropBlock2d(p, bs, share_channels=share).train()
            rate = zero_fraction(layer, (batch_for(hw, c, bs), c, *hw))
            assert abs(rate - p) <= 0.01, (p, bs, hw, share, rate)


@pytest.mark.parametrize("algorithm", ["reference", "sparse", "dense"])
def test_every_algorithm_realizes_drop_prob(algorithm: str) -> None:
    torch.manual_seed(2)
    for p, bs, hw in [(0.1, 5, (16, 16)), (0.3, 4, (9, 14)), (0.05, 7, (8, 8)), (0.2, 1, (32, 32)), (0.2, 6, (11, 11))]:
        layer = DropBlock2d(p, bs, algorithm=algorithm).train()
        rate = zero_fraction(layer, (batch_for(hw, 8, bs), 8, *hw))
        assert abs(rate - p) <= 0.01, (algorithm, p, bs, hw, rate)


@pytest.mark.parametrize("algorithm", ["auto", "reference"])
@pytest.mark.parametrize("share", [True, False])
def test_dropblock3d_realizes_drop_prob(share: bool, algorithm: str) -> None:
    torch.manual_seed(3)
    for p, bs, dhw in [(0.1, 3, (6, 8, 8)), (0.2, 2, (4, 7, 9)), (0.3, 5, (8, 8, 8))]:
        layer = DropBlock3d(p, bs, share_channels=share, algorithm=algorithm).train()
        rate = zero_fraction(layer, (max(1, ELEMENTS // (4 * int(np.prod(dhw)))), 4, *dhw))
        assert abs(rate - p) <= 0.01, (p, bs, dhw, share, rate)


@pytest.mark.parametrize("valid_only", [False, True])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_per_unit_drop_probability_matches_geometry(valid_only: bool, sampler: str) -> None:
    """Every unit u is dropped with probability 1 - (1 - g)^c(u): exact seed region and block
    placement (odd and even block, non-square map), for every sampler and the reference."""
    torch.manual_seed(4)
    size, kernel, p, m = (9, 12), (4, 3), 0.2, 20000
    g = seed_rate(p, kernel, size, valid_only)
    cov = np.multiply.outer(coverage(9, 4, valid_only), coverage(12, 3, valid_only))
    expected = 1.0 - (1.0 - g) ** cov
    freq = dropped_maps(m, size, kernel, g, valid_only, sampler).float().mean(0).numpy()
    sigma = np.sqrt(expected * (1 - expected) / m) + 1e-9
    assert np.all(np.abs(freq - expected) <= 4.5 * sigma), np.abs(freq - expected) / sigma
    assert abs(float(np.mean(expected)) - p) < 1e-9  # the solved seed rate is exact in expectation


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("valid_only", [False, True])
@pytest.mark.parametrize("k", [3, 4])
def test_a_single_seed_drops_exactly_its_block(k: int, valid_only: bool, sampler: str) -> None:
    """Seed t drops [t - off, t - off + k) per dim (off = k // 2 for DropBlock, 0 for Disout),
    clipped at the border: checked for every seed position of a 7x6 map."""
    size = (7, 6)
    grid = seed_grid(size, (k, k), valid_only)
    positions = [(a, b) for a in range(grid[0]) for b in range(grid[1])]
    seeds = torch.zeros(len(positions), 1, *grid, dtype=torch.bool)
    expected = torch.zeros(len(positions), *size, dtype=torch.bool)
    off = 0 if valid_only else k // 2
    for i, (a, b) in enumerate(positions):
        seeds[i, 0, a, b] = True
        expected[i, max(a - off, 0) : a - off + k, max(b - off, 0) : b - off + k] = True
    assert torch.equal(dropped_maps(len(positions), size, (k, k), 0.0, valid_only, sampler, seeds), expected)


def test_seed_rate_beats_naive_formulas() -> None:
    # The references' closed forms miss the target on a 16x16 map with block 5.
    g = seed_rate(0.1, (5, 5), (16, 16), False)
    assert 0.1 / 25 < g < 0.1 * 256 / 25 / (12 * 12)
    assert seed_rate(0.1, (1, 1), (16, 16), False) == pytest.approx(0.1, abs=1e-12)


def test_block_size_one_is_bernoulli_dropout() -> None:
    torch.manual_seed(6)
    p, n = 0.2, 256
    layer = DropBlock2d(p, 1).train()
    dropped = (layer(torch.ones(n, 16, 16, 16)) == 0).float()
    per_map = dropped.flatten(2).sum(-1).flatten()  # Binomial(256, p) per map if independent
    assert float(per_map.mean()) / 256 == pytest.approx(p, abs=0.005)
    assert float(per_map.var()) / (256 * p * (1 - p)) == pytest.approx(1.0, abs=0.1)
    right = (dropped[..., :, 1:] * dropped[..., :, :-1]).mean()  # neighbours independent
    assert float(right) == pytest.approx(p * p, abs=0.004)


def test_shared_mask_is_identical_across_channels() -> None:
    torch.manual_seed(7)
    y = DropBlock2d(0.3, 3, share_channels=True).train()(torch.ones(8, 5, 10, 10))
    assert torch.equal(y, y[:, :1].expand_as(y))
    z = DropBlock2d(0.3, 3, share_channels=False).train()(torch.ones(8, 5, 10, 10))
    assert not torch.equal(z, z[:, :1].expand_as(z))


def test_dropblock_rescales_by_kept_fraction_and_gradient_is_mask() -> None:
    torch.manual_seed(8)
    x = torch.rand(16, 4, 12, 12, requires_grad=True)
    y = DropBlock2d(0.2, 3).train()(x)
    kept = (y != 0).float()
    scale = kept.numel() / kept.sum()
    assert torch.allclose(y, x * kept * scale, atol=1e-6)
    y.backward(torch.ones_like(y))
    assert torch.allclose(x.grad, kept * scale, atol=1e-6)


def test_block_larger_than_map_is_clamped() -> None:
    torch.manual_seed(9)
    layer = DropBlock2d(0.2, 11).train()  # clamped to the 6x4 map: a seed drops most of it
    rate = zero_fraction(layer, (4096, 1, 6, 4))
    assert abs(rate - 0.2) <= 0.01


# ---- Disout ---------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["auto", "reference", "dense"])
@pytest.mark.parametrize("p", PROBS)
def test_disout_realizes_dist_prob(p: float, algorithm: str) -> None:
    """On a constant input var(x) = 0, so the distorted units are exactly the zeros."""
    torch.manual_seed(10)
    for bs in [1, 3, 6, 7]:
        for hw in [(8, 8), (16, 16), (12, 20)]:
            rate = zero_fraction(Disout(p, bs, algorithm=algorithm).train(), (batch_for(hw, 16, bs), 16, *hw))
            assert abs(rate - p) <= 0.01, (p, bs, hw, rate)


def disout_with_selection(layer: Disout, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``layer`` (its own route) on seeds drawn here, and return the units they select."""
    h, w = x.shape[2:]
    k = (min(layer.block_size, h), min(layer.block_size, w))
    torch.manual_seed(seed)
    seeds = reference_seeds(tuple(x.shape), k, seed_rate(layer.dist_prob, k, (h, w), True), True, CPU)
    y = layer.train().distort(x, layer.dist_prob, layer.block_size, seeds=seeds)
    return y, grow_blocks(seeds.float(), (h, w), k, True) > 0


def test_disout_distortion_statistics_without_weight() -> None:
    alpha = 5.0
    x = torch.randn(64, 8, 16, 16, generator=torch.Generator().manual_seed(11)) * 3.0 + 1.0
    y, selected = disout_with_selection(Disout(0.2, 3, alpha=alpha), x, seed=12)
    kf = 1.0 - selected.float().mean()
    assert torch.allclose(y[~selected], x[~selected] / kf, rtol=1e-5)
    expected_std = alpha * 0.01 * float(x.var().sqrt()) / float(kf)
    assert float(y[selected].std()) == pytest.approx(expected_std, rel=0.03)  # ~26k samples: 3 sigma ~1.3%
    assert abs(float(y[selected].mean())) < 4 * expected_std / np.sqrt(int(selected.sum()))


def test_disout_weight_behind_scales_distortion_per_channel() -> None:
    """1x1 next conv with constant weight 0.5: w = +-0.1 * 0.5 per channel."""
    conv = torch.nn.Conv2d(8, 4, 1, bias=False)
    torch.nn.init.constant_(conv.weight, 0.5)
    layer = Disout(0.3, 3, alpha=2.0)
    layer.weight_behind = conv.weight
    assert list(layer.state_dict()) == [] and list(layer.parameters()) == []
    x = torch.randn(128, 8, 12, 12, generator=torch.Generator().manual_seed(13), requires_grad=True)
    y, selected = disout_with_selection(layer, x, seed=14)
    kf = 1.0 - selected.float().mean()
    dist = y.detach() * selected
    per_channel_std = (dist.pow(2).sum((0, 2, 3)) / selected.sum((0, 2, 3))).sqrt()
    expected = 2.0 * 0.05 * float(x.detach().var().sqrt()) / float(kf)
    assert torch.allclose(per_channel_std, torch.full((8,), expected), rtol=0.06)  # ~5k per channel
    y.sum().backward()
    assert conv.weight.grad is None  # the distortion never trains the next layer
    assert torch.allclose(x.grad, (~selected).float() / kf, atol=1e-6)  # d out / d x = keep / kept
    layer.weight_behind = torch.ones(4, 3, 1, 1)
    with pytest.raises(ValueError, match="weight_behind"):
        layer(x)


# ---- memory layout, samplers' internals -----------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sparse", "dense", "pool"])
@pytest.mark.parametrize("valid_only", [False, True])
def test_channels_last_masks_have_the_input_strides_and_geometry(valid_only: bool, algorithm: str) -> None:
    """Masks for a channels_last input are laid out channels_last, and every unit is still
    dropped with probability 1 - (1 - g)^c(u) (a wrong stride mapping would smear blocks
    across channels and break this per-unit profile)."""
    torch.manual_seed(15)
    shape, kernel, p = (1500, 4, 9, 12), (4, 3), 0.2
    x = torch.empty(shape).contiguous(memory_format=torch.channels_last)
    g = seed_rate(p, kernel, shape[2:], valid_only)
    keep = sample_blocks(shape, x.stride(), kernel, g, valid_only, torch.device("cpu"), algorithm).keep
    assert keep.stride() == x.stride() and keep.dtype == torch.uint8
    freq = 1.0 - keep.float().mean((0, 1)).numpy()
    cov = np.multiply.outer(coverage(9, 4, valid_only), coverage(12, 3, valid_only))
    expected = 1.0 - (1.0 - g) ** cov
    sigma = np.sqrt(expected * (1 - expected) / 6000) + 1e-9
    assert np.all(np.abs(freq - expected) <= 4.5 * sigma)
    # each dropped region is a union of whole blocks inside one channel map
    one = sample_blocks((1, 4, 9, 12), x.stride(), kernel, 0.02, valid_only, torch.device("cpu"), algorithm).keep
    assert torch.equal(one, one.contiguous())  # same values whatever the layout


def test_channels_last_layer_output_stays_channels_last() -> None:
    x = torch.randn(4, 8, 10, 10).contiguous(memory_format=torch.channels_last)
    for layer in [DropBlock2d(0.2, 3), Disout(0.2, 3)]:
        y = layer.train()(x)
        assert y.is_contiguous(memory_format=torch.channels_last), type(layer).__name__


@pytest.mark.parametrize("k", [1, 2, 3, 5, 7, 8])
def test_dense_dilation_equals_max_pool(k: int) -> None:
    """The CPU dense sampler's shifted-maximum dilation is exactly a stride-1 max-pool."""
    t = (torch.rand(6, 3, 20, 17, generator=torch.Generator().manual_seed(k)) < 0.1).to(torch.uint8)
    ours = _dilate(_dilate(t, 2, k), 3, k)
    ref = torch.nn.functional.max_pool2d(t.float(), k, stride=1).to(torch.uint8)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5, 0.7])
def test_bernoulli_keep_is_exact_independent_dropout(p: float) -> None:
    """Both regimes (sparse hits below rate 0.15, random bytes + sparse correction above; kept
    units marked for p > 1/2) keep each unit independently with probability 1 - p."""
    torch.manual_seed(16)
    x = torch.empty(64, 16, 32, 32).contiguous(memory_format=torch.channels_last)
    keep = bernoulli_keep(x, p)
    assert keep.stride() == x.stride()
    dropped = 1.0 - keep.float()
    n = dropped.numel()  # 1M units: 3 sigma of the mean <= 0.0015
    assert float(dropped.mean()) == pytest.approx(p, abs=3 * np.sqrt(p * (1 - p) / n))
    right = float((dropped[..., 1:] * dropped[..., :-1]).mean())  # neighbours independent
    assert right == pytest.approx(p * p, abs=0.003)
    per_map = dropped.flatten(2).sum(-1).flatten()  # Binomial(1024, p) per map
    assert float(per_map.var()) / (1024 * p * (1 - p)) == pytest.approx(1.0, abs=0.1)


def test_dropout_scales_by_one_over_keep_prob_and_gradient_is_mask() -> None:
    torch.manual_seed(17)
    x = torch.rand(32, 8, 12, 12, requires_grad=True)
    y = Dropout(0.3).train()(x)
    kept = (y != 0).float()
    assert torch.allclose(y, x * kept / 0.7, atol=1e-6)
    assert float(kept.mean()) == pytest.approx(0.7, abs=0.01)  # 37k units: 3 sigma 0.007
    y.backward(torch.ones_like(y))
    assert torch.allclose(x.grad, kept / 0.7, atol=1e-6)
    y2 = Dropout(0.3).train()(torch.ones(64, 500))  # (N, F) input
    assert float((y2 == 0).float().mean()) == pytest.approx(0.3, abs=0.01)


@pytest.mark.parametrize("block", [1, 2])  # 1: independent cells (the hit sampler)
def test_disout_channels_last_noise_scale_per_channel(block: int) -> None:
    """channels_last input: noise lands in the dropped cells with its channel's weight."""
    conv = torch.nn.Conv2d(8, 4, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.linspace(0.1, 0.8, 8).view(1, 8, 1, 1).expand(4, 8, 1, 1))
    layer = Disout(0.3, block, alpha=2.0).train()
    layer.weight_behind = conv.weight
    x = torch.randn(128, 8, 12, 12, generator=torch.Generator().manual_seed(18)).contiguous(
        memory_format=torch.channels_last
    )
    torch.manual_seed(19)
    y = layer(x)
    torch.manual_seed(19)
    selected = layer(torch.ones_like(x)) == 0  # same draws; constant input: zero noise std
    kf = 1.0 - selected.float().mean()
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(y[~selected], x[~selected] / kf, rtol=1e-5)
    std = ((y * selected).pow(2).sum((0, 2, 3)) / selected.sum((0, 2, 3))).sqrt()
    expected = 2.0 * 0.1 * torch.linspace(0.1, 0.8, 8) * float(x.var().sqrt()) / float(kf)
    assert torch.allclose(std, expected, rtol=0.06)  # ~5k noise values per channel
