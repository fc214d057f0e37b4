"""Datasets as normalised tensors on the training device, with honest fixed splits.

The validation split is the search's reward, so it is carved out of the *training* set with a
fixed seed (the same for every trial) and stratified by class; the test set is only loaded
for the final evaluation. Everything lives on the device so batches need no per-sample Python.

Images are (N, C, H, W); ``mnist1d`` sequences are (N, C, L) with C = 1 and L = 40.

This module loads each data set by name (`load_data`); how any of them is split and
normalised is `child_trainer.splits`, and text for the language models is
`child_trainer.text_data`; their names are importable from here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from search_space.errors import user_error

from .splits import VAL_EXTRA_MAX as VAL_EXTRA_MAX
from .splits import DataError, DataSplits, _finish, _train_and_val, stratified_split
from .text_data import EOS as EOS
from .text_data import TEXT_DATASETS, TextSplits, Vocabulary, load_text, tokenize_lines
from .text_data import UNK as UNK
from .text_data import builtin_corpus_lines as builtin_corpus_lines

__all__ = [
    "DataError",
    "DataSplits",
    "load_data",
    "DATASETS",
    "SEQUENCE_DATASETS",
    "stratified_split",
    "TEXT_DATASETS",
    "TextSplits",
    "load_text",
    "tokenize_lines",
    "Vocabulary",
]

DATASETS = ("digits", "cifar10", "cifar100", "synthetic", "mnist1d")
SEQUENCE_DATASETS = ("mnist1d",)  # (N, C, L) sequences, for the children in models_1d.SEQUENCE_MODELS
CIFAR_VAL_SIZE = 5000
DIGITS_FRACTIONS = (0.6, 0.2, 0.2)  # train / val / test of the 1,797 images
SYNTHETIC_SIZES = (10000, 2000, 2000)
MNIST1D_VAL_SIZE = 1000  # validation sequences carved out of MNIST-1D's 4,000 training ones (as many as test)
_CIFAR = {"cifar10": ("CIFAR10", "cifar-10-batches-py", 10), "cifar100": ("CIFAR100", "cifar-100-python", 100)}


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
    parts = {
        **_train_and_val(train_x, y[train], (x[val], y[val]), train_size, seed),
        "test": (x[test], y[test]) if with_test else None,
    }
    return _finish("digits", parts, 10, device, "shift", train_x)


def _mnist1d(train_size: int | None, seed: int, with_test: bool, device: torch.device | str) -> DataSplits:
    """MNIST-1D (Greydanus & Kobak): its 4,000 training sequences give a fixed stratified
    validation split of ``MNIST1D_VAL_SIZE`` and a training pool of 3,000 (``train_size`` takes a
    subset of it; the rest joins validation); its own 1,000 test sequences are the test split."""
    from .mnist1d import generate_mnist1d

    x, y, x_test, y_test = generate_mnist1d()
    rest, val = stratified_split(y, MNIST1D_VAL_SIZE, seed)
    train_x = x[rest]
    parts = {
        **_train_and_val(train_x, y[rest], (x[val], y[val]), train_size, seed),
        "test": (x_test, y_test) if with_test else None,
    }
    return _finish("mnist1d", parts, 10, device, "none", train_x)


def _cifar(
    name: str, data_dir: Path, train_size: int | None, seed: int, with_test: bool, device: torch.device | str
) -> DataSplits:
    import torchvision

    cls_name, folder, num_classes = _CIFAR[name]
    cls = getattr(torchvision.datasets, cls_name)
    try:
        train = cls(str(data_dir), train=True, download=False)
        test = cls(str(data_dir), train=False, download=False) if with_test else None
    except RuntimeError:
        raise user_error(
            "data_dir",
            str(data_dir),
            f'a folder holding {folder} (get it with python -c "import torchvision; '
            f"torchvision.datasets.{cls_name}('{data_dir}', download=True)\" on a machine with internet "
            "and copy the folder here)",
            detail=f"{name} not found: expected {data_dir / folder}",
            cls=DataError,
        ) from None
    x = train.data.transpose(0, 3, 1, 2) / np.float32(255.0)
    y = np.asarray(train.targets, dtype=np.int64)
    rest, val = stratified_split(y, CIFAR_VAL_SIZE, seed)
    train_x = x[rest]  # ~550 MB for CIFAR: index it once (subset and statistics share it)
    parts = {
        **_train_and_val(train_x, y[rest], (x[val], y[val]), train_size, seed),
        "test": (test.data.transpose(0, 3, 1, 2) / np.float32(255.0), np.asarray(test.targets, dtype=np.int64))
        if test is not None
        else None,
    }
    return _finish(name, parts, num_classes, device, "cifar", train_x)


def _synthetic(
    train_size: int | None,
    seed: int,
    with_test: bool,
    device: torch.device | str,
    image_shape: tuple[int, int, int],
    num_classes: int,
) -> DataSplits:
    """Class templates plus noise: learnable, so tests can check that training does something."""
    rng = np.random.default_rng(seed)
    sizes = (train_size or SYNTHETIC_SIZES[0], *SYNTHETIC_SIZES[1:])
    if sizes[0] < num_classes:
        raise user_error("train_size", sizes[0], f"an integer >= num_classes={num_classes}", cls=DataError)
    templates = rng.normal(0.0, 1.0, size=(num_classes, *image_shape)).astype(np.float32)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n, dtype=np.int64) % num_classes
        rng.shuffle(y)
        return templates[y] + rng.normal(0.0, 2.0, size=(n, *image_shape)).astype(np.float32), y

    parts = {"train": draw(sizes[0]), "val": draw(sizes[1]), "test": draw(sizes[2]) if with_test else None}
    return _finish(
        "synthetic", parts, num_classes, device, "cifar" if image_shape[-1] >= 16 else "none", parts["train"][0]
    )


def load_data(
    name: str = "digits",
    data_dir: str | Path | None = None,
    train_size: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    with_test: bool = True,
    image_shape: tuple[int, int, int] = (3, 32, 32),
    num_classes: int = 10,
) -> DataSplits:
    """Load a dataset with a fixed, stratified train/val(/test) split decided by ``seed``.

    ``train_size`` takes a stratified subset of the training split (validation stays the same).
    ``image_shape``/``num_classes`` only apply to ``synthetic``. ``with_test=False`` skips the
    test split entirely (test_x/test_y are None) so a search cannot touch it.
    """
    if name not in DATASETS:
        raise user_error("dataset", name, ", ".join(DATASETS), cls=DataError)
    if train_size is not None and train_size < 1:
        raise user_error("train_size", train_size, "a positive integer or None", cls=DataError)
    if name == "digits":
        return _digits(train_size, seed, with_test, device)
    if name == "mnist1d":
        return _mnist1d(train_size, seed, with_test, device)
    if name == "synthetic":
        return _synthetic(train_size, seed, with_test, device, tuple(image_shape), num_classes)
    return _cifar(name, Path(data_dir) if data_dir else Path("data"), train_size, seed, with_test, device)
