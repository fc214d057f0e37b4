"""Mask-free drops (`_drop_ops.scale_and_zero`): exact forward/backward, and the layers that use it
give the same result as the masked multiply they replace."""

from __future__ import annotations

import pytest
import torch

from search_space.layers import (
    Disout,
    DropBlock2d,
    DropBlock3d,
    Dropout,
    PatternDropout,
)
from search_space.layers._blocks import kept_count
from search_space.layers._drop_ops import (
    mask_and_scale,
    scale_and_zero,
    scale_and_zero_pixels,
    write_units,
)
from search_space.layers._layout import storage_view

CL = torch.channels_last


def _masked_reference(x: torch.Tensor, scale: float, index: torch.Tensor, width: int) -> torch.Tensor:
    keep = torch.ones(x.numel() // width, width, dtype=x.dtype)
    keep[index] = 0
    mask = torch.empty_like(x)
    storage_view(mask).copy_(keep.view(-1))
    return mask * scale


@pytest.mark.parametrize("width, layout", [(1, "contiguous"), (1, "channels_last"), (6, "channels_last")])
def test_scale_and_zero_matches_masked_multiply_forward_and_backward(width: int, layout: str) -> None:
    """Width 1: storage units (any dense layout); width C: pixel rows of a channels_last map."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 5, 7, generator=g, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=CL)
    x.requires_grad_()
    index = torch.randint(0, x.numel() // width, (30,), generator=g)  # with repeats
    grad = torch.randn(x.shape, generator=g, dtype=torch.float64)
    y = scale_and_zero(x, 1.25, index) if width == 1 else scale_and_zero_pixels(x, 1.25, index)
    assert y.stride() == x.stride()
    mask = _masked_reference(x.detach(), 1.25, index, width)
    torch.testing.assert_close(y, x.detach() * mask, rtol=0, atol=0)
    y.backward(grad)
    torch.testing.assert_close(x.grad, grad * mask, rtol=0, atol=0)
    assert int((mask == 0).sum()) == width * len(index.unique())


def test_scale_and_zero_values_overwrite_and_get_no_gradient() -> None:
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([0, 5, 5, 40])
    values = torch.tensor([7.0, 8.0, 9.0, 10.0], dtype=torch.float64)
    y = scale_and_zero(x, 2.0, index, values=values)
    flat = y.detach().view(-1)
    assert flat[0] == 7.0 and flat[5] == 9.0 and flat[40] == 10.0  # the last write wins
    others = torch.ones(x.numel(), dtype=torch.bool)
    others[index] = False
    torch.testing.assert_close(flat[others], 2.0 * x.detach().view(-1)[others])
    y.sum().backward()
    expected = torch.full((x.numel(),), 2.0, dtype=torch.float64)
    expected[index] = 0.0
    torch.testing.assert_close(x.grad.view(-1), expected)


def test_storage_level_helpers_reject_layouts_that_would_scramble_masks() -> None:
    """Pixel rows need channels_last (an (N, W, H, C)-stored input numbers its pixels in
    another order); storage offsets need a dense layout; counting needs a uint8 mask."""
    x = torch.randn(2, 4, 5, 9)
    odd = x.permute(0, 3, 2, 1).contiguous().permute(0, 3, 2, 1)  # channels innermost, not channels_last
    for bad in (x, odd):
        with pytest.raises(ValueError, match=r"x layout: bad value .*; allowed: channels_last strides"):
            scale_and_zero_pixels(bad, 1.0, torch.tensor([0]))
    gappy = torch.randn(2, 4, 5, 18)[..., ::2]
    with pytest.raises(ValueError, match=r"x layout: bad value .*; allowed: a dense layout"):
        scale_and_zero(gappy, 1.0, torch.tensor([0]))
    with pytest.raises(ValueError, match=r"layout: bad value"):
        storage_view(gappy)
    with pytest.raises(ValueError, match=r"y dtype: bad value torch.int32"):
        write_units(torch.zeros(4, dtype=torch.int32), torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"keep dtype: bad value torch.bool"):
        kept_count(torch.ones(8, dtype=torch.bool))


@pytest.mark.parametrize(
    "layer, shape, cl",
    [
        (DropBlock2d(0.2, 3, share_channels=True), (8, 16, 12, 12), CL),
        (DropBlock3d(0.2, 3, share_channels=True), (4, 8, 6, 6, 6), torch.channels_last_3d),
        (PatternDropout(2, 4, 2, rotate=30.0, share_channels=True, apply_prob=0.8), (8, 16, 12, 12), CL),
        (PatternDropout(2, 3, 2, shear_x=0.2, share_channels=False, apply_prob=0.8), (8, 16, 12, 12), CL),
    ],
)
def test_channels_last_paths_equal_the_contiguous_path(layer, shape, cl) -> None:
    """Same seed, same masks: the channels_last paths (shared: rows zeroed; per-channel
    pattern: masks gathered in channels_last order) and the contiguous path (a multiply by
    the mask) agree exactly, forward and backward."""
    x = torch.randn(shape, dtype=torch.float64)
    grad = torch.randn(shape, dtype=torch.float64)
    outs = []
    for fmt in (torch.contiguous_format, cl):
        xi = x.clone(memory_format=fmt).requires_grad_()
        torch.manual_seed(5)
        y = layer.train()(xi)
        y.backward(grad)
        outs.append((y.detach().contiguous(), xi.grad.contiguous()))
    assert 0.05 < float((outs[0][0] == 0).double().mean()) < 0.3  # something was dropped
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=0, atol=0)
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=0, atol=0)


@pytest.mark.parametrize("p", [0.05, 0.1])  # the sparse-hit regime of Dropout on CPU
def test_sparse_dropout_gradient_follows_its_forward_mask(p: float) -> None:
    x = (torch.rand(64, 16, 16, 16, dtype=torch.float64) + 0.5).contiguous(memory_format=CL).requires_grad_()
    grad = torch.randn(x.shape, dtype=torch.float64)
    y = Dropout(p).train()(x)
    y.backward(grad)
    kept = y.detach() != 0
    assert abs(1.0 - float(kept.double().mean()) - p) < 0.005  # 262k units: 5 sigma ~ 0.003
    torch.testing.assert_close(y.detach()[kept], x.detach()[kept] / (1 - p))
    torch.testing.assert_close(x.grad, torch.where(kept, grad / (1 - p), 0.0))


def test_disout_gradient_is_zero_exactly_where_noise_was_written() -> None:
    layer = Disout(0.2, 3, alpha=1.0).train()
    x = (torch.rand(16, 8, 12, 12, dtype=torch.float64) + 0.5).contiguous(memory_format=CL).requires_grad_()
    torch.manual_seed(0)
    y = layer(x)
    y.sum().backward()
    written = x.grad == 0
    assert 0.15 < float(written.double().mean()) < 0.25
    ratio = (y.detach() / x.detach())[~written]  # kept units: x * numel / kept
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(x.grad[~written][0])))
    assert float(x.grad[~written][0]) == pytest.approx(1 / (1 - float(written.double().mean())))


@pytest.mark.parametrize(
    "mask_shape, mask_format",
    [
        ((4, 6, 5, 7), torch.contiguous_format),  # full size, other layout than x: copied into x's
        ((4, 6, 5, 7), CL),
        ((4, 1, 5, 7), torch.contiguous_format),  # one mask per example (broadcast over channels)
        ((4, 6, 1, 1), torch.contiguous_format),  # one per channel (spatial dropout)
    ],
)
def test_mask_and_scale_is_one_rounding_of_x_times_mask_times_scale(mask_shape, mask_format) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, 5, 7, generator=g, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_()
    keep = (torch.rand(mask_shape, generator=g) > 0.3).to(torch.uint8).contiguous(memory_format=mask_format)
    grad = torch.randn(x.shape, generator=g, dtype=torch.float64)
    y = mask_and_scale(x, keep, 1.5)
    assert y.stride() == x.stride() and y.dtype == x.dtype
    torch.testing.assert_close(y, x.detach() * keep * 1.5, rtol=0, atol=1e-15)
    y.backward(grad)
    torch.testing.assert_close(x.grad, grad * keep * 1.5, rtol=0, atol=1e-15)
    assert (x.grad == 0).sum() >= (keep == 0).sum() * x.numel() // keep.numel()


def test_mask_and_scale_in_bf16_rounds_once() -> None:
    x = torch.full((2, 3, 4, 4), 1.0 + 2**-7, dtype=torch.bfloat16)  # exactly representable
    keep = torch.ones(2, 3, 4, 4, dtype=torch.uint8)
    y = mask_and_scale(x, keep, 1.0 / 0.9)
    exact = (1.0 + 2**-7) / 0.9
    assert float(y[0, 0, 0, 0]) == float(torch.tensor(exact).to(torch.bfloat16))  # not via bf16(1/0.9)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-9), (torch.float32, 1e-4), (torch.bfloat16, 0.015)])
@pytest.mark.parametrize("mean", [0.0, 0.7, 3.0, 40.0])  # in units of the std: up to heavy cancellation
def test_disout_noise_scale_std_is_accurate(dtype: torch.dtype, tolerance: float, mean: float) -> None:
    from search_space.layers.disout import _detached_std

    g = torch.Generator().manual_seed(2)
    x = (torch.randn(64, 16, 16, 16, generator=g, dtype=torch.float64) * 2.0 + 2.0 * mean).to(dtype)
    x = x.contiguous(memory_format=CL)
    exact = float(x.double().var().sqrt())
    assert float(_detached_std(x)) == pytest.approx(exact, rel=tolerance)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_scale_and_zero_writes_values_in_index_order_with_repeats(dtype: torch.dtype) -> None:
    """Values are scattered as bit patterns (fast on CPU); the last write to a unit wins, as
    a loop over the index would do, so the result does not depend on threads."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, 16, 16, generator=g).to(dtype).contiguous(memory_format=CL)
    index = torch.randint(0, 300, (5000,), generator=g)  # every written unit ~17 times
    values = torch.randn(5000, generator=g).to(dtype)
    y = scale_and_zero(x, 1.5, index, values=values)
    expected = (x * 1.5).permute(0, 2, 3, 1).reshape(-1).clone()
    for i, v in zip(index.tolist(), values):
        expected[i] = v
    assert torch.equal(storage_view(y), expected)


def test_mask_and_scale_with_written_values_equals_scale_and_zero() -> None:
    """Disout's two CPU paths (mask + write, or scale + write + zero again) agree exactly."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 6, 5, 7, generator=g, dtype=torch.float64).contiguous(memory_format=CL)
    keep = (torch.rand(x.shape, generator=g) > 0.3).to(torch.uint8).contiguous(memory_format=CL)
    dropped = torch.nonzero(storage_view(keep) == 0).view(-1)
    index = torch.cat([dropped, dropped[::3]])  # repeats, as overlapping blocks give
    values = torch.randn(len(index), generator=g, dtype=torch.float64)
    grad = torch.randn(x.shape, generator=g, dtype=torch.float64)
    outs = []
    for apply in (
        lambda t: mask_and_scale(t, keep, 1.4, index, values),
        lambda t: scale_and_zero(t, 1.4, index, values=values),
    ):
        xi = x.clone(memory_format=CL).requires_grad_()
        y = apply(xi)
        y.backward(grad)
        outs.append((y.detach(), xi.grad))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=1e-15)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="index, values: bad value .*; allowed: both tensors or both None"):
        mask_and_scale(x, keep, 1.0, index)


@pytest.mark.parametrize("numel", [0, 7, 1000, 2**18 - 1, 2**18 + 5, 2**20])
@pytest.mark.parametrize("offset", [0, 3])
def test_kept_count_counts_ones_of_a_uint8_mask(numel: int, offset: int) -> None:
    g = torch.Generator().manual_seed(numel)
    base = (torch.rand(numel + offset, generator=g) > 0.3).to(torch.uint8)
    keep = base[offset:]  # an unaligned start reads bytes, not words
    assert int(kept_count(keep)) == int(keep.sum())


@pytest.mark.parametrize(
    "layer",
    [
        DropBlock2d(0.2, 3, share_channels=True),
        PatternDropout(2, 4, 2, rotate=30.0, share_channels=True, apply_prob=0.8),
    ],
)
def test_shared_masks_in_an_unusual_channels_innermost_order_equal_the_contiguous_path(layer) -> None:
    """Stored (N, W, H, C): channels innermost but not channels_last, so pixels are not the
    shared mask's rows in order; the result must still equal the contiguous path's."""
    x = torch.randn(2, 4, 5, 9, dtype=torch.float64)
    odd = x.permute(0, 3, 2, 1).contiguous().permute(0, 3, 2, 1)
    assert odd.stride(1) == 1 and not odd.is_contiguous(memory_format=CL)
    outs = []
    for xi in (x, odd):
        torch.manual_seed(0)
        outs.append(layer.train()(xi).contiguous())
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)


@pytest.mark.parametrize(
    "layer",
    [Dropout(0.1), Dropout(0.5), DropBlock2d(0.1, 3), DropBlock2d(0.3, 3, True), Disout(0.1, 3), PatternDropout()],
)
def test_empty_batch_passes_through(layer) -> None:
    x = torch.randn(0, 4, 8, 8).contiguous(memory_format=CL).requires_grad_()
    y = layer.train()(x)
    y.sum().backward()
    assert y.shape == x.shape and x.grad.shape == x.shape
