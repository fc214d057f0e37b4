"""Properties every regularizer layer shares: identity in eval and at probability 0, dtypes,
reproducibility, statelessness, argument/rank errors, LinearScheduler, and CUDA."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from search_space.layers import (
    Disout,
    DropBlock1d,
    DropBlock2d,
    DropBlock3d,
    Dropout,
    LinearScheduler,
    PatternDropout,
    SpatialDropout,
)

FACTORIES: dict[str, tuple[Callable[..., nn.Module], tuple[int, ...], float]] = {
    # name: (factory taking the probability, input shape, a nonzero probability)
    "dropblock2d": (lambda p: DropBlock2d(p, 3), (8, 4, 10, 10), 0.2),
    "dropblock2d_shared": (lambda p: DropBlock2d(p, 4, share_channels=True), (8, 4, 10, 10), 0.2),
    "dropblock3d": (lambda p: DropBlock3d(p, 3), (4, 4, 6, 6, 6), 0.2),
    "disout": (lambda p: Disout(p, 3, alpha=1.0), (8, 4, 10, 10), 0.2),
    "pattern": (lambda p: PatternDropout(size=2, stride=4, repeat=2, rotate=15.0, apply_prob=p), (8, 4, 10, 10), 0.9),
    "dropout": (lambda p: Dropout(p), (8, 4, 10, 10), 0.2),
    "dropout_2d_input": (lambda p: Dropout(p), (64, 32), 0.2),
    "spatial_dropout": (lambda p: SpatialDropout(p), (8, 16, 10, 10), 0.2),
    # the same layers on the other layouts (search_space.layouts): channels-last maps, 1-D maps, tokens
    "dropblock2d_nhwc": (lambda p: DropBlock2d(p, 3, layout="NHWC"), (8, 10, 10, 4), 0.2),
    "dropblock2d_nhwc_shared": (lambda p: DropBlock2d(p, 4, share_channels=True, layout="NHWC"), (8, 10, 10, 4), 0.2),
    "dropblock3d_ndhwc": (lambda p: DropBlock3d(p, 3, layout="NDHWC"), (4, 6, 6, 6, 4), 0.2),
    "dropblock1d": (lambda p: DropBlock1d(p, 3), (8, 4, 40), 0.2),
    "dropblock1d_ntc_shared": (lambda p: DropBlock1d(p, 3, share_channels=True, layout="NTC"), (16, 40, 4), 0.2),
    "dropblock1d_tnc": (lambda p: DropBlock1d(p, 3, layout="TNC"), (40, 8, 4), 0.2),
    "disout_nhwc": (lambda p: Disout(p, 3, alpha=1.0, layout="NHWC"), (8, 10, 10, 4), 0.2),
    "pattern_nhwc": (
        lambda p: PatternDropout(size=2, stride=4, repeat=2, rotate=15.0, apply_prob=p, layout="NHWC"),
        (8, 10, 10, 4),
        0.9,
    ),
    "pattern_nhwc_shared": (
        lambda p: PatternDropout(size=2, stride=4, repeat=2, share_channels=True, apply_prob=p, layout="NHWC"),
        (8, 10, 10, 4),
        0.9,
    ),
    "spatial_dropout_nhwc": (lambda p: SpatialDropout(p, layout="NHWC"), (8, 10, 10, 16), 0.2),
    "spatial_dropout_ncl": (lambda p: SpatialDropout(p, layout="NCL"), (8, 16, 10), 0.2),
    "spatial_dropout_ntc": (lambda p: SpatialDropout(p, layout="NTC"), (8, 10, 16), 0.2),
}
NAMES = list(FACTORIES)


def make(name: str, p: float | None = None) -> tuple[nn.Module, torch.Tensor, float]:
    factory, shape, prob = FACTORIES[name]
    return factory(prob if p is None else p), torch.randn(shape), prob


@pytest.mark.parametrize("name", NAMES)
def test_identity_in_eval_and_at_probability_zero(name: str) -> None:
    layer, x, _ = make(name)
    assert torch.equal(layer.eval()(x), x)
    zero, x0, _ = make(name, 0.0)
    assert torch.equal(zero.train()(x0), x0)
    assert torch.equal(layer.train()(x), layer.train()(x)) is False  # training really is random


@pytest.mark.parametrize("name", NAMES)
def test_stateless_with_mutable_prob_attr(name: str) -> None:
    layer, x, prob = make(name)
    if isinstance(layer, Disout):
        layer.weight_behind = nn.Conv2d(4, 8, 3).weight
    assert list(layer.state_dict()) == [] and list(layer.parameters()) == [] and list(layer.buffers()) == []
    assert getattr(layer, layer.prob_attr) == pytest.approx(prob)
    setattr(layer, layer.prob_attr, 0.0)
    assert torch.equal(layer.train()(x), x)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", NAMES)
def test_half_precision_on_cpu(name: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    layer, x, _ = make(name)
    y = layer.train()(torch.ones_like(x, dtype=dtype))
    assert y.dtype == dtype and torch.isfinite(y).all()
    zeros = float((y == 0).float().mean())
    assert 0.0 < zeros < 0.6
    assert float(y.float().mean()) == pytest.approx(1.0, abs=0.25)  # mean roughly preserved


@pytest.mark.parametrize("name", NAMES)
def test_reproducible_under_manual_seed(name: str) -> None:
    layer, x, _ = make(name)
    layer.train()
    torch.manual_seed(123)
    a = layer(x)
    torch.manual_seed(123)
    b = layer(x)
    torch.manual_seed(124)
    c = layer(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    ("build", "name", "bad"),
    [
        (lambda: DropBlock2d(1.0, 3), "drop_prob", "1.0"),
        (lambda: DropBlock2d(-0.1, 3), "drop_prob", "-0.1"),
        (lambda: DropBlock2d(0.1, 0), "block_size", "0"),
        (lambda: DropBlock3d(0.1, 2.5), "block_size", "2.5"),
        (lambda: DropBlock2d(0.1, 3, algorithm="fast"), "algorithm", "fast"),
        (lambda: Disout(1.2, 3), "dist_prob", "1.2"),
        (lambda: Disout(0.1, -1), "block_size", "-1"),
        (lambda: Disout(0.1, 3, alpha=-1.0), "alpha", "-1.0"),
        (lambda: Dropout(1.0), "drop_prob", "1.0"),
        (lambda: SpatialDropout(float("nan")), "drop_prob", "nan"),
        (lambda: LinearScheduler(DropBlock2d(), 0.0, 0.1, -3), "nr_steps", "-3"),
        (lambda: LinearScheduler(nn.ReLU(), 0.0, 0.1, 3), "prob_attr", "ReLU"),
    ],
)
def test_bad_arguments_raise_value_error_naming_parameter_and_value(build, name: str, bad: str) -> None:
    with pytest.raises(ValueError, match=name) as err:
        build()
    assert bad in str(err.value)


@pytest.mark.parametrize(
    ("layer", "shape", "rank"),
    [
        (DropBlock2d(), (2, 3, 8), "3"),
        (DropBlock3d(), (2, 3, 8, 8), "4"),
        (Disout(), (4, 8), "2"),
        (PatternDropout(), (2, 3, 4, 4, 4), "5"),
        (SpatialDropout(), (4, 8), "2"),
        (Dropout(), (8,), "1"),
    ],
)
def test_wrong_input_rank_is_named(layer: nn.Module, shape: tuple[int, ...], rank: str) -> None:
    with pytest.raises(ValueError, match=f"rank {rank}"):
        layer.train()(torch.ones(shape))
    with pytest.raises(ValueError, match="rank"):
        layer.eval()(torch.ones(shape))  # the check does not depend on the mode


def test_probability_set_between_steps_is_validated() -> None:
    layer = DropBlock2d(0.1, 3).train()
    layer.drop_prob = 1.5
    with pytest.raises(ValueError, match="drop_prob"):
        layer(torch.ones(2, 2, 8, 8))


def test_linear_scheduler_reproduces_dropblock_readme_sequence() -> None:
    sched = LinearScheduler(DropBlock2d(block_size=3, drop_prob=0.0), start_value=0.0, stop_value=0.25, nr_steps=5)
    seen = []
    for _ in range(8):
        sched.step()
        seen.append(sched.layer.drop_prob)
    assert seen == pytest.approx([0, 0.0625, 0.125, 0.1875, 0.25, 0.25, 0.25, 0.25])
    assert list(sched.state_dict()) == []
    x = torch.ones(4, 2, 8, 8)
    torch.manual_seed(0)
    a = sched.train()(x)
    torch.manual_seed(0)
    assert torch.equal(a, sched.layer(x))


@pytest.mark.parametrize("name", ["disout", "pattern", "spatial_dropout", "dropblock3d"])
def test_linear_scheduler_ramps_any_layer(name: str) -> None:
    layer, _, target = make(name)
    sched = LinearScheduler(layer, 0.0, target, 3)
    assert getattr(layer, layer.prob_attr) == 0.0  # starts at start_value, not the target
    for _ in range(3):
        sched.step()
    assert getattr(layer, layer.prob_attr) == pytest.approx(target)
    assert LinearScheduler(make(name)[0], 0.0, target, 0).value == pytest.approx(target)


def test_spatial_dropout_drops_whole_channels() -> None:
    torch.manual_seed(5)
    y = SpatialDropout(0.3).train()(torch.ones(256, 32, 5, 5))
    per_channel = (y == 0).flatten(2).float().mean(-1)
    assert torch.all((per_channel == 0) | (per_channel == 1))
    assert float(per_channel.mean()) == pytest.approx(0.3, abs=0.03)  # 8192 channels: 6 sigma = 0.03
    assert float(y.mean()) == pytest.approx(1.0, abs=0.05)


def auto_and_reference(name: str, x: torch.Tensor, device: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The layer's "auto" output for ``x`` on ``device`` and its CPU reference output, both from
    the same draws (seeds, noise, offsets drawn here on CPU); None for a layer that draws on the
    device itself (Dropout's fused kernel on CUDA). A layer told a layout gets the channels-first
    view of ``x`` (no copy) on the fast path; the reference gets a contiguous channels-first copy."""
    from search_space.layouts import get_layout

    layer, _, p = make(name)
    layer.train()
    name = getattr(layer, "layout", None)
    if name is None:
        return _channels_first_pair(layer, p, x, device)
    lay = get_layout(name)
    pair = _channels_first_pair(layer, p, lay.to_channels_first(x), device)
    return None if pair is None else (lay.from_channels_first(pair[0]), lay.from_channels_first(pair[1]))


def _channels_first_pair(layer, p: float, x: torch.Tensor, device: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`auto_and_reference` for a channels-first (N, C, *spatial) view ``x`` of the input."""
    from search_space.layers._blocks import reference_seeds, seed_rate
    from search_space.layers._dispatch import Route
    from search_space.layers.dropblock import drop_block

    cpu, ref = torch.device("cpu"), Route("reference", "reference")
    xd, x = x.to(device), x.contiguous()
    n, c, *size = x.shape
    if isinstance(layer, (DropBlock1d, DropBlock2d, DropBlock3d, Disout)):
        valid_only = isinstance(layer, Disout)
        kernel = tuple(min(layer.block_size, s) for s in size)
        m = 1 if getattr(layer, "share_channels", False) else c
        seeds = reference_seeds((n, m, *size), kernel, seed_rate(p, kernel, tuple(size), valid_only), valid_only, cpu)
        if valid_only:
            noise = torch.randn(x.shape)
            return (
                layer.distort(xd, p, layer.block_size, seeds=seeds.to(device), noise=noise.to(device)),
                layer.distort(x, p, layer.block_size, route=ref, seeds=seeds, noise=noise),
            )
        return (
            drop_block(xd, p, layer.block_size, layer.share_channels, seeds=seeds.to(device)),
            drop_block(x, p, layer.block_size, layer.share_channels, route=ref, seeds=seeds),
        )
    if isinstance(layer, PatternDropout):
        offsets = layer.offsets(n * (1 if layer.share_channels else c), (size[0], size[1]), cpu)
        return layer.drop(xd, offsets=offsets.to(device)), layer.drop(
            x, route=Route("gather", "reference"), offsets=offsets
        )
    if isinstance(layer, Dropout) and device == "cpu":
        from search_space.layers._dispatch import dropout_path
        from search_space.layers.simple import drop_units

        dropped = torch.rand(x.shape) < p
        return drop_units(xd, p, dropout_path("auto", cpu, p), dropped), drop_units(x, p, "reference", dropped)
    if isinstance(layer, SpatialDropout):
        dropped = torch.rand((n, c) + (1,) * len(size)) < p
        return layer.drop(xd, dropped=dropped.to(device)), layer.drop(x, route=ref, dropped=dropped)
    return None


@pytest.mark.parametrize("name", NAMES)
def test_auto_route_equals_the_reference_from_the_same_draws(name: str) -> None:
    torch.manual_seed(3)
    x = torch.randn(FACTORIES[name][1])
    pair = auto_and_reference(name, x, "cpu")
    assert pair is not None  # every layer's draws can be injected on CPU
    assert 0.05 < float((pair[1] == 0).double().mean()) < 0.6 or isinstance(make(name)[0], Disout)
    torch.testing.assert_close(pair[0], pair[1], rtol=1e-6, atol=1e-7)


# ---- CUDA -----------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu_semantics(name: str, dtype: torch.dtype) -> None:
    """CUDA output equals the CPU reference from the same draws (fp32 to rounding, halves to
    a few ulps); layers that draw on the device keep the CPU's semantics: identity in eval,
    kept units exactly ``x / (1 - p)`` (or 0 for whole channels), the CPU's drop rate."""
    torch.manual_seed(0)
    layer, x, p = make(name)
    x = x.to(dtype)
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
    pair = auto_and_reference(name, x, "cuda")
    if pair is not None:
        cuda_y, cpu_y = pair
        assert cuda_y.device.type == "cuda" and cuda_y.dtype == dtype
        torch.testing.assert_close(cuda_y.cpu(), cpu_y, **tol)
    else:
        big = torch.randn((256, *x.shape[1:]), dtype=dtype)
        layer = layer.cuda().train()
        y = layer(big.cuda()).cpu()
        y_cpu = layer.cpu()(big)
        kept = y != 0
        torch.testing.assert_close(y[kept], (big[kept].float() / (1 - p)).to(dtype), **tol)
        rate, rate_cpu = float((~kept).double().mean()), float((y_cpu == 0).double().mean())
        assert abs(rate - rate_cpu) < 0.03, (rate, rate_cpu)  # >= 4096 channels each: 3.4 sigma
    xc = x.cuda()
    assert torch.equal(layer.cuda().eval()(xc), xc)


@pytest.mark.gpu
@pytest.mark.parametrize("algorithm", ["auto", "sparse", "dense"])
@pytest.mark.parametrize("share", [True, False])
def test_cuda_dropblock_realizes_rate(algorithm: str, share: bool) -> None:
    torch.manual_seed(1)
    for p in [0.05, 0.1, 0.2, 0.3]:
        for bs in [1, 3, 5, 7]:
            for hw in [(8, 8), (16, 16), (32, 32), (12, 20)]:
                layer = DropBlock2d(p, bs, share_channels=share, algorithm=algorithm).cuda().train()
                x = torch.ones(2048, 8, *hw, device="cuda")  # >= 2048 masks per pass even when shared
                rate = float(np.mean([float((layer(x) == 0).float().mean()) for _ in range(20)]))
                assert abs(rate - p) <= 0.01, (p, bs, hw, rate)
    d = Disout(0.1, 3).cuda().train()
    rate = float(
        np.mean([float((d(torch.ones(256, 8, 16, 16, device="cuda")) == 0).float().mean()) for _ in range(20)])
    )
    assert abs(rate - 0.1) <= 0.01
