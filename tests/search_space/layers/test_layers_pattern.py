"""PatternDropout: exact tiled geometry, transforms, offsets, apply_prob, rescaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from search_space.layers import PatternDropout, tiled_pattern


def dropped(layer: PatternDropout, shape: tuple[int, ...]) -> np.ndarray:
    return (layer.train()(torch.ones(shape)) == 0).numpy()


def torus_shifts(pattern: np.ndarray) -> list[np.ndarray]:
    h, w = pattern.shape
    return [np.roll(pattern, (dy, dx), axis=(0, 1)) for dy in range(h) for dx in range(w)]


def test_tiled_pattern_exact_cells() -> None:
    pat = tiled_pattern((8, 8), (2, 1), (4, 3), (2, 3))
    rows = np.zeros(8, bool)
    rows[[0, 1, 4, 5]] = True
    cols = np.zeros(8, bool)
    cols[[0, 3, 6]] = True
    assert np.array_equal(pat, np.logical_and.outer(rows, cols))


def test_tiles_wrap_and_saturate() -> None:
    # stride 3, size 2 on 7 rows: tiles at 0, 3, 6 (wrapping to row 0); repeat 10 clamps to 3.
    pat = tiled_pattern((7, 5), (2, 5), (3, 1), (10, 1))
    assert np.array_equal(pat[:, 0], np.array([1, 1, 0, 1, 1, 0, 1], bool))
    assert tiled_pattern((4, 4), (9, 9), (1, 1), (1, 1)).all()  # oversized rectangle: whole map


def test_forward_zeroes_a_translate_of_the_pattern() -> None:
    torch.manual_seed(0)
    layer = PatternDropout(size=(2, 3), stride=(4, 5), repeat=(2, 2))
    base = layer.pattern((8, 10))
    shifts = torus_shifts(base)
    masks = dropped(layer, (4, 3, 8, 10))
    for mask in masks.reshape(-1, 8, 10):
        assert any(np.array_equal(mask, s) for s in shifts)
    # independent offsets per example and channel unless shared
    assert len({m.tobytes() for m in masks.reshape(-1, 8, 10)}) > 6
    shared = dropped(PatternDropout(size=(2, 3), stride=(4, 5), repeat=(2, 2), share_channels=True), (4, 3, 8, 10))
    assert np.array_equal(shared, np.broadcast_to(shared[:, :1], shared.shape))


def test_offsets_are_uniform_so_every_unit_has_the_pattern_density() -> None:
    torch.manual_seed(1)
    layer = PatternDropout(size=2, stride=4, repeat=2)
    freq = dropped(layer, (500, 16, 8, 8)).mean(axis=(0, 1))
    density = layer.pattern((8, 8)).mean()  # 16 / 64
    sigma = np.sqrt(density * (1 - density) / 8000)
    assert np.abs(freq - density).max() < 4.5 * sigma


def test_rotate_90_turns_rows_into_columns() -> None:
    torch.manual_seed(2)
    row_bar = PatternDropout(size=(1, 8), stride=4, repeat=(2, 1), rotate=90.0)
    cols = PatternDropout(size=(8, 1), stride=4, repeat=(1, 2)).pattern((8, 8))
    for mask in dropped(row_bar, (3, 2, 8, 8)).reshape(-1, 8, 8):
        assert any(np.array_equal(mask, s) for s in torus_shifts(cols))


def test_shear_x_turns_a_column_into_a_diagonal() -> None:
    torch.manual_seed(3)
    layer = PatternDropout(size=(8, 1), stride=8, repeat=1, shear_x=1.0)
    for mask in dropped(layer, (2, 2, 8, 8)).reshape(-1, 8, 8):
        rows, cols = np.nonzero(mask)
        assert np.array_equal(rows, np.arange(8))  # one dropped cell per row
        assert np.all(np.diff(cols) % 8 == 1)  # moving right by one per row


def test_apply_prob_and_rescaling() -> None:
    torch.manual_seed(4)
    layer = PatternDropout(size=2, stride=4, repeat=2, apply_prob=0.3).train()
    y = layer(torch.ones(200, 10, 8, 8))
    hit = (y == 0).flatten(2).any(-1).float().mean()
    assert float(hit) == pytest.approx(0.3, abs=0.03)  # 2000 Bernoulli(0.3): 3 sigma = 0.031
    assert float(y.mean()) == pytest.approx(1.0, abs=1e-5)  # mean preserved exactly
    assert torch.all((y == 0) | torch.isclose(y, y.max()))


def test_full_cover_gives_zeros_not_nan() -> None:
    y = PatternDropout(size=8, stride=1, repeat=1).train()(torch.ones(2, 2, 4, 4))
    assert torch.equal(y, torch.zeros_like(y))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"size": 0}, "size"),
        ({"stride": (1, 0)}, "stride"),
        ({"repeat": -1}, "repeat"),
        ({"apply_prob": 1.5}, "apply_prob"),
        ({"shear_x": 1.0, "shear_y": 1.0}, "shear_x"),
        ({"rotate": float("nan")}, "rotate"),
        ({"size": (1, 2, 3)}, "size"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        PatternDropout(**kwargs)


@pytest.mark.parametrize("apply_prob", [1.0, 0.6])
def test_offset_table_matches_per_unit_indexing(monkeypatch: pytest.MonkeyPatch, apply_prob: float) -> None:
    """Small maps use a cached table of every offset's mask, large maps index per unit (as the
    reference): the same offsets give the same masks and kept counts either way, and the layer
    gives the same output whichever the dispatch picks (incl. channels_last)."""
    from search_space.layers import _dispatch

    layer = PatternDropout(
        size=(2, 3), stride=(4, 5), repeat=(2, 2), rotate=30.0, shear_x=0.2, apply_prob=apply_prob
    ).train()
    torch.manual_seed(5)
    offsets = layer.offsets(30, (9, 11), torch.device("cpu"))
    assert (int((offsets == 99).sum()) > 0) == (apply_prob < 1.0)  # some masks without the pattern
    keep_t, kept_t = layer.keep_masks(offsets, (9, 11), "table")
    keep_u, kept_u = layer.keep_masks(offsets, (9, 11), "gather")
    assert torch.equal(keep_t, keep_u) and int(kept_t) == int(kept_u) == int(keep_t.sum())
    x = torch.randn(6, 5, 9, 11).contiguous(memory_format=torch.channels_last)
    y_table = (torch.manual_seed(6), layer(x))[1]
    monkeypatch.setattr(_dispatch, "TABLE_MAX_UNITS", 0)
    y_units = (torch.manual_seed(6), layer(x))[1]
    assert torch.equal(y_table, y_units) and y_table.is_contiguous(memory_format=torch.channels_last)
    kept = (y_table != 0).float()
    assert torch.allclose(y_table, x * kept * kept.numel() / kept.sum(), atol=1e-5)  # realized rescale
