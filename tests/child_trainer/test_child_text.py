"""Language-model children: text loaders (layouts, errors, tokens), LM training, metric contract."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from child_trainer import TrainConfig, train_child
from child_trainer.data import EOS, UNK, DataError, load_text, tokenize_lines
from child_trainer.train import task_metric
from search_space import Plan, SiteSpec

ROOT = Path(__file__).resolve().parents[2]
TRAIN = "the cat sat on the mat\n\nthe dog sat <unk>\n"
VALID = "the cat ran\n"
TEST = "a dog sat\n"


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _write(folder: Path, names: tuple[str, str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in zip(names, (TRAIN, VALID, TEST)):
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_tokenize_lines_is_whitespace_words_with_eos_per_line() -> None:
    assert tokenize_lines(["a  b", "", " c\t"]) == ["a", "b", EOS, EOS, "c", EOS]


@pytest.mark.parametrize(
    "name,folder,names",
    [
        ("ptb", "", ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")),
        ("ptb", "simple-examples/data", ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")),
        ("ptb", "", ("train.txt", "valid.txt", "test.txt")),
        ("wikitext2", "wikitext-2", ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens")),
        ("wikitext2", "", ("train.txt", "valid.txt", "test.txt")),
    ],
)
def test_local_layouts_load_word_level_with_training_vocabulary(tmp_path, name, folder, names) -> None:
    _write(tmp_path / folder, names)
    data = load_text(name, tmp_path)
    words = data.vocab.words
    assert words[0] == UNK and set(words) == {UNK, EOS, "the", "cat", "sat", "on", "mat", "dog"}
    assert words[1] == "the"  # by frequency after <unk>
    decode = lambda ids: [words[i] for i in ids.tolist()]  # noqa: E731
    assert decode(data.train) == "the cat sat on the mat <eos> <eos> the dog sat <unk> <eos>".split()
    assert decode(data.val) == ["the", "cat", UNK, EOS]  # "ran" is not in the training vocabulary
    assert decode(data.test) == [UNK, "dog", "sat", EOS]
    assert load_text(name, tmp_path, with_test=False).test is None
    small = load_text(name, tmp_path, train_tokens=4)
    assert decode(small.train) == ["the", "cat", "sat", "on"] and small.vocab.words == words


@pytest.mark.parametrize(
    "name,expected",
    [
        ("ptb", "ptb.train.txt, ptb.valid.txt, ptb.test.txt"),
        ("wikitext2", "wiki.train.tokens, wiki.valid.tokens, wiki.test.tokens"),
    ],
)
def test_missing_files_one_line_error_naming_paths(tmp_path, name, expected) -> None:
    (tmp_path / "train.txt").write_text(TRAIN)  # an incomplete renamed layout is still missing
    with pytest.raises(DataError) as err:
        load_text(name, tmp_path)
    message = str(err.value)
    assert "\n" not in message and expected in message and "train.txt, valid.txt, test.txt" in message
    assert str(tmp_path) in message and "nothing is downloaded" in message


def test_oov_without_unk_is_a_clear_error(tmp_path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    for n, text in zip(("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"), ("a b\n", "a z\n", "b\n")):
        (folder / n).write_text(text)
    with pytest.raises(DataError, match="'z'.*<unk>"):
        load_text("ptb", folder)


def test_builtin_corpus_is_offline_deterministic_and_sized(monkeypatch) -> None:
    import socket

    monkeypatch.setattr(socket, "socket", lambda *a, **k: (_ for _ in ()).throw(AssertionError("network")))
    a, b = load_text("builtin_text"), load_text("builtin_text")
    assert torch.equal(a.train, b.train) and a.vocab.words == b.vocab.words
    assert a.vocab_size == 2000 and a.vocab.words[0] == UNK
    assert len(a.train) > 80_000 and len(a.val) > 10_000 and len(a.test) > 10_000
    assert (a.train == 0).float().mean() < 0.03  # <unk> rate of the 2000-word vocabulary
    assert int(a.train.max()) < 2000


def test_config_validates_text_dataset_and_model() -> None:
    with pytest.raises(ValueError, match="dataset: bad value 'digits'.*allowed: builtin_text, ptb, wikitext2"):
        TrainConfig(model="transformer_lm")
    with pytest.raises(ValueError, match="model: bad value 'digits_cnn'.*allowed: transformer_lm"):
        TrainConfig(dataset="ptb")
    with pytest.raises(ValueError, match="seq_len: bad value 1"):
        TrainConfig(model="transformer_lm", dataset="builtin_text", seq_len=1)
    cfg = TrainConfig(model="transformer_lm", dataset="builtin_text")
    assert cfg.resolved_optimizer == "adamw" and cfg.lr == 3e-3 and cfg.label_smoothing == 0.0
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig().lr == 0.1 and TrainConfig().label_smoothing == 0.1  # image defaults unchanged
    assert task_metric("transformer_lm") == ("val_ppl", "min")
    assert task_metric("vit_tiny") == task_metric("digits_cnn") == ("val_acc", "max")


LM = dict(
    model="transformer_lm",
    dataset="builtin_text",
    train_size=6000,
    seq_len=32,
    batch_size=16,
    num_threads=1,
    amp="none",
)


def test_short_lm_training_perplexity_falls_and_reports_the_contract() -> None:
    reports: list[dict] = []
    result = train_child(TrainConfig(epochs=4, **LM), report=lambda e, m: reports.append(m))
    assert result["status"] == "ok" and result["epochs"] == 4
    ppl = [r["val_ppl"] for r in reports]
    assert all(b < a for a, b in zip(ppl, ppl[1:])), ppl  # measured ~1500 -> ~400 over 4 epochs
    assert ppl[-1] < 0.5 * ppl[0]
    for r in reports:
        assert {"epoch", "val_loss", "val_ppl", "train_loss"} <= set(r)
        assert math.isclose(r["val_ppl"], math.exp(r["val_loss"]), rel_tol=1e-9)
    assert result["val_ppl"] == ppl[-1] and result["best_val_ppl"] == min(ppl)
    assert {"status", "message", "seconds", "num_params", "precision", "tokens_per_second"} <= set(result)
    assert "val_acc" not in result and "test_ppl" not in result


def test_lm_with_sequence_plan_is_deterministic_and_test_on_request() -> None:
    plan = Plan(
        {
            "embed": SiteSpec(
                "seq_pattern", {"drop_prob": 0.2, "size": 2, "stride": 4, "share_t": True, "share_c": True}
            ),
            "blocks.0.mlp.act": SiteSpec("dropout", {"drop_prob": 0.1}),
        },
        model="transformer_lm",
    )
    a, b = (train_child(TrainConfig(epochs=1, eval_test=True, **LM), plan.to_json()) for _ in range(2))
    plain = train_child(TrainConfig(epochs=1, **LM))
    assert a["status"] == "ok" and a["val_loss"] == b["val_loss"] and a["train_loss"] != plain["train_loss"]
    assert math.isfinite(a["test_ppl"]) and a["test_ppl"] > 1


def test_too_little_text_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="train_size: bad value 40; allowed: at least 2 \\* seq_len = 64"):
        train_child(TrainConfig(epochs=1, **{**LM, "train_size": 40}))


def test_cli_reports_perplexity() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "child_trainer",
            "--model",
            "transformer_lm",
            "--dataset",
            "builtin_text",
            "--epochs",
            "1",
            "--train-size",
            "3000",
            "--seq-len",
            "32",
            "--threads",
            "1",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == "ok" and result["val_ppl"] > 1
