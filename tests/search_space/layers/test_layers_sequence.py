"""SequenceDropout (AutoDropout's Transformer pattern): rates, geometry, sharing, contract."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from search_space.layers import LinearScheduler, SequenceDropout

SETTINGS = [
    (size, stride, st, sc)
    for size, stride in [(1, 1), (1, 3), (2, 4), (3, 5), (4, 2), (8, 8)]
    for st, sc in itertools.product((False, True), repeat=2)
]


def _rate_tolerance(layer: SequenceDropout, n: int, t: int, c: int, draws: int) -> float:
    """5 sigma of the mean dropped fraction; noise units are the independent draws (offsets add
    a little correlation, so sigma uses the coarsest unit: one block of tokens)."""
    units_t = layer.n_units(t) if layer.share_t else t
    units = n * units_t * (1 if layer.share_c else c) * draws
    q = layer.block_rate
    var_unit = max(q * (1 - q), 1e-3) * (min(layer.size, layer.stride) if layer.share_t else 1)
    return 5 * math.sqrt(var_unit / units) + 0.004


@pytest.mark.parametrize("size,stride,share_t,share_c", SETTINGS)
def test_realized_rate_matches_expected(size: int, stride: int, share_t: bool, share_c: bool) -> None:
    torch.manual_seed(size * 100 + stride * 10 + 2 * share_t + share_c)
    layer = SequenceDropout(0.2, size, stride, share_t, share_c)
    n, t, c, draws = 32, 40, 16, 40
    x = torch.ones(n, t, c)
    rates = [(layer(x) == 0).float().mean().item() for _ in range(draws)]
    expected = min(0.2, min(size, stride) / stride)
    assert layer.expected_rate == pytest.approx(expected)
    assert abs(sum(rates) / draws - expected) < _rate_tolerance(layer, n, t, c, draws)


@pytest.mark.parametrize("size,stride,share_t,share_c", SETTINGS[::3])
def test_rescale_keeps_the_sum_and_gradient_is_the_mask(size, stride, share_t, share_c) -> None:
    torch.manual_seed(3)
    layer = SequenceDropout(0.3, size, stride, share_t, share_c)
    x = torch.ones(8, 24, 6, requires_grad=True)
    out = layer(x)
    kept = (out != 0).float()
    assert out.sum().item() == pytest.approx(x.numel(), rel=1e-5)  # scale = numel / kept exactly
    assert torch.allclose(out[out != 0], torch.full_like(out[out != 0], x.numel() / kept.sum().item()))
    out.sum().backward()
    assert torch.allclose(x.grad, out.detach())  # d out / d x = keep * scale


def test_geometry_blocks_of_size_every_stride_from_a_random_offset() -> None:
    """At block_rate 1 the dropped tokens are exactly the tiling: runs of `size` every `stride`."""
    torch.manual_seed(0)
    size, stride, t = 3, 7, 50
    layer = SequenceDropout(0.9, size, stride, share_t=True, share_c=True)  # saturated: q = 1
    assert layer.block_rate == 1.0 and layer.expected_rate == pytest.approx(3 / 7)
    drop = layer.drop_mask(torch.zeros(400, t, 4))[..., 0]
    offsets = set()
    for row in drop.tolist():
        matches = [o for o in range(stride) if row == [(j - o) % stride < size for j in range(t)]]
        assert len(matches) == 1  # the row is one tiling, of exactly one offset
        offsets.add(matches[0])
    assert offsets == set(range(stride))  # every offset occurs (400 draws of 7 values)


def test_sharing_flags_shape_the_noise() -> None:
    torch.manual_seed(1)
    x = torch.zeros(16, 32, 8)
    # share_c: one mask for all channels (mask broadcast over C)
    m = SequenceDropout(0.3, 2, 4, share_t=False, share_c=True).drop_mask(x)
    assert m.shape == (16, 32, 1)
    # not share_c: channels differ
    m = SequenceDropout(0.3, 4, 4, share_t=False, share_c=False).drop_mask(x)
    assert m.shape == (16, 32, 8) and (m.any(-1) & ~m.all(-1)).any()
    # share_t with full coverage (size == stride): each period of 4 tokens (from the offset) is constant
    layer = SequenceDropout(0.5, 4, 4, share_t=True, share_c=False)
    for _ in range(5):
        m = layer.drop_mask(x)
        changes = (m[:, 1:] != m[:, :-1]).any(-1).float().sum(1)  # boundaries where the mask changes
        assert (changes <= (32 - 1) // 4 + 1).all()
        # not share_t: token masks change much more often
    m2 = SequenceDropout(0.5, 4, 4, share_t=False, share_c=False).drop_mask(x)
    assert (m2[:, 1:] != m2[:, :-1]).any(-1).float().sum(1).mean() > 20


@pytest.mark.parametrize("shape,batch_first", [((5, 19, 7), True), ((19, 5, 7), False), ((3, 2, 11, 11), True)])
@pytest.mark.parametrize("size,stride,share_t,share_c", SETTINGS[1::4])
def test_fast_path_equals_reference(shape, batch_first, size, stride, share_t, share_c) -> None:
    x = torch.randn(shape)
    out = {}
    for algorithm in ("auto", "reference"):
        layer = SequenceDropout(
            0.25,
            size,
            stride,
            share_t,
            share_c,
            batch_first=batch_first,
            algorithm=algorithm,
            generator=torch.Generator().manual_seed(11),
        )
        out[algorithm] = layer(x)
    assert torch.equal(out["auto"], out["reference"])


def test_batch_first_false_tiles_along_dim0() -> None:
    layer = SequenceDropout(
        0.9, 2, 5, share_t=True, share_c=True, batch_first=False, generator=torch.Generator().manual_seed(0)
    )
    m = layer.drop_mask(torch.zeros(30, 4, 3))
    assert m.shape == (30, 4, 1)
    assert torch.allclose(m.float().mean(0).squeeze(-1), torch.full((4,), 2 / 5), atol=0.05)


def test_identity_in_eval_and_at_zero_and_errors() -> None:
    x = torch.randn(2, 9, 4)
    layer = SequenceDropout(0.3, 2, 3).eval()
    assert layer(x) is x
    assert SequenceDropout(0.0)(x) is x
    assert SequenceDropout(0.3)(torch.zeros(0, 5, 4)).shape == (0, 5, 4)
    for kwargs in ({"size": 0}, {"stride": 1.5}, {"share_t": 1}, {"drop_prob": 1.0}, {"algorithm": "x"}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            SequenceDropout(**kwargs)
    with pytest.raises(ValueError, match="rank"):
        SequenceDropout()(torch.zeros(4, 4))


def test_seeded_generator_reproduces_and_bf16() -> None:
    x = torch.randn(4, 16, 8, dtype=torch.bfloat16)
    a = SequenceDropout(0.2, 2, 4, generator=torch.Generator().manual_seed(5))(x)
    b = SequenceDropout(0.2, 2, 4, generator=torch.Generator().manual_seed(5))(x)
    c = SequenceDropout(0.2, 2, 4, generator=torch.Generator().manual_seed(6))(x)
    assert a.dtype == torch.bfloat16 and torch.equal(a, b) and not torch.equal(a, c)


def test_linear_scheduler_ramps_the_realized_rate() -> None:
    torch.manual_seed(0)
    layer = SequenceDropout(0.4, 2, 4, share_t=False, share_c=False)
    sched = LinearScheduler(layer, 0.0, 0.4, nr_steps=5)
    x = torch.ones(64, 32, 16)
    rates = []
    for _ in range(6):
        rates.append((sched(x) == 0).float().mean().item())
        sched.step()
    assert rates[0] == 0.0
    for got, want in zip(rates, [0.0, 0.0, 0.1, 0.2, 0.3, 0.4]):
        assert abs(got - want) < 0.02


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_rate_and_reference(dtype) -> None:
    x = torch.ones(64, 48, 32, device="cuda", dtype=dtype)
    layer = SequenceDropout(0.2, 3, 5, share_t=True, share_c=False)
    rate = sum((layer(x) == 0).float().mean().item() for _ in range(50)) / 50
    assert abs(rate - 0.2) < 0.01 and layer(x).dtype == dtype
    outs = [
        SequenceDropout(0.2, 3, 5, True, False, algorithm=a, generator=torch.Generator("cuda").manual_seed(1))(x)
        for a in ("auto", "reference")
    ]
    # the device route rounds the scale to the dtype first: bf16 within 2 ulps
    tol = {"rtol": 2**-7, "atol": 0} if dtype == torch.bfloat16 else {"rtol": 0, "atol": 0}
    torch.testing.assert_close(outs[0], outs[1], **tol)
