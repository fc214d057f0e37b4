"""Datasets as normalised tensors on the training device, with honest fixed splits.

The validation split is the search's reward, so it is carved out of the *training* set with a
fixed seed (the same for every trial) and stratified by class; the test set is only loaded
for the final evaluation. Everything lives on the device so batches need no per-sample Python.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from search_space.errors import FieldError

__all__ = ["DataError", "DataSplits", "load_data", "DATASETS", "stratified_split"]

log = logging.getLogger(__name__)

DATASETS = ("digits", "cifar10", "cifar100", "synthetic")
CIFAR_VAL_SIZE = 5000
DIGITS_FRACTIONS = (0.6, 0.2, 0.2)  # train / val / test of the 1,797 images
SYNTHETIC_SIZES = (10000, 2000, 2000)
_CIFAR = {"cifar10": ("CIFAR10", "cifar-10-batches-py", 10),
          "cifar100": ("CIFAR100", "cifar-100-python", 100)}


class DataError(FieldError):
    """A dataset cannot be loaded (missing files, bad size): a configuration error, not a crash."""


@dataclass
class DataSplits:
    """Normalised float tensors (N, C, H, W) and int64 labels; test only when requested."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor | None
    test_y: torch.Tensor | None
    num_classes: int
    in_channels: int
    name: str
    augment: str = "none"  # "cifar" (crop+flip), "shift" (small shifts), "none"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]


def stratified_split(labels: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, held_out) with ``size`` held out, class proportions preserved."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    rest, held = train_test_split(idx, test_size=size, stratify=labels, random_state=seed)
    return np.sort(rest), np.sort(held)


def _subset(x: np.ndarray, y: np.ndarray, size: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified training subset of ``size`` images (the small-data regime)."""
    if size is None or size == len(y):
        return x, y
    n_classes = len(np.unique(y))
    if not n_classes <= size < len(y):
        raise DataError("train_size", size, f"an integer from {n_classes} (one per class) to "
                        f"{len(y) - 1} (below the training split's {len(y)} images)")
    _, keep = stratified_split(y, size, seed + 1)
    return x[keep], y[keep]


def _to_device(x: np.ndarray, y: np.ndarray, mean: np.ndarray, std: np.ndarray,
               device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=torch.float32)
    m = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return (xt - m) / s, torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)


def _finish(name: str, parts: dict[str, tuple[np.ndarray, np.ndarray] | None], num_classes: int,
            device: torch.device | str, augment: str, stats_x: np.ndarray) -> DataSplits:
    """Normalise every split with the per-channel statistics of the full training split
    (before any ``train_size`` subset, so validation tensors are identical across subsets)."""
    tx = stats_x.astype(np.float32, copy=False)
    mean = tx.mean(axis=(0, 2, 3))
    std = tx.std(axis=(0, 2, 3)) + 1e-6
    out = {k: _to_device(v[0], v[1], mean, std, device) if v is not None else (None, None)
           for k, v in parts.items()}
    return DataSplits(*out["train"], *out["val"], *out["test"], num_classes=num_classes,
                      in_channels=tx.shape[1], name=name, augment=augment)


def _digits(train_size: int | None, seed: int, with_test: bool, device: torch.device | str) -> DataSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[:, None] / 16.0
    y = bunch.target.astype(np.int64)
    n = len(y)
    n_test = round(DIGITS_FRACTIONS[2] * n)
    n_val = round(DIGITS_FRACTIONS[1] * n)
    trainval, test = stratified_split(y, n_test, seed)
    rest, val = stratified_split(y[trainval], n_val, seed)
    train, val = trainval[rest], trainval[val]
    train_x = x[train]
    parts = {"train": _subset(train_x, y[train], train_size, seed), "val": (x[val], y[val]),
             "test": (x[test], y[test]) if with_test else None}
    return _finish("digits", parts, 10, device, "shift", train_x)


def _cifar(name: str, data_dir: Path, train_size: int | None, seed: int, with_test: bool,
           device: torch.device | str) -> DataSplits:
    import torchvision

    cls_name, folder, num_classes = _CIFAR[name]
    cls = getattr(torchvision.datasets, cls_name)
    try:
        train = cls(str(data_dir), train=True, download=False)
        test = cls(str(data_dir), train=False, download=False) if with_test else None
    except RuntimeError as exc:
        raise DataError(
            "data_dir", str(data_dir), f"a folder holding {folder} (get it with python -c \"import torchvision; "
            f"torchvision.datasets.{cls_name}('{data_dir}', download=True)\" on a machine with internet "
            "and copy the folder here)", detail=f"{name} not found: expected {data_dir / folder}") from None
    x = train.data.transpose(0, 3, 1, 2) / np.float32(255.0)
    y = np.asarray(train.targets, dtype=np.int64)
    rest, val = stratified_split(y, CIFAR_VAL_SIZE, seed)
    train_x = x[rest]  # ~550 MB for CIFAR: index it once (subset and statistics share it)
    parts = {"train": _subset(train_x, y[rest], train_size, seed), "val": (x[val], y[val]),
             "test": (test.data.transpose(0, 3, 1, 2) / np.float32(255.0),
                      np.asarray(test.targets, dtype=np.int64)) if test is not None else None}
    return _finish(name, parts, num_classes, device, "cifar", train_x)


def _synthetic(train_size: int | None, seed: int, with_test: bool, device: torch.device | str,
               image_shape: tuple[int, int, int], num_classes: int) -> DataSplits:
    """Class templates plus noise: learnable, so tests can check that training does something."""
    rng = np.random.default_rng(seed)
    sizes = (train_size or SYNTHETIC_SIZES[0], *SYNTHETIC_SIZES[1:])
    if sizes[0] < num_classes:
        raise DataError("train_size", sizes[0], f"an integer >= num_classes={num_classes}")
    templates = rng.normal(0.0, 1.0, size=(num_classes, *image_shape)).astype(np.float32)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n, dtype=np.int64) % num_classes
        rng.shuffle(y)
        return templates[y] + rng.normal(0.0, 2.0, size=(n, *image_shape)).astype(np.float32), y

    parts = {"train": draw(sizes[0]), "val": draw(sizes[1]), "test": draw(sizes[2]) if with_test else None}
    return _finish("synthetic", parts, num_classes, device, "cifar" if image_shape[-1] >= 16 else "none",
                   parts["train"][0])


def load_data(name: str = "digits", data_dir: str | Path | None = None, train_size: int | None = None,
              seed: int = 0, device: torch.device | str = "cpu", with_test: bool = True,
              image_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10) -> DataSplits:
    """Load a dataset with a fixed, stratified train/val(/test) split decided by ``seed``.

    ``train_size`` takes a stratified subset of the training split (validation stays the same).
    ``image_shape``/``num_classes`` only apply to ``synthetic``. ``with_test=False`` skips the
    test split entirely (test_x/test_y are None) so a search cannot touch it.
    """
    if name not in DATASETS:
        raise DataError("dataset", name, ", ".join(DATASETS))
    if train_size is not None and train_size < 1:
        raise DataError("train_size", train_size, "a positive integer or None")
    if name == "digits":
        return _digits(train_size, seed, with_test, device)
    if name == "synthetic":
        return _synthetic(train_size, seed, with_test, device, tuple(image_shape), num_classes)
    return _cifar(name, Path(data_dir) if data_dir else Path("data"), train_size, seed, with_test, device)
