"""ConcreteDropout: its logit gradient (finite differences), the fast path against the paper's
formula, the realized drop rate, per-channel masks in every layout, eval, dtypes, regularizers."""

from __future__ import annotations

import math

import pytest
import torch

from search_space.errors import FieldError
from search_space.layers import ConcreteDropout
from search_space.layers.concrete import (
    concrete_dropout,
    concrete_reference,
    dropout_penalty,
    logistic_noise,
    mask_shape,
    weight_penalty,
)

# (input shape, channel_dim, the axes a per-channel mask is constant over)
LAYOUTS = {
    "NC": ((4, 5), None, ()),
    "NTC": ((2, 3, 4), None, ()),
    "NCHW": ((2, 3, 2, 3), 1, (2, 3)),
    "NHWC": ((2, 2, 3, 3), -1, (1, 2)),
    "NCL": ((2, 3, 4), 1, (2,)),
    "NCDHW": ((2, 3, 2, 2, 3), 1, (2, 3, 4)),
}


def _case(name: str, dtype: torch.dtype = torch.float64, seed: int = 0):
    shape, channel_dim, _ = LAYOUTS[name]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    noise = logistic_noise(mask_shape(shape, channel_dim), generator=g)
    return x, noise


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("path", [concrete_dropout, concrete_reference])
def test_gradients_match_finite_differences_in_float64(name: str, path) -> None:
    x, noise = _case(name)
    logit = torch.tensor(-0.7, dtype=torch.float64)
    for t in (0.1, 2 / 3):  # the paper's and the authors' spatial notebook's temperatures
        torch.autograd.gradcheck(
            lambda x, th, t=t: path(x, th, noise.double(), t),
            (x.clone().requires_grad_(), logit.clone().requires_grad_()),
            eps=1e-6,
            atol=1e-7,
        )


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_fast_path_equals_the_papers_formula(name: str, dtype: torch.dtype) -> None:
    """Same noise: equal outputs, input gradients and logit gradients (the fast path's
    analytic backward against autograd through the paper's formula)."""
    x, noise = _case(name, dtype)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    logit_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    results = []
    for path in (concrete_reference, concrete_dropout):
        xi = x.clone().requires_grad_()
        th = torch.tensor(0.3, dtype=logit_dtype, requires_grad=True)
        y = path(xi, th, noise, 0.1)
        y.backward(grad)
        assert y.dtype == dtype and xi.grad.dtype == dtype and th.grad.dtype == logit_dtype
        results.append((y.double(), xi.grad.double(), th.grad.double()))
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2**-7, torch.float16: 2**-10}[dtype]
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("rate", [0.05, 0.3, 0.6])
@pytest.mark.parametrize("channel_dim", [None, 1])
def test_realized_drop_rate_is_the_learned_rate(rate: float, channel_dim: int | None) -> None:
    """A unit counts as dropped when its relaxed mask z > 1/2 (kept scale below half of
    1/(1-p)): that happens with probability exactly p at any temperature. The mean of z is
    close to p at the paper's temperature 0.1."""
    torch.manual_seed(0)
    layer = ConcreteDropout(rate, n_train=100, channel_dim=channel_dim).train()
    x = torch.ones(400, 50, 4, 4)
    with torch.no_grad():
        scale = layer(x) * (1 - layer.drop_prob)  # = 1 - z
    units = scale if channel_dim is None else scale[:, :, 0, 0]
    n = units.numel()
    dropped = (units < 0.5).double().mean().item()
    assert layer.drop_prob == pytest.approx(rate, rel=1e-6)
    assert abs(dropped - rate) < 4.5 * math.sqrt(rate * (1 - rate) / n)
    assert abs((1 - units).double().mean().item() - rate) < 0.02  # E[z] ~ p at t = 0.1
    theta, t = math.log(rate / (1 - rate)), layer.temperature
    for q in (0.01, 0.99):  # the relaxed distribution itself: P(z > q) = sigmoid(theta - t logit(q))
        expected = 1 / (1 + math.exp(-(theta - t * math.log(q / (1 - q)))))
        assert abs(((1 - units) > q).double().mean().item() - expected) < 4.5 * math.sqrt(0.25 / n)


@pytest.mark.parametrize("name", ["NCHW", "NHWC", "NCL", "NCDHW"])
def test_per_channel_masks_are_constant_over_the_spatial_axes(name: str) -> None:
    shape, channel_dim, spatial = LAYOUTS[name]
    torch.manual_seed(0)
    layer = ConcreteDropout(0.4, n_train=10, channel_dim=channel_dim).train()
    x = torch.rand(shape) + 0.5
    x = x.repeat_interleave(2, 0).repeat_interleave(2, -1)  # more pairs and positions
    m = layer(x) / x
    torch.testing.assert_close(m, m.amax(dim=spatial, keepdim=True).expand_as(m), rtol=1e-6, atol=0)
    flat = m.amax(dim=spatial).reshape(-1)
    assert flat.std() > 0.1  # masks differ between (example, channel) pairs
    assert layer.units == x.shape[channel_dim]  # K = channels


def test_elementwise_masks_differ_per_unit_and_K_counts_an_examples_units() -> None:
    torch.manual_seed(0)
    layer = ConcreteDropout(0.4, n_train=10).train()
    x = torch.ones(8, 6, 5)
    y = layer(x)
    assert (y[:, :, 0] - y[:, :, 1]).abs().max() > 0.5
    assert layer.units == 30
    tokens = ConcreteDropout(0.4, n_train=10, example_dims=2).train()
    tokens(x)
    assert tokens.units == 5  # a language model: one data point per token, K = channels


def test_identity_in_eval_and_the_logit_learns_in_training() -> None:
    layer = ConcreteDropout(0.2, n_train=50, channel_dim=1)
    x = torch.randn(4, 3, 5, 5)
    assert layer.eval()(x) is x
    y = layer.train()(x)
    assert not torch.equal(y, x)
    (y * x).sum().backward()
    assert layer.logit.grad is not None and layer.logit.grad.abs() > 0
    assert [n for n, _ in layer.named_parameters()] == ["logit"] and layer.logit.dtype == torch.float32


def test_reproducible_under_manual_seed() -> None:
    layer = ConcreteDropout(0.3, n_train=50).train()
    x = torch.randn(8, 16)
    torch.manual_seed(5)
    a = layer(x)
    torch.manual_seed(5)
    assert torch.equal(a, layer(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_input_keeps_an_fp32_logit(dtype: torch.dtype) -> None:
    layer = ConcreteDropout(0.3, n_train=50, channel_dim=1).train()
    x = torch.randn(4, 8, 5, 5).to(dtype).requires_grad_()
    torch.manual_seed(1)
    y = layer(x)
    y.float().sum().backward()
    assert y.dtype == dtype and x.grad.dtype == dtype
    assert layer.logit.dtype == torch.float32 and torch.isfinite(layer.logit.grad)
    torch.manual_seed(1)
    torch.testing.assert_close(y.float(), layer(x.detach().float()), rtol=2**-7, atol=1e-2)


def test_regularizer_is_the_papers_term() -> None:
    """dropout term 1/(tau N) * K * (p log p + (1-p) log(1-p)); weight term l^2/(2 tau N) *
    ||W||^2 / (1-p), of which decayed=True leaves out the p = 0 part (the optimizer's decay)."""
    p, n, l2, tau = 0.2, 500, 0.3, 2.0
    layer = ConcreteDropout(p, n_train=n, channel_dim=1, length_scale=math.sqrt(l2), precision=tau).train()
    layer(torch.randn(2, 7, 3, 3))
    w = torch.randn(5, 7, 3, 3)
    sq = float(w.pow(2).sum())
    dropout = 7 * (p * math.log(p) + (1 - p) * math.log(1 - p)) / (tau * n)
    weight = l2 / (2 * tau * n) * sq / (1 - p)
    assert layer.regularizer().item() == pytest.approx(dropout, rel=1e-5)
    assert layer.regularizer(w).item() == pytest.approx(dropout + weight, rel=1e-5)
    decayed = layer.regularizer(w, decayed=True).item()
    assert decayed == pytest.approx(dropout + l2 / (2 * tau * n) * sq * p / (1 - p), rel=1e-4)
    # the dropout term alone pulls the rate to 1/2; the weight term pulls it down
    th = torch.zeros((), requires_grad=True)
    dropout_penalty(th).backward()
    assert abs(th.grad) < 1e-7
    th = torch.tensor(-1.0, requires_grad=True)
    dropout_penalty(th).backward()
    assert th.grad < 0  # descending raises the logit toward 0 (p toward 1/2)
    th = torch.tensor(-1.0, requires_grad=True)
    weight_penalty(th, torch.tensor(3.0)).backward()
    assert th.grad > 0  # descending lowers p


def test_regularizer_needs_a_training_forward_first() -> None:
    with pytest.raises(FieldError, match="before any training forward"):
        ConcreteDropout(0.1, n_train=10).regularizer()


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"init_rate": 0.0}, "init_rate"),
        ({"init_rate": 1.0}, "init_rate"),
        ({"n_train": 0}, "n_train"),
        ({"channel_dim": "1"}, "channel_dim"),
        ({"channel_dim": True}, "channel_dim"),
        ({"temperature": 0.0}, "temperature"),
        ({"length_scale": -1.0}, "length_scale"),
        ({"algorithm": "sparse"}, "algorithm"),
    ],
)
def test_bad_arguments_name_the_field(kwargs: dict, field: str) -> None:
    args = {"init_rate": 0.1, "n_train": 10, **kwargs}
    with pytest.raises(FieldError, match=field):
        ConcreteDropout(args.pop("init_rate"), **args)


@pytest.mark.parametrize("channel_dim", [0, 4, -4])
def test_channel_dim_outside_the_input_or_on_the_batch_is_named(channel_dim: int) -> None:
    layer = ConcreteDropout(0.1, n_train=10, channel_dim=channel_dim).train()
    with pytest.raises(FieldError, match="channel_dim"):
        layer(torch.randn(2, 3, 4, 5))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channel_dim", [None, 1, -1])
def test_cuda_matches_the_formula_and_the_rate(dtype: torch.dtype, channel_dim: int | None) -> None:
    torch.manual_seed(0)
    layer = ConcreteDropout(0.3, n_train=100, channel_dim=channel_dim).cuda().train()
    x = torch.randn(64, 16, 8, 8, device="cuda").to(dtype).requires_grad_()
    noise = logistic_noise(mask_shape(x.shape, channel_dim), "cuda")
    y = concrete_dropout(x, layer.logit, noise, 0.1)
    ref = concrete_reference(x, layer.logit, noise, 0.1)
    tol = {torch.float32: 1e-5, torch.bfloat16: 2**-7, torch.float16: 2**-10}[dtype]
    torch.testing.assert_close(y.float(), ref.float(), rtol=tol, atol=tol)
    y.float().sum().backward()
    assert layer.logit.grad.dtype == torch.float32 and torch.isfinite(layer.logit.grad)
    with torch.no_grad():
        big = layer(torch.ones(512, 64, 4, 4, device="cuda", dtype=dtype)).float() * 0.7
    assert abs((big < 0.5).float().mean().item() - 0.3) < 0.01
    assert layer.eval()(x) is x
