"""ENAS-style LSTM controller: an autoregressive sampler over a sequence of discrete decisions.

The controller only sees ``vocab_sizes`` (one int per decision, in sequence order); what a
decision means lives in ``search_space``. One LSTM step is taken per decision; its input is a
learned embedding of the previous decision's token (a learned start vector for step 0), and a
softmax head reads the hidden state. Logits are shaped as in ENAS:
``tanh_constant * tanh(logits / temperature)``, which bounds the most likely choice's
probability and so keeps exploring.

Heads and embeddings: by default every decision has its own head and its own token embedding
(a per-position policy learns fastest from few trials). Passing ``share_keys`` (one hashable per
decision, e.g. the parameter name) makes decisions with equal keys share head and embedding,
as ENAS shares them per decision type; the LSTM state then tells the sites apart.
All heads live in one packed weight matrix, so the optimizer sees a handful of tensors.

``sample`` loops over decisions only (vectorised over plans); ``evaluate`` uses teacher
forcing, so the whole sequence runs through one ``nn.LSTM`` call plus one batched head product:
updates recompute log-probs from tokens and never keep sampling graphs alive.
"""
from __future__ import annotations

import operator
from collections.abc import Hashable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["LSTMController"]

_PAD_LOGIT = -1e9  # finite, so p * log p stays 0 (not NaN) on padded choices


class LSTMController(nn.Module):
    """Autoregressive policy over ``len(vocab_sizes)`` decisions (ENAS style).

    Args:
        vocab_sizes: number of choices of each decision, in sequence order (each >= 1).
        hidden_size: LSTM hidden size, also the embedding size.
        num_layers: stacked LSTM layers.
        temperature: logits are divided by it before clipping (> 0; higher = flatter).
        tanh_constant: logits become ``tanh_constant * tanh(logits / temperature)``;
            ``None`` disables the clipping.
        share_keys: optional key per decision; equal keys share head and embedding.
        init_range: parameters start uniform in ``[-init_range, init_range]`` (ENAS: 0.1).
        seed: seed of the parameter initialisation (the global RNG is not touched).
    """

    def __init__(
        self,
        vocab_sizes: Sequence[int],
        hidden_size: int = 64,
        num_layers: int = 1,
        temperature: float = 5.0,
        tanh_constant: float | None = 2.5,
        share_keys: Sequence[Hashable] | None = None,
        init_range: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        sizes = _check_vocab_sizes(vocab_sizes)
        _check_positive("hidden_size", hidden_size, integer=True)
        _check_positive("num_layers", num_layers, integer=True)
        _check_positive("temperature", temperature)
        if tanh_constant is not None:
            _check_positive("tanh_constant", tanh_constant)
        _check_positive("init_range", init_range)
        keys = list(range(len(sizes))) if share_keys is None else list(share_keys)
        if len(keys) != len(sizes):
            raise ValueError(
                f"share_keys: got {len(keys)} keys, expected one per decision ({len(sizes)})"
            )
        self.vocab_sizes: list[int] = sizes
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.temperature = float(temperature)
        self.tanh_constant = None if tanh_constant is None else float(tanh_constant)
        self.share_keys: list[Hashable] | None = None if share_keys is None else keys
        self.init_range = float(init_range)
        self.seed = int(seed)

        # Row offset of each key's block in the packed head / embedding tables.
        key_rows: dict[Hashable, tuple[int, int]] = {}
        offsets: list[int] = []
        total = 0
        for d, (key, size) in enumerate(zip(keys, sizes)):
            if key not in key_rows:
                key_rows[key] = (total, size)
                total += size
            start, key_size = key_rows[key]
            if key_size != size:
                raise ValueError(
                    f"share_keys[{d}]={key!r}: vocab size {size} differs from {key_size} "
                    "of an earlier decision with the same key"
                )
            offsets.append(start)
        self._offsets = offsets
        vmax = max(sizes)
        index = torch.zeros(len(sizes), vmax, dtype=torch.long)
        valid = torch.zeros(len(sizes), vmax, dtype=torch.bool)
        for d, (start, size) in enumerate(zip(offsets, sizes)):
            index[d, :size] = torch.arange(start, start + size)
            valid[d, :size] = True
        self.register_buffer("_head_index", index, persistent=False)
        self.register_buffer("_head_valid", valid, persistent=False)
        self.register_buffer("_offset_t", torch.tensor(offsets), persistent=False)

        self.start = nn.Parameter(torch.empty(hidden_size))
        self.embedding = nn.Parameter(torch.empty(total, hidden_size))
        self.lstm = nn.LSTM(hidden_size, hidden_size, num_layers=num_layers, batch_first=True)
        self.head_weight = nn.Parameter(torch.empty(total, hidden_size))
        self.head_bias = nn.Parameter(torch.empty(total))
        gen = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            for p in self.parameters():
                nn.init.uniform_(p, -self.init_range, self.init_range, generator=gen)

    @property
    def num_decisions(self) -> int:
        return len(self.vocab_sizes)

    def config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-able dict (rebuild with ``LSTMController(**cfg)``)."""
        return {
            "vocab_sizes": list(self.vocab_sizes),
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "temperature": self.temperature,
            "tanh_constant": self.tanh_constant,
            "share_keys": None if self.share_keys is None else list(self.share_keys),
            "init_range": self.init_range,
            "seed": self.seed,
        }

    def _shape_logits(self, logits: Tensor) -> Tensor:
        logits = logits / self.temperature
        if self.tanh_constant is not None:
            logits = self.tanh_constant * torch.tanh(logits)
        return logits

    def sample(
        self, n: int, generator: torch.Generator | None = None, greedy: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Draw ``n`` token sequences; returns ``(tokens[n,D], log_probs[n,D], entropies[n,D])``.

        Respects the ambient grad mode (wrap in ``torch.no_grad()`` when only tokens are
        needed). One uniform per decision is drawn from ``generator`` up front and turned
        into a token by inverse CDF, so the random stream depends only on ``n`` and ``D``.
        ``greedy=True`` takes the most likely choice at every step (no randomness).
        """
        _check_positive("n", n, integer=True)
        device = self.start.device
        num = self.num_decisions
        uniforms = None if greedy else torch.rand(n, num, generator=generator, device=device)
        w_ih, w_hh, b_ih, b_hh = self._lstm_weights()
        x = self.start.expand(n, -1)
        h = [x.new_zeros(n, self.hidden_size) for _ in range(self.num_layers)]
        c = [x.new_zeros(n, self.hidden_size) for _ in range(self.num_layers)]
        tokens, log_probs, entropies = [], [], []
        for d, (start, size) in enumerate(zip(self._offsets, self.vocab_sizes)):
            for layer in range(self.num_layers):
                h[layer], c[layer] = torch.lstm_cell(
                    x, (h[layer], c[layer]), w_ih[layer], w_hh[layer], b_ih[layer], b_hh[layer]
                )
                x = h[layer]
            rows = slice(start, start + size)
            logits = self._shape_logits(
                torch.addmm(self.head_bias[rows], x, self.head_weight[rows].t())
            )
            logp = torch.log_softmax(logits, dim=-1)
            probs = logp.exp()
            if uniforms is None:
                token = probs.argmax(dim=-1)
            else:
                cdf = probs.detach().cumsum(dim=-1)
                token = (cdf < uniforms[:, d : d + 1]).sum(dim=-1).clamp_(max=size - 1)
            tokens.append(token)
            log_probs.append(logp.gather(1, token[:, None]).squeeze(1))
            entropies.append(-(probs * logp).sum(dim=-1))
            x = self.embedding[start + token]
        return torch.stack(tokens, 1), torch.stack(log_probs, 1), torch.stack(entropies, 1)

    def evaluate(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forced ``(log_probs[n,D], entropies[n,D])`` of given tokens (differentiable)."""
        tokens = self._check_tokens(tokens)
        n = tokens.shape[0]
        prev = self.embedding[tokens[:, :-1] + self._offset_t[:-1]]  # (n, D-1, H)
        inputs = torch.cat([self.start.expand(n, 1, -1), prev], dim=1)
        hidden, _ = self.lstm(inputs)  # (n, D, H)
        weight = self.head_weight[self._head_index]  # (D, V, H)
        logits = torch.einsum("ndh,dvh->ndv", hidden, weight) + self.head_bias[self._head_index]
        logits = self._shape_logits(logits).masked_fill(~self._head_valid, _PAD_LOGIT)
        logp = torch.log_softmax(logits, dim=-1)
        entropies = -(logp.exp() * logp).sum(dim=-1)
        return logp.gather(2, tokens[:, :, None]).squeeze(2), entropies

    def _lstm_weights(self) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        names = ("weight_ih_l", "weight_hh_l", "bias_ih_l", "bias_hh_l")
        return tuple(  # type: ignore[return-value]
            [getattr(self.lstm, f"{name}{k}") for k in range(self.num_layers)] for name in names
        )

    def _check_tokens(self, tokens: Tensor | Sequence[Sequence[int]]) -> Tensor:
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=self.start.device)
        if tokens.dim() != 2 or tokens.shape[1] != self.num_decisions:
            raise ValueError(
                f"tokens: shape {tuple(tokens.shape)}, expected (n, {self.num_decisions})"
            )
        sizes = torch.tensor(self.vocab_sizes, device=tokens.device)
        bad = (tokens < 0) | (tokens >= sizes)
        if bool(bad.any()):
            row, d = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"tokens[{row}][{d}]={int(tokens[row, d])}: decision {d} allows "
                f"0..{self.vocab_sizes[d] - 1}"
            )
        return tokens


def _check_vocab_sizes(vocab_sizes: Sequence[int]) -> list[int]:
    sizes = list(vocab_sizes)
    if not sizes:
        raise ValueError("vocab_sizes: empty, expected at least one decision")
    for d, size in enumerate(sizes):
        try:
            sizes[d] = operator.index(size)
        except TypeError:
            sizes[d] = 0
        if isinstance(size, bool) or sizes[d] < 1:
            raise ValueError(f"vocab_sizes[{d}]={size!r}: expected an int >= 1")
    return sizes


def _check_positive(name: str, value: Any, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
        allowed = "an int >= 1" if integer else "a number > 0"
        raise ValueError(f"{name}={value!r}: expected {allowed}")
