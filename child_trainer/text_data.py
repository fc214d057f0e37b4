"""Word-level language-model data: ``ptb`` / ``wikitext2`` from local files, or the offline
``builtin_text`` corpus, as token-id streams on the device with the training split's vocabulary.

Apart from the image and sequence data sets (`child_trainer.data`, which re-exports every name
here) because text shares nothing with them but `DataError`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from search_space.errors import user_error

from .splits import DataError

log = logging.getLogger(__name__)

TEXT_DATASETS = ("builtin_text", "ptb", "wikitext2")
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
