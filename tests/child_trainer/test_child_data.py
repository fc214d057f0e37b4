"""Split discipline and on-device augmentation of child_trainer.data / augment."""

from __future__ import annotations

import pytest
import torch

from child_trainer.augment import augment_batch, random_crop, random_flip
from child_trainer.data import DataError, load_data


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x.reshape(len(x), -1)}


def test_digits_splits_disjoint_stratified_and_fixed_by_seed() -> None:
    d = load_data("digits", seed=0)
    n = len(d.train_y) + len(d.val_y) + len(d.test_y)
    assert n == 1797 and abs(len(d.val_y) - 359) <= 1 and abs(len(d.test_y) - 359) <= 1
    # No image is in two splits (digits has a handful of exact duplicate images; allow those).
    tr, va, te = _rows(d.train_x), _rows(d.val_x), _rows(d.test_x)
    assert len(tr & va) <= 3 and len(tr & te) <= 3 and len(va & te) <= 3
    # Stratified: every class's share in val/test within 1 image of its share overall.
    all_y = torch.cat([d.train_y, d.val_y, d.test_y])
    for split in (d.val_y, d.test_y):
        expected = torch.bincount(all_y, minlength=10).double() * len(split) / len(all_y)
        assert torch.all((torch.bincount(split, minlength=10) - expected).abs() <= 1.0)
    again = load_data("digits", seed=0)
    assert torch.equal(again.val_x, d.val_x) and torch.equal(again.train_y, d.train_y)
    other = load_data("digits", seed=1)
    assert not torch.equal(other.val_x, d.val_x)


def test_digits_normalised_with_train_statistics() -> None:
    d = load_data("digits")
    assert d.train_x.shape[1:] == (1, 8, 8) and d.in_channels == 1 and d.num_classes == 10
    assert abs(d.train_x.mean().item()) < 1e-4 and abs(d.train_x.std().item() - 1.0) < 1e-2


def test_train_size_subset_keeps_validation_and_is_stratified() -> None:
    full, small = load_data("digits"), load_data("digits", train_size=100)
    assert len(small.train_y) == 100 and torch.equal(full.val_x, small.val_x[: len(full.val_y)])
    assert torch.bincount(small.train_y, minlength=10).min() >= 9
    assert _rows(small.train_x) <= _rows(full.train_x)
    with pytest.raises(DataError, match="train_size"):
        load_data("digits", train_size=5)


def test_no_test_split_unless_requested() -> None:
    d = load_data("digits", with_test=False)
    assert d.test_x is None and d.test_y is None


def test_missing_cifar_is_one_line_data_error(tmp_path) -> None:
    with pytest.raises(DataError) as info:
        load_data("cifar10", data_dir=tmp_path / "nothing")
    msg = str(info.value)
    assert "\n" not in msg and "cifar-10-batches-py" in msg and "download=True" in msg
    assert isinstance(info.value, ValueError)


def test_unknown_dataset_names_allowed() -> None:
    with pytest.raises(ValueError, match="allowed: digits, cifar10, cifar100, synthetic"):
        load_data("mnist")


def test_synthetic_shape_classes_and_learnable_signal() -> None:
    d = load_data("synthetic", train_size=200, image_shape=(3, 16, 16), num_classes=4)
    assert d.train_x.shape == (200, 3, 16, 16) and d.num_classes == 4
    # Class means differ clearly (templates), so a model can learn it.
    means = torch.stack([d.train_x[d.train_y == c].mean(0) for c in range(4)])
    assert (means[0] - means[1]).abs().mean() > 0.3


def test_random_crop_is_a_shift_with_zero_fill() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1
    out = random_crop(x, 2, g)
    for i in range(2):
        # Find the shift that explains the output exactly.
        found = False
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                padded = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
                ref = padded[:, 2 + dy : 8 + dy, 2 + dx : 8 + dx]
                found |= torch.equal(out[i], ref)
        assert found


def test_augment_statistics_fixed_seed() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 1, 4, 4)
    flipped = random_flip(x, g)
    frac = (flipped != x).flatten(1).any(1).float().mean().item()
    assert abs(frac - 0.5) < 0.03
    shifted = augment_batch(x, "shift", g)
    same = (shifted == x).flatten(1).all(1).float().mean().item()
    assert abs(same - 1 / 9) < 0.02  # one of the nine (dy, dx) offsets is the identity
    with pytest.raises(ValueError, match="allowed"):
        augment_batch(x, "mixup")


def test_unused_training_images_join_validation_never_test():
    """--train-size subsets the training split; what it leaves joins the validation split."""
    from collections import Counter

    full = load_data("digits", train_size=None, seed=0, with_test=True)
    sub = load_data("digits", train_size=200, seed=0, with_test=True)
    assert len(sub.train_y) == 200 and len(sub.val_y) == len(full.val_y) + len(full.train_y) - 200
    assert torch.equal(sub.test_x, full.test_x) and torch.equal(sub.test_y, full.test_y)
    assert torch.equal(sub.val_x[: len(full.val_y)], full.val_x)  # the fixed validation images come first

    def bag(*xs):
        return Counter(bytes(row.numpy().tobytes()) for x in xs for row in x)

    assert bag(sub.train_x, sub.val_x) == bag(full.train_x, full.val_x)  # a partition of train + val
    assert not (bag(sub.train_x) & bag(sub.val_x)) - (bag(full.train_x) & bag(full.val_x))
    again = load_data("digits", train_size=200, seed=0, with_test=False)
    assert torch.equal(again.val_x, sub.val_x) and torch.equal(again.train_x, sub.train_x)
    other = load_data("digits", train_size=200, seed=1, with_test=False)
    assert not torch.equal(other.val_x, sub.val_x)
