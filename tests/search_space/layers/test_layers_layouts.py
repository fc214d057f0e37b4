"""Every method on its right axes in every layout it is offered (search_space.layouts).

A layer told a layout acts on the axes it names: looked at the masks themselves, a shared
DropBlock mask on N,H,W,C drops whole positions (all C), blocks are squares in H,W,
spatial_dropout drops channels, blocks on N,C,L run along L, the sequence pattern on N,C,L
tiles L. The realized rate on every new layout is within 0.01 of the request (tolerances
are >= 3 standard deviations of the estimate for the sample sizes used), every fast route on
a permuted view equals the reference on a contiguous channels-first copy, and a
channels-last input is never copied.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from search_space.layers import (
    Disout,
    DropBlock1d,
    DropBlock2d,
    DropBlock3d,
    Dropout,
    PatternDropout,
    SequenceDropout,
    SpatialDropout,
)
from search_space.layers._blocks import reference_seeds, seed_rate
from search_space.layers._dispatch import Route, block_route
from search_space.layers._layout import dense_layout, pixels_are_rows
from search_space.layers.dropblock import drop_block
from search_space.layers.pattern import _offset_table
from search_space.layouts import get_layout

CPU = torch.device("cpu")
REFERENCE = Route("reference", "reference")


def zero_rate(layer: torch.nn.Module, shape: tuple[int, ...], passes: int) -> float:
    layer.train()
    x = torch.ones(shape)
    with torch.no_grad():
        return float(np.mean([float((layer(x) == 0).double().mean()) for _ in range(passes)]))


# ---- realized rates ---------------------------------------------------------------------------
# (layer, input shape, passes, expected rate): >= ~600 independent masks per estimate (blocks of
# 3 on these maps: sd of one mask's rate <= 0.08, so sd of the mean <= 0.0033).
RATE_CASES = {
    "dropblock2d_nhwc": (lambda: DropBlock2d(0.1, 3, layout="NHWC"), (64, 12, 12, 8), 4, 0.1),
    "dropblock2d_nhwc_shared": (
        lambda: DropBlock2d(0.2, 3, share_channels=True, layout="NHWC"),
        (640, 12, 12, 4),
        4,
        0.2,
    ),
    "dropblock2d_nhwc_block7": (lambda: DropBlock2d(0.3, 7, layout="NHWC"), (128, 9, 13, 8), 4, 0.3),
    "dropblock1d_ncl": (lambda: DropBlock1d(0.2, 5), (128, 8, 50), 4, 0.2),
    "dropblock1d_ncl_shared": (lambda: DropBlock1d(0.1, 3, share_channels=True), (1024, 4, 40), 4, 0.1),
    "dropblock1d_ntc": (lambda: DropBlock1d(0.3, 4, layout="NTC"), (128, 37, 8), 4, 0.3),
    "dropblock1d_tnc": (lambda: DropBlock1d(0.1, 2, layout="TNC"), (37, 128, 8), 4, 0.1),
    "dropblock3d_ncdhw": (lambda: DropBlock3d(0.2, 3), (64, 8, 6, 7, 8), 4, 0.2),
    "dropblock3d_ndhwc_shared": (
        lambda: DropBlock3d(0.1, 3, share_channels=True, layout="NDHWC"),
        (512, 6, 6, 6, 2),
        4,
        0.1,
    ),
    "spatial_dropout_nhwc": (lambda: SpatialDropout(0.3, layout="NHWC"), (512, 3, 3, 64), 2, 0.3),
    "spatial_dropout_ncl": (lambda: SpatialDropout(0.2, layout="NCL"), (512, 64, 5), 2, 0.2),
    "spatial_dropout_ntc": (lambda: SpatialDropout(0.1, layout="NTC"), (512, 5, 64), 2, 0.1),
    "spatial_dropout_ndhwc": (lambda: SpatialDropout(0.2, layout="NDHWC"), (512, 2, 2, 2, 64), 2, 0.2),
    "disout_nhwc": (lambda: Disout(0.09, 3, alpha=5.0, layout="NHWC"), (64, 12, 12, 8), 4, 0.09),
    "seq_pattern_ncl": (lambda: SequenceDropout(0.2, 2, 4, share_t=True, layout="NCL"), (128, 16, 40), 4, 0.2),
    "seq_pattern_ncl_shared": (
        lambda: SequenceDropout(0.1, 3, 6, share_t=True, share_c=True, layout="NCL"),
        (2048, 4, 36),
        4,
        0.1,
    ),
    "dropout_nhwc": (lambda: Dropout(0.2), (64, 12, 12, 8), 2, 0.2),
}


@pytest.mark.parametrize("name", list(RATE_CASES))
def test_realized_rate_on_every_new_layout_is_the_request(name: str) -> None:
    make, shape, passes, want = RATE_CASES[name]
    torch.manual_seed(sorted(RATE_CASES).index(name))
    rate = zero_rate(make(), shape, passes)
    assert abs(rate - want) <= 0.01, (name, rate)


@pytest.mark.parametrize("shared", [False, True])
def test_pattern_realizes_the_same_rate_on_nhwc_as_on_nchw(shared: bool) -> None:
    """PatternDropout's rate is its pattern's dropped fraction times apply_prob (exact: the
    table of every offset's mask); N,H,W,C realizes it like N,C,H,W."""
    kw = dict(size=2, stride=4, repeat=2, rotate=30.0, shear_x=0.2, share_channels=shared, apply_prob=0.7)
    h, w = 11, 12
    table, _ = _offset_table((h, w), (2, 2), (4, 4), (2, 2), 30.0, 0.2, 0.0, CPU)
    want = 0.7 * float(1 - table[:-1].double().mean())
    torch.manual_seed(4)
    n = 1024 if shared else 256
    for layout, shape in (("NHWC", (n, h, w, 8)), ("NCHW", (n, 8, h, w))):
        rate = zero_rate(PatternDropout(**kw, layout=layout), shape, 4)
        assert abs(rate - want) <= 0.01, (layout, rate, want)


# ---- the masks themselves ---------------------------------------------------------------------
def is_union_of_blocks(dropped: torch.Tensor, k: int) -> bool:
    """Whether a bool mask (M, *spatial) with 1 to 3 spatial axes is a union of k-sided blocks
    (clipped at the border): its morphological opening by a k-block (pad with dropped units,
    so clipped blocks count whole) gives it back."""
    d = dropped.dim() - 1
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[d]
    x = F.pad(dropped.float()[:, None], [k - 1] * (2 * d), value=1.0)
    eroded = -pool(-x, k, stride=1)
    opened = pool(F.pad(eroded, [k - 1] * (2 * d), value=0.0), k, stride=1)
    return bool(torch.equal(opened[:, 0][(slice(None),) + (slice(k - 1, 1 - k),) * d] > 0, dropped))


def test_blocks_test_rejects_stripes() -> None:
    """The geometry check itself: a square passes, a stripe of one row does not."""
    square = torch.zeros(1, 8, 8, dtype=torch.bool)
    square[0, 2:5, 3:6] = True
    stripe = torch.zeros(1, 8, 8, dtype=torch.bool)
    stripe[0, 2, 1:7] = True
    assert is_union_of_blocks(square, 3) and not is_union_of_blocks(stripe, 3)


def test_nhwc_dropblock_shared_drops_whole_positions_in_square_blocks() -> None:
    torch.manual_seed(0)
    y = DropBlock2d(0.2, 3, share_channels=True, layout="NHWC").train()(torch.ones(16, 12, 12, 32))
    dropped = y == 0
    assert dropped.any()
    assert torch.equal(dropped.all(-1), dropped.any(-1))  # a dropped position has all its channels dropped
    assert is_union_of_blocks(dropped[..., 0], 3)  # squares in H, W
    assert not torch.equal(dropped[0], dropped[1])  # one mask per example


def test_nhwc_dropblock_per_channel_blocks_are_squares_in_h_w() -> None:
    torch.manual_seed(1)
    y = DropBlock2d(0.15, 3, layout="NHWC").train()(torch.ones(4, 14, 14, 16))
    dropped = (y == 0).permute(0, 3, 1, 2).reshape(-1, 14, 14)  # one (H, W) mask per example and channel
    assert dropped.any() and is_union_of_blocks(dropped, 3)
    wrong = (y == 0).reshape(-1, 14, 16)  # the same units read as (W, C) planes: not blocks
    assert not is_union_of_blocks(wrong, 3)


def test_nhwc_spatial_dropout_drops_channels() -> None:
    torch.manual_seed(2)
    y = SpatialDropout(0.3, layout="NHWC").train()(torch.ones(32, 5, 6, 24))
    dropped = y == 0
    assert torch.equal(dropped.all((1, 2)), dropped.any((1, 2)))  # a channel is dropped at every H, W
    assert 0.2 < float(dropped.all((1, 2)).double().mean()) < 0.4


def test_nhwc_disout_distorts_square_blocks_in_h_w() -> None:
    torch.manual_seed(3)
    x = torch.randn(4, 12, 12, 8)
    y = Disout(0.1, 3, alpha=1.0, layout="NHWC").train()(x)
    kept = torch.isclose(y, x * (y / x).median(), rtol=1e-5, atol=1e-6)  # kept units: x times one scale
    distorted = (~kept).permute(0, 3, 1, 2).reshape(-1, 12, 12)
    assert distorted.any() and is_union_of_blocks(distorted, 3)


def test_nhwc_pattern_shared_drops_whole_positions() -> None:
    torch.manual_seed(4)
    layer = PatternDropout(size=2, stride=4, repeat=2, share_channels=True, layout="NHWC").train()
    dropped = layer(torch.ones(8, 10, 10, 16)) == 0
    assert dropped.any() and torch.equal(dropped.all(-1), dropped.any(-1))


def test_ncl_blocks_run_along_l() -> None:
    torch.manual_seed(5)
    y = DropBlock1d(0.2, 5).train()(torch.ones(16, 8, 60))
    dropped = (y == 0).reshape(-1, 60)
    assert dropped.any() and is_union_of_blocks(dropped, 5)  # runs of >= 5 along L
    shared = DropBlock1d(0.2, 5, share_channels=True).train()(torch.ones(16, 8, 60)) == 0
    assert torch.equal(shared.all(1), shared.any(1))  # whole positions: all C


def test_ntc_blocks_run_along_t_and_share_channels() -> None:
    torch.manual_seed(6)
    dropped = DropBlock1d(0.2, 4, share_channels=True, layout="NTC").train()(torch.ones(16, 50, 8)) == 0
    assert torch.equal(dropped.all(-1), dropped.any(-1)) and is_union_of_blocks(dropped[..., 0], 4)


def test_ncl_sequence_pattern_tiles_l() -> None:
    """share_t and share_c at block rate 1: whole positions dropped in runs of `size` every
    `stride` along L."""
    torch.manual_seed(7)
    layer = SequenceDropout(0.9, 3, 7, share_t=True, share_c=True, layout="NCL").train()
    dropped = layer(torch.ones(6, 5, 50)) == 0
    assert torch.equal(dropped.all(1), dropped.any(1))  # every channel at a dropped position
    for row in dropped[:, 0].tolist():
        starts = [t for t in range(1, 50) if row[t] and not row[t - 1]]  # a run at 0 may be clipped
        assert all(b - a == 7 for a, b in zip(starts, starts[1:])) and len(starts) >= 6
        assert all(row[a : a + 3] == [True] * 3 and not row[a + 3] for a in starts if a + 3 < 50)


def test_ndhwc_dropblock_shared_drops_whole_positions_in_cubes() -> None:
    torch.manual_seed(8)
    dropped = DropBlock3d(0.2, 3, share_channels=True, layout="NDHWC").train()(torch.ones(8, 8, 8, 8, 4)) == 0
    assert dropped.any() and torch.equal(dropped.all(-1), dropped.any(-1))
    assert is_union_of_blocks(dropped[..., 0], 3)


# ---- fast routes on a permuted view == the reference on a contiguous copy ---------------------
def view_of(layout: str, shape_cf: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A tensor stored in ``layout`` (contiguous there) and its channels-first view, plus a
    gradient in the same layout."""
    lay = get_layout(layout)
    order = lay.channels_first_order
    stored = [0] * len(order)
    for cf_axis, axis in enumerate(order):
        stored[axis] = shape_cf[cf_axis]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(stored, generator=g, dtype=torch.float64)
    grad = torch.randn(stored, generator=g, dtype=torch.float64)
    return lay.to_channels_first(x), lay.to_channels_first(grad)


def forward_backward(fn, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xi = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()  # same strides
    y = fn(xi)
    y.backward(grad)
    return y.detach().contiguous(), xi.grad.contiguous()


@pytest.mark.parametrize("layout", ["NCL", "NTC", "TNC"])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("k", [1, 4])
def test_dropblock1d_routes_on_every_layout_equal_the_reference(layout: str, shared: bool, k: int) -> None:
    xv, grad = view_of(layout, (4, 6, 23), seed=k)
    assert dense_layout(xv) is xv  # the permuted view is used as it is: no copy
    p, size, kernel = 0.2, (23,), (k,)
    torch.manual_seed(9)
    seeds = reference_seeds((4, 1 if shared else 6, 23), kernel, seed_rate(p, kernel, size, False), False, CPU)
    ref = forward_backward(lambda t: drop_block(t, p, k, shared, route=REFERENCE, seeds=seeds), xv.contiguous(), grad)
    assert 0.05 < float((ref[0] == 0).double().mean()) < 0.5
    samplers = ["sparse", "dense", "pool"] + (["hits"] if k == 1 else [])
    routes = [Route(s, a) for s, a in itertools.product(samplers, ["masked", "device"])]
    if shared and pixels_are_rows(xv):  # N,T,C seen as N,C,T: one storage row per position
        routes += [Route(s, "rows", True) for s in samplers if s in ("sparse", "hits")]
    for route in routes:
        out = forward_backward(lambda t, r=route: drop_block(t, p, k, shared, route=r, seeds=seeds), xv, grad)
        torch.testing.assert_close(out[0], ref[0], rtol=0, atol=0, msg=f"output {route}")
        torch.testing.assert_close(out[1], ref[1], rtol=0, atol=0, msg=f"gradient {route}")


@pytest.mark.parametrize("layout", ["NCL", "NTC", "TNC"])
def test_spatial_and_sequence_on_1d_layouts_equal_the_reference(layout: str) -> None:
    xv, grad = view_of(layout, (5, 6, 19), seed=3)
    spatial = SpatialDropout(0.4).train()
    dropped = torch.rand((5, 6, 1), generator=torch.Generator().manual_seed(1)) < 0.4
    want = forward_backward(lambda t: spatial.drop(t, route=REFERENCE, dropped=dropped), xv.contiguous(), grad)
    got = forward_backward(lambda t: spatial.drop(t, dropped=dropped), xv, grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    seq = SequenceDropout(0.3, 2, 3, share_t=True, layout="NCL").train()
    draws = seq.draws(5, 19, (6,), CPU)
    loops = Route("loops", "reference")
    want = forward_backward(lambda t: seq.drop(t, route=loops, draws=draws), xv.contiguous(), grad)
    got = forward_backward(lambda t: seq.drop(t, route=Route("index", "masked"), draws=draws), xv, grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_channels_last_inputs_take_the_no_copy_routes_and_come_back_in_their_layout() -> None:
    """An N,H,W,C map seen as N,C,H,W has torch's channels_last strides: the dispatch takes the
    pixel-row route for shared masks (as on a channels_last N,C,H,W tensor), and the output is
    an N,H,W,C tensor laid out like the input."""
    x = torch.ones(4, 16, 16, 32)
    view = get_layout("NHWC").to_channels_first(x)
    assert view.is_contiguous(memory_format=torch.channels_last) and dense_layout(view) is view
    rate = seed_rate(0.1, (3, 3), (16, 16), False)
    assert block_route("auto", view, rate, (3, 3), False, shared=True).apply == "rows"
    for layer in (
        DropBlock2d(0.1, 3, share_channels=True, layout="NHWC"),
        Disout(0.1, 3, layout="NHWC"),
        PatternDropout(share_channels=True, layout="NHWC"),
        SpatialDropout(0.1, layout="NHWC"),
    ):
        y = layer.train()(x)
        assert y.shape == x.shape and y.is_contiguous(), type(layer).__name__
    tokens = torch.ones(4, 30, 8)
    assert pixels_are_rows(get_layout("NTC").to_channels_first(tokens))
    assert DropBlock1d(0.1, 3, layout="NTC").train()(tokens).is_contiguous()


# ---- what a layer accepts ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: DropBlock2d(layout="NCL"), r"DropBlock2d layout: bad value 'NCL'; allowed: NCHW, NHWC"),
        (lambda: DropBlock1d(layout="NHWC"), r"DropBlock1d layout: bad value 'NHWC'; allowed: NCL, NTC, TNC"),
        (lambda: Disout(layout="NCDHW"), r"Disout layout: bad value 'NCDHW'; allowed: NCHW, NHWC"),
        (lambda: PatternDropout(layout="nope"), r"PatternDropout layout: bad value 'nope'; allowed: NCHW, NHWC,"),
        (lambda: SpatialDropout(layout="NC"), r"SpatialDropout layout: bad value 'NC'; allowed: NCHW, NHWC, NCL"),
        (lambda: SequenceDropout(layout="NHWC"), r"SequenceDropout layout: bad value 'NHWC'; allowed: NTC, TNC, NCL"),
    ],
)
def test_a_layout_a_layer_cannot_use_is_refused_naming_what_it_can(build, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


def test_an_input_of_another_rank_names_the_layout() -> None:
    with pytest.raises(ValueError, match=r"rank 4, \(N,H,W,C\)"):
        DropBlock2d(layout="NHWC").train()(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match=r"rank 3, \(N,C,L\)"):
        SequenceDropout(layout="NCL").train()(torch.ones(2, 3, 4, 5))
    layer = DropBlock2d(0.1, 3)
    layer.layout = "N,H,W,C"  # apply_plan sets it after construction; commas are accepted
    assert layer.layout == "NHWC" and "layout='NHWC'" in repr(layer)
