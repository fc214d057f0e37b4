"""Datasets as normalised tensors on the training device, with honest fixed splits.

The validation split is the search's reward, so it is carved out of the *training* set with a
fixed seed (the same for every trial) and stratified by class; the test set is only loaded
for the final evaluation. Everything lives on the device so batches need no per-sample Python.

Images are (N, C, H, W); ``mnist1d`` sequences are (N, C, L) with C = 1 and L = 40.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from search_space.errors import FieldError, user_error

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

log = logging.getLogger(__name__)

DATASETS = ("digits", "cifar10", "cifar100", "synthetic", "mnist1d")
SEQUENCE_DATASETS = ("mnist1d",)  # (N, C, L) sequences, for the children in models_1d.SEQUENCE_MODELS
TEXT_DATASETS = ("builtin_text", "ptb", "wikitext2")
CIFAR_VAL_SIZE = 5000
VAL_EXTRA_MAX = 10000  # unused training images that join validation (an epoch's evaluation cost)
DIGITS_FRACTIONS = (0.6, 0.2, 0.2)  # train / val / test of the 1,797 images
SYNTHETIC_SIZES = (10000, 2000, 2000)
MNIST1D_VAL_SIZE = 1000  # validation sequences carved out of MNIST-1D's 4,000 training ones (as many as test)
_CIFAR = {"cifar10": ("CIFAR10", "cifar-10-batches-py", 10), "cifar100": ("CIFAR100", "cifar-100-python", 100)}


class DataError(FieldError):
    """A dataset cannot be loaded (missing files, bad size): a configuration error, not a crash."""


@dataclass
class DataSplits:
    """Normalised float tensors (N, C, H, W), or (N, C, L) for sequences, and int64 labels;
    test only when requested."""

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


def _subset(
    x: np.ndarray, y: np.ndarray, size: int | None, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """Stratified training subset of ``size`` images (the small-data regime), and the indices
    of the training images it leaves unused."""
    if size is None or size == len(y):
        return (x, y), np.zeros(0, dtype=np.int64)
    n_classes = len(np.unique(y))
    if not n_classes <= size < len(y):
        raise user_error(
            "train_size",
            size,
            f"an integer from {n_classes} (one per class) to {len(y) - 1} (below the training split's {len(y)} images)",
            cls=DataError,
        )
    unused, keep = stratified_split(y, size, seed + 1)
    return (x[keep], y[keep]), unused


def _train_and_val(
    train_x: np.ndarray, train_y: np.ndarray, val: tuple[np.ndarray, np.ndarray], train_size: int | None, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The training subset, and a validation split as large as the data allows: the fixed
    validation images plus the training images the subset leaves unused (at most
    ``VAL_EXTRA_MAX``, a seeded choice), all fixed by ``split_seed``. The reward then moves in
    steps of 1/1,238 on digits at 200 training images instead of 1/360; the test split is
    never touched."""
    train, unused = _subset(train_x, train_y, train_size, seed)
    if len(unused) > VAL_EXTRA_MAX:
        unused = np.sort(np.random.default_rng(seed + 2).choice(unused, VAL_EXTRA_MAX, replace=False))
    if len(unused):
        val = (np.concatenate([val[0], train_x[unused]]), np.concatenate([val[1], train_y[unused]]))
    return {"train": train, "val": val}


def _to_device(
    x: np.ndarray, y: np.ndarray, mean: np.ndarray, std: np.ndarray, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=torch.float32)
    per_channel = (1, -1) + (1,) * (xt.dim() - 2)  # (N, C, H, W) images or (N, C, L) sequences
    m = torch.as_tensor(mean, dtype=torch.float32, device=device).view(per_channel)
    s = torch.as_tensor(std, dtype=torch.float32, device=device).view(per_channel)
    return (xt - m) / s, torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)


def _finish(
    name: str,
    parts: dict[str, tuple[np.ndarray, np.ndarray] | None],
    num_classes: int,
    device: torch.device | str,
    augment: str,
    stats_x: np.ndarray,
) -> DataSplits:
    """Normalise every split with the per-channel statistics of the full training split
    (before any ``train_size`` subset, so validation tensors are identical across subsets)."""
    tx = stats_x.astype(np.float32, copy=False)
    axes = (0, *range(2, tx.ndim))  # all but the channels
    mean = tx.mean(axis=axes)
    std = tx.std(axis=axes) + 1e-6
    out = {k: _to_device(v[0], v[1], mean, std, device) if v is not None else (None, None) for k, v in parts.items()}
    return DataSplits(
        *out["train"],
        *out["val"],
        *out["test"],
        num_classes=num_classes,
        in_channels=tx.shape[1],
        name=name,
        augment=augment,
    )


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


# ---------------------------------------------------------------------- text (language models)
EOS, UNK = "<eos>", "<unk>"
#: Per dataset: the standard file names, then the subfolders of --data-dir that are searched.
_TEXT_LAYOUTS = {
    "ptb": (("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"), ("", "ptb", "penn", "simple-examples/data")),
    "wikitext2": (
        ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"),
        ("", "wikitext-2", "wikitext2", "wikitext-2-v1"),
    ),
}
_RENAMED = ("train.txt", "valid.txt", "test.txt")  # what common download scripts rename both to
BUILTIN_VOCAB = 2000  # the built-in corpus keeps its most frequent words (rest -> <unk>)
BUILTIN_FRACTIONS = (0.8, 0.1, 0.1)


@dataclass
class Vocabulary:
    """Word <-> id; id 0 is ``<unk>`` when the vocabulary has one."""

    words: list[str]

    def __post_init__(self) -> None:
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, tokens: list[str]) -> np.ndarray:
        """Ids of ``tokens``; words not in the vocabulary map to ``<unk>`` (an error without one)."""
        unk = self.index.get(UNK)
        if unk is None:
            missing = next((t for t in tokens if t not in self.index), None)
            if missing is not None:
                raise user_error(
                    "dataset",
                    detail=f"word {missing!r} of a held-out split is not in the training vocabulary "
                    f"and the corpus has no {UNK} token",
                    cls=DataError,
                )
            return np.fromiter((self.index[t] for t in tokens), dtype=np.int64, count=len(tokens))
        return np.fromiter((self.index.get(t, unk) for t in tokens), dtype=np.int64, count=len(tokens))


@dataclass
class TextSplits:
    """Token-id streams (1-D int64 tensors on the device) and the vocabulary; test when requested."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor | None
    vocab: Vocabulary
    name: str

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)


def tokenize_lines(lines: list[str]) -> list[str]:
    """Word-level tokens as the PyTorch word_language_model example makes them: split on
    whitespace and end every line (empty ones too) with ``<eos>``."""
    tokens: list[str] = []
    for line in lines:
        tokens += line.split()
        tokens.append(EOS)
    return tokens


def _find_text_files(name: str, data_dir: Path) -> tuple[Path, Path, Path]:
    standard, subdirs = _TEXT_LAYOUTS[name]
    for sub in subdirs:
        folder = data_dir / sub if sub else data_dir
        for names in (standard, _RENAMED):
            paths = tuple(folder / n for n in names)
            if all(p.is_file() for p in paths):
                return paths  # type: ignore[return-value]
    where = ", ".join(str(data_dir / s) if s else str(data_dir) for s in subdirs)
    raise user_error(
        "data_dir",
        str(data_dir),
        f"a folder holding {name}'s {', '.join(standard)} (or {', '.join(_RENAMED)}); nothing is downloaded",
        detail=f"bad value {str(data_dir)!r} ({name} not found in any of {where})",
        cls=DataError,
    )


def _read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def builtin_corpus_lines() -> list[str]:
    """An offline English corpus that ships with Python itself: the pydoc topic help texts
    (``pydoc_data.topics``, ~65k words), topics in sorted order, lower-cased, with words and
    punctuation split apart so the vocabulary stays small."""
    import re
    from pydoc_data.topics import topics

    word = re.compile(r"[a-z]+|[0-9]+|[^\sa-z0-9]")
    lines = []
    for key in sorted(topics):
        for line in topics[key].splitlines():
            toks = word.findall(line.lower())
            if any(t[0].isalnum() for t in toks):  # skips empty lines and "-----" underlines
                lines.append(" ".join(toks))
    return lines


def _builtin_splits() -> tuple[list[str], list[str], list[str]]:
    tokens = tokenize_lines(builtin_corpus_lines())
    n = len(tokens)
    a, b = int(BUILTIN_FRACTIONS[0] * n), int((BUILTIN_FRACTIONS[0] + BUILTIN_FRACTIONS[1]) * n)
    return tokens[:a], tokens[a:b], tokens[b:]


def _vocabulary(train: list[str], max_size: int | None) -> Vocabulary:
    """Training-split words by frequency (ties: first occurrence); with ``max_size`` the rest
    become ``<unk>``. ``<unk>`` gets id 0 when present or needed."""
    from collections import Counter

    counts = Counter(train)
    words = [w for w, _ in counts.most_common()]
    if max_size is not None and len(words) > max_size:
        words = words[: max_size - 1]
        words = [UNK] + [w for w in words if w != UNK]
    elif UNK in counts:
        words = [UNK] + [w for w in words if w != UNK]
    return Vocabulary(words)


def load_text(
    name: str = "builtin_text",
    data_dir: str | Path | None = None,
    train_tokens: int | None = None,
    device: torch.device | str = "cpu",
    with_test: bool = True,
) -> TextSplits:
    """Word-level language-model data: ``ptb`` / ``wikitext2`` from local files (standard names
    or the ``train.txt``/``valid.txt``/``test.txt`` renaming), or ``builtin_text`` (offline).

    The vocabulary comes from the whole training split (so it does not change with
    ``train_tokens``, which keeps only the first that many training tokens: the small-data
    regime where regularization matters). Validation is the dataset's own valid split.
    """
    if name not in TEXT_DATASETS:
        raise user_error("dataset", name, ", ".join(TEXT_DATASETS))
    if train_tokens is not None and train_tokens < 2:
        raise user_error("train_size", train_tokens, "None or >= 2 (training tokens)", cls=DataError)
    if name == "builtin_text":
        train, val, test = _builtin_splits()
        vocab = _vocabulary(train, BUILTIN_VOCAB)
    else:
        paths = _find_text_files(name, Path(data_dir) if data_dir else Path("data"))
        train, val, test = (tokenize_lines(_read_lines(p)) for p in paths)
        vocab = _vocabulary(train, None)
    if train_tokens is not None:
        train = train[:train_tokens]

    def ids(tokens: list[str]) -> torch.Tensor:
        return torch.from_numpy(vocab.encode(tokens)).to(device)

    log.info("%s: %d words in the vocabulary, %d/%d training/validation tokens", name, len(vocab), len(train), len(val))
    return TextSplits(ids(train), ids(val), ids(test) if with_test else None, vocab, name)
