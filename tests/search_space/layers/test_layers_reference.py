"""Every fast path of every layer equals its reference path, from the same draws.

Each layer has ``algorithm="reference"`` (the paper's algorithm: Bernoulli seeds, max-pool
dilation, one masked multiply). Here the reference and each fast route (samplers: sparse,
dense, pool = the CUDA branch run on CPU, hits; appliers: masked multiply, pixel-row zeroing,
the device branch) get the same injected seeds, noise, offsets or drops, and must give equal
outputs and gradients: bit-equal in fp64/fp32 where both round once, within stated
tolerances where a path rounds differently (bf16 scale on the device branch, Disout's fp32
noise).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from search_space.layers import Disout, Dropout, PatternDropout, SequenceDropout, SpatialDropout, _dispatch
from search_space.layers._blocks import reference_seeds, seed_rate
from search_space.layers._dispatch import Route
from search_space.layers.dropblock import drop_block
from search_space.layers.simple import drop_units

CPU = torch.device("cpu")
CL = {4: torch.channels_last, 5: torch.channels_last_3d}
REFERENCE = Route("reference", "reference")


def block_routes(k: int, shared: bool, channels_last: bool) -> list[Route]:
    """Every fast DropBlock route valid for the case (rows need a listed sampler and a
    channels_last input; hits need block 1)."""
    samplers = ["sparse", "dense", "pool"] + (["hits"] if k == 1 else [])
    routes = [Route(s, a, False) for s, a in itertools.product(samplers, ["masked", "device"])]
    if shared and channels_last:
        routes += [Route(s, "rows", True) for s in samplers if s in ("sparse", "hits")]
    return routes


def forward_backward(fn, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xi = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    y = fn(xi)
    y.backward(grad)
    return y.detach().contiguous(), xi.grad.contiguous()


def inputs(shape: tuple[int, ...], dtype: torch.dtype, channels_last: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    grad = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    if channels_last:
        x, grad = x.contiguous(memory_format=CL[len(shape)]), grad.contiguous(memory_format=CL[len(shape)])
    return x, grad


def assert_equal(a, b, dtype: torch.dtype, what: str) -> None:
    if dtype == torch.bfloat16:  # the device branch rounds the scale to bf16 first: <= 2 ulps
        torch.testing.assert_close(a, b, rtol=2**-7, atol=0, msg=what)
    else:
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=what)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize(
    "shape, k, p", [((4, 6, 9, 11), 3, 0.2), ((4, 6, 8, 8), 4, 0.3), ((3, 5, 7, 9), 1, 0.2), ((2, 4, 5, 6, 7), 3, 0.2)]
)
def test_dropblock_fast_routes_equal_the_reference(shape, k, p, shared, channels_last, dtype) -> None:
    x, grad = inputs(shape, dtype, channels_last)
    size = shape[2:]
    kernel = tuple(min(k, s) for s in size)
    torch.manual_seed(1)
    seeds = reference_seeds(
        (shape[0], 1 if shared else shape[1], *size), kernel, seed_rate(p, kernel, size, False), False, CPU
    )
    ref = forward_backward(lambda t: drop_block(t, p, k, shared, route=REFERENCE, seeds=seeds), x, grad)
    assert 0.05 < float((ref[0] == 0).double().mean()) < 0.6  # blocks were dropped, not all
    for route in block_routes(k, shared, channels_last):
        out = forward_backward(lambda t, route=route: drop_block(t, p, k, shared, route=route, seeds=seeds), x, grad)
        assert_equal(out[0], ref[0], dtype, f"output {route}")
        assert_equal(out[1], ref[1], dtype, f"gradient {route}")


@pytest.mark.parametrize("zero_again", [True, False])  # Disout's two backward forms
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("with_weight", [False, True])
@pytest.mark.parametrize("k", [3, 1])
def test_disout_fast_routes_equal_the_reference(
    k: int, with_weight: bool, channels_last: bool, zero_again: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same seeds and the same standard-normal field: the sparse/hits routes write it on the
    listed cells only, the dense/pool routes mask it. Noise is drawn in fp32 on the fast
    routes (rtol 1e-6); kept units and gradients agree to fp64 rounding of the scale."""
    monkeypatch.setattr(_dispatch, "ZERO_AGAIN_MAX_CELLS_PER_UNIT", float("inf") if zero_again else 0.0)
    shape, p = (4, 6, 9, 11), 0.2
    x, grad = inputs(shape, torch.float64, channels_last, seed=2)
    x = x * 3.0 + 1.0
    layer = Disout(p, k, alpha=2.0).train()
    if with_weight:
        layer.weight_behind = torch.randn(5, 6, 3, 3, generator=torch.Generator().manual_seed(3))
    kernel = (k, k)
    torch.manual_seed(4)
    seeds = reference_seeds(shape, kernel, seed_rate(p, kernel, shape[2:], True), True, CPU)
    noise = torch.randn(shape, dtype=torch.float64)
    outs = {}
    routes = [REFERENCE, Route("sparse", "cells", True), Route("dense", "noise", True), Route("pool", "noise", True)]
    if k == 1:
        routes.append(Route("hits", "cells", True))
    for route in routes:
        torch.manual_seed(5)  # the weight's random signs
        outs[route] = forward_backward(
            lambda t, route=route: layer.distort(t, p, k, route=route, seeds=seeds, noise=noise), x, grad
        )
    ref = outs.pop(REFERENCE)
    dropped = float((ref[1] == 0).double().mean())
    assert 0.1 < dropped < 0.35
    for route, (y, g) in outs.items():
        torch.testing.assert_close(y, ref[0], rtol=1e-6, atol=1e-12, msg=f"output {route}")
        torch.testing.assert_close(g, ref[1], rtol=1e-6, atol=0, msg=f"gradient {route}")
        assert torch.equal(g == 0, ref[1] == 0), route  # the same units carry noise


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape, channels_last", [((64, 40), False), ((4, 6, 9, 11), False), ((4, 6, 9, 11), True)])
@pytest.mark.parametrize("p", [0.1, 0.6])
def test_dropout_fast_routes_equal_the_reference(p: float, shape, channels_last: bool, dtype) -> None:
    x, grad = inputs(shape, dtype, channels_last, seed=6)
    dropped = torch.rand(shape, generator=torch.Generator().manual_seed(7)) < p
    ref = forward_backward(lambda t: drop_units(t, p, "reference", dropped), x, grad)
    for path in ("hits", "bytes"):
        out = forward_backward(lambda t, path=path: drop_units(t, p, path, dropped), x, grad)
        torch.testing.assert_close(out[0], ref[0], rtol=0, atol=0, msg=path)
        torch.testing.assert_close(out[1], ref[1], rtol=0, atol=0, msg=path)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shared", [False, True])
def test_pattern_fast_routes_equal_the_reference(shared: bool, channels_last: bool, dtype) -> None:
    layer = PatternDropout(
        size=(2, 3), stride=(4, 5), repeat=(2, 2), rotate=30.0, shear_x=0.2, share_channels=shared, apply_prob=0.8
    ).train()
    shape = (4, 6, 9, 11)
    x, grad = inputs(shape, dtype, channels_last, seed=8)
    torch.manual_seed(9)
    offsets = layer.offsets(shape[0] * (1 if shared else shape[1]), shape[2:], CPU)
    ref = forward_backward(lambda t: layer.drop(t, route=Route("gather", "reference"), offsets=offsets), x, grad)
    routes = [Route(s, a) for s, a in itertools.product(["table", "gather"], ["masked", "device"])]
    if shared and channels_last:
        routes += [Route("table", "rows"), Route("gather", "rows")]
    for route in routes:
        out = forward_backward(lambda t, route=route: layer.drop(t, route=route, offsets=offsets), x, grad)
        assert_equal(out[0], ref[0], dtype, f"output {route}")
        assert_equal(out[1], ref[1], dtype, f"gradient {route}")


@pytest.mark.parametrize(
    "layer", [PatternDropout(2, 4, 2, rotate=15.0, apply_prob=0.7), PatternDropout(2, 4, 2, share_channels=True)]
)
def test_pattern_layer_equals_its_reference_under_the_same_seed(layer: PatternDropout) -> None:
    """Both algorithms draw the offsets the same way, so whole layers agree seed for seed."""
    x = torch.randn(4, 6, 9, 11).contiguous(memory_format=torch.channels_last)
    outs = []
    for algorithm in ("auto", "reference"):
        layer.algorithm = algorithm
        torch.manual_seed(10)
        outs.append(layer.train()(x).contiguous())
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,channels_last", [((4, 6, 5, 7), False), ((4, 6, 5, 7), True), ((3, 4, 2, 3, 5), True)])
def test_spatial_fast_route_equals_the_reference(shape, channels_last: bool, dtype) -> None:
    x, grad = inputs(shape, dtype, channels_last)
    dropped = torch.rand(shape[:2] + (1,) * (len(shape) - 2), generator=torch.Generator().manual_seed(2)) < 0.4
    assert dropped.any() and not dropped.all()
    layer = SpatialDropout(0.4).train()
    route, reference = _dispatch.spatial_route("auto"), _dispatch.spatial_route("reference")
    want = forward_backward(lambda t: layer.drop(t, route=reference, dropped=dropped), x, grad)
    got = forward_backward(lambda t: layer.drop(t, route=route, dropped=dropped), x, grad)
    for a, b, what in zip(got, want, ("output", "gradient")):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{route} {what}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("apply", ["masked", "device"])
@pytest.mark.parametrize("shape,batch_first,share_c", [((5, 19, 7), True, False), ((19, 5, 7), False, True)])
def test_sequence_fast_routes_equal_the_reference(shape, batch_first: bool, share_c: bool, apply: str, dtype) -> None:
    x, grad = inputs(shape, dtype, False)
    layer = SequenceDropout(0.3, 2, 3, share_t=True, share_c=share_c, batch_first=batch_first).train()
    n, t = (shape[0], shape[1]) if batch_first else (shape[1], shape[0])
    draws = layer.draws(n, t, (shape[2],), CPU)
    want = forward_backward(lambda z: layer.drop(z, route=Route("loops", "reference"), draws=draws), x, grad)
    got = forward_backward(lambda z: layer.drop(z, route=Route("index", apply), draws=draws), x, grad)
    assert 0 < float((want[0] == 0).double().mean()) < 0.6
    for a, b, what in zip(got, want, ("output", "gradient")):
        assert_equal(a, b, dtype if apply == "device" else torch.float32, f"{apply} {what}")


def test_reference_algorithm_is_selectable_on_every_layer() -> None:
    """``algorithm="reference"`` reaches the reference function of each layer."""
    from search_space.layers import DropBlock2d, DropBlock3d

    x = torch.ones(64, 4, 12, 12)
    for layer in [
        DropBlock2d(0.2, 3, algorithm="reference"),
        DropBlock3d(0.2, 3, algorithm="reference"),
        Disout(0.2, 3, algorithm="reference"),
        Dropout(0.2, algorithm="reference"),
        PatternDropout(algorithm="reference"),
        SpatialDropout(0.2, algorithm="reference"),
        SequenceDropout(0.2, size=2, stride=4, algorithm="reference"),
    ]:
        xi = torch.ones(16, 4, 6, 6, 6) if isinstance(layer, DropBlock3d) else x
        xi = torch.ones(64, 12, 48) if isinstance(layer, SequenceDropout) else xi
        xi = torch.ones(64, 64, 2, 2) if isinstance(layer, SpatialDropout) else xi  # 4096 channels
        torch.manual_seed(11)
        y = layer.train()(xi)
        zeros = float((y == 0).double().mean())
        assert 0.1 < zeros < 0.3, (type(layer).__name__, zeros)
        assert float(y.double().mean()) == pytest.approx(1.0, abs=0.03)


def test_dispatch_picks_the_documented_route() -> None:
    """One decision per layer, thresholds as documented in `_dispatch` (CUDA is only a device
    name here: nothing runs on it)."""
    from search_space.layers._dispatch import (
        block_path,
        block_route,
        dropout_path,
        pattern_route,
    )

    cuda = torch.device("cuda")
    few = seed_rate(0.05, (3, 3), (16, 16), False)  # ~0.05 dropped cells per unit
    many = seed_rate(0.5, (3, 3), (16, 16), False)  # ~0.7 per unit
    assert block_path("auto", CPU, few, (3, 3), (16, 16), False, False) == "sparse"
    assert block_path("auto", CPU, many, (3, 3), (16, 16), False, False) == "dense"
    assert block_path("auto", CPU, many, (3, 3), (16, 16), False, True) == "sparse"  # cells wanted
    assert block_path("auto", CPU, many, (1, 1), (16, 16), False, False) == "hits"
    assert block_path("auto", cuda, few, (3, 3), (16, 16), False, False) == "pool"
    assert block_path("dense", cuda, few, (3, 3), (16, 16), False, False) == "pool"
    assert block_path("sparse", cuda, few, (3, 3), (16, 16), False, False) == "sparse"
    x = torch.zeros(2, 4, 16, 16)
    cl = x.contiguous(memory_format=torch.channels_last)
    assert block_route("auto", cl, few, (3, 3), False, shared=True) == Route("sparse", "rows", True)
    assert block_route("auto", x, few, (3, 3), False, shared=True) == Route("sparse", "masked", False)
    assert block_route("auto", cl, few, (3, 3), False, shared=False) == Route("sparse", "masked", False)
    assert block_route("dense", cl, few, (3, 3), False, shared=True).apply == "masked"  # no cells listed
    assert block_route("auto", x, many, (3, 3), True, distort=True) == Route("sparse", "cells", True)
    assert block_route("dense", x, many, (3, 3), True, distort=True) == Route("dense", "noise", True)
    assert block_route("reference", x, few, (3, 3), False) == REFERENCE
    assert dropout_path("auto", CPU, 0.1) == "hits" and dropout_path("auto", CPU, 0.2) == "bytes"
    assert dropout_path("auto", cuda, 0.1) == "fused" and dropout_path("sparse", cuda, 0.1) == "hits"
    assert pattern_route("auto", cl, True) == Route("table", "rows")
    assert pattern_route("auto", torch.zeros(1, 1, 65, 64), False) == Route("gather", "masked")
    assert pattern_route("reference", cl, True) == Route("gather", "reference")
    assert _dispatch.spatial_route("auto") == Route("channels", "masked")
    assert _dispatch.spatial_route("reference") == Route("channels", "reference")
    assert _dispatch.sequence_route("auto", x) == Route("index", "masked")
    assert _dispatch.sequence_route("auto", torch.zeros(2, 3, 4, device="meta")) == Route("index", "device")
    assert _dispatch.sequence_route("reference", x) == Route("loops", "reference")
    for bad in (lambda: SpatialDropout(algorithm="sparse"), lambda: SequenceDropout(algorithm="dense")):
        with pytest.raises(ValueError, match=r"algorithm: bad value '\w+'; allowed: one of \['auto', 'reference'\]"):
            bad()
    with pytest.raises(ValueError, match=r"algorithm: bad value 'fast'; allowed: one of \['auto', 'reference'"):
        block_path("fast", CPU, few, (3, 3), (16, 16), False, False)
