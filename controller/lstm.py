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
from torch.nn import functional as F

from search_space.errors import user_error

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
        prior_logits: optional starting logits per decision (one per choice, after
            temperature and clipping), e.g. ``controller.prior.mild_prior``; they go into
            the head's bias, so the untrained policy samples from (close to) their softmax.
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
        prior_logits: Sequence[Sequence[float]] | None = None,
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
            raise user_error("share_keys", detail=f"got {len(keys)} keys, expected one per decision ({len(sizes)})")
        self.vocab_sizes: list[int] = sizes
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.temperature = float(temperature)
        self.tanh_constant = None if tanh_constant is None else float(tanh_constant)
        self.share_keys: list[Hashable] | None = None if share_keys is None else keys
        self.init_range = float(init_range)
        self.seed = int(seed)

        # Row offset of each key's block in the packed head / embedding tables.
        key_rows: dict[Hashable, tuple[int, int, int]] = {}  # key -> (first row, size, block)
        offsets: list[int] = []
        self._block_of: list[int] = []  # decision -> index of its key's block of rows
        total = 0
        for d, (key, size) in enumerate(zip(keys, sizes)):
            if key not in key_rows:
                key_rows[key] = (total, size, len(key_rows))
                total += size
            start, key_size, block = key_rows[key]
            self._block_of.append(block)
            if key_size != size:
                raise user_error(
                    detail=f"share_keys[{d}]={key!r}: vocab size {size} differs from {key_size} "
                    "of an earlier decision with the same key"
                )
            offsets.append(start)
        self._block_sizes = [size for _, size, _ in key_rows.values()]
        vmax = max(sizes)
        index = torch.zeros(len(sizes), vmax, dtype=torch.long)
        valid = torch.zeros(len(sizes), vmax, dtype=torch.bool)
        for d, (start, size) in enumerate(zip(offsets, sizes)):
            index[d, :size] = torch.arange(start, start + size)
            valid[d, :size] = True
        self.register_buffer("_head_index", index, persistent=False)
        self.register_buffer("_head_valid", valid, persistent=False)
        self.register_buffer("_offset_t", torch.tensor(offsets), persistent=False)
        # Where decision d's choices sit in the flattened padded (D * vmax) logits.
        self.register_buffer("_flat_valid", valid.flatten().nonzero().squeeze(1), persistent=False)

        self.start = nn.Parameter(torch.empty(hidden_size))
        self.embedding = nn.Parameter(torch.empty(total, hidden_size))
        self.lstm = nn.LSTM(hidden_size, hidden_size, num_layers=num_layers, batch_first=True)
        self.head_weight = nn.Parameter(torch.empty(total, hidden_size))
        self.head_bias = nn.Parameter(torch.empty(total))
        gen = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            for p in self.parameters():
                nn.init.uniform_(p, -self.init_range, self.init_range, generator=gen)
            if prior_logits is not None:
                self._set_prior(prior_logits, offsets)

    def _set_prior(self, prior: Sequence[Sequence[float]], offsets: Sequence[int]) -> None:
        """Head bias rows such that ``_shape_logits(bias)`` equals the prior (clipped inside
        the tanh range); decisions sharing a key take the first one's prior."""
        if len(prior) != len(self.vocab_sizes):
            raise user_error(
                "prior_logits",
                detail=f"bad length {len(prior)}",
                allowed=f"one list per decision ({len(self.vocab_sizes)})",
            )
        done: set[int] = set()
        for d, (row, size, start) in enumerate(zip(prior, self.vocab_sizes, offsets)):
            if len(row) != size:
                raise user_error(f"prior_logits[{d}]", detail=f"bad length {len(row)}", allowed=f"{size} (the choices)")
            if start in done:
                continue
            done.add(start)
            target = torch.as_tensor([float(v) for v in row], dtype=self.head_bias.dtype)
            if self.tanh_constant is not None:
                limit = 0.95 * self.tanh_constant
                target = torch.atanh(target.clamp(-limit, limit) / self.tanh_constant)
            self.head_bias[start : start + size] += target * self.temperature

    @torch.no_grad()
    def add_prior(self, prior_logits: Sequence[Sequence[float]]) -> None:
        """Shift the policy by extra starting logits (one list per decision), e.g. towards a
        recipe known to work (``controller.prior.recipe_prior``); training goes on from there."""
        self._set_prior(prior_logits, self._offset_t.tolist())

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

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, greedy: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Draw ``n`` token sequences; returns ``(tokens[n,D], log_probs[n,D], entropies[n,D])``.

        No gradients (use :meth:`evaluate` on the tokens for those): sampling is the hot loop
        of a search, so everything that does not depend on the previous token is hoisted out
        of it (input projections of every token, per-decision head views, all Gumbel noise
        drawn from ``generator`` in one call) and the LSTM step is hand-fused.
        ``greedy=True`` takes the most likely choice at every step (no randomness).
        """
        _check_positive("n", n, integer=True)
        hid, sizes = self.hidden_size, self.vocab_sizes
        clip = 1.0 if self.tanh_constant is None else self.tanh_constant
        w_ih, w_hh, bias = self._gate_ordered_lstm()
        # Layer-0 input gates of every token row (its embedding) and of the start input.
        token_gates = torch.addmm(bias[0], self.embedding, w_ih[0].t())
        x_gates = torch.addmv(bias[0], w_ih[0], self.start).expand(n, -1)
        token_gates = self._per_decision(token_gates)
        head_w = self._per_decision(self.head_weight / self.temperature)
        head_b = self._per_decision(self.head_bias / self.temperature)
        w_ih_t = [w.t() for w in w_ih]
        w_hh_t = [w.t() for w in w_hh]
        if greedy:
            noise = [self.start.new_zeros(n, size) for size in sizes]
        else:
            u = torch.rand(n, sum(sizes), generator=generator, device=self.start.device)
            u = u.clamp_(min=1e-30).log_().neg_().log_().neg_()  # Gumbel(0, 1)
            noise = u.split(sizes, dim=1)
        h = [self.start.new_zeros(n, hid) for _ in range(self.num_layers)]
        c = [self.start.new_zeros(n, hid) for _ in range(self.num_layers)]
        tokens, shaped = [], []
        for d in range(len(sizes)):
            for layer in range(self.num_layers):
                if layer > 0:
                    x_gates = torch.addmm(bias[layer], h[layer - 1], w_ih_t[layer])
                gates = torch.addmm(x_gates, h[layer], w_hh_t[layer])
                ifo = gates[:, : 3 * hid].sigmoid().chunk(3, dim=1)
                c[layer] = torch.addcmul(ifo[1] * c[layer], ifo[0], gates[:, 3 * hid :].tanh())
                h[layer] = ifo[2] * c[layer].tanh()
            logits = F.linear(h[-1], head_w[d], head_b[d])
            if self.tanh_constant is not None:
                logits = logits.tanh_()
            shaped.append(logits)  # times `clip`, done once after the loop
            token = torch.add(noise[d], logits, alpha=clip).argmax(dim=1)
            tokens.append(token)
            x_gates = token_gates[d].index_select(0, token)
        padded = self.start.new_full((n, len(sizes) * self._head_valid.shape[1]), _PAD_LOGIT)
        padded[:, self._flat_valid] = torch.cat(shaped, dim=1).mul_(clip)
        all_tokens = torch.stack(tokens, dim=1)
        log_probs, entropies = _score(padded.view(n, len(sizes), -1), all_tokens)
        return all_tokens, log_probs, entropies

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
        return _score(logits, tokens)

    def _gate_ordered_lstm(self) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per layer (w_ih, w_hh, b_ih + b_hh) with gate rows reordered from PyTorch's
        (i, f, g, o) to (i, f, o, g): one sigmoid and one tanh per step, no gather."""
        hid = self.hidden_size
        order = torch.cat(
            [torch.arange(0, 2 * hid), torch.arange(3 * hid, 4 * hid), torch.arange(2 * hid, 3 * hid)]
        ).to(self.start.device)
        out: tuple[list[Tensor], list[Tensor], list[Tensor]] = ([], [], [])
        for k in range(self.num_layers):
            lstm = self.lstm
            bias = getattr(lstm, f"bias_ih_l{k}") + getattr(lstm, f"bias_hh_l{k}")
            for dest, tensor in zip(out, (getattr(lstm, f"weight_ih_l{k}"), getattr(lstm, f"weight_hh_l{k}"), bias)):
                dest.append(tensor[order])
        return out

    def _per_decision(self, rows: Tensor) -> list[Tensor]:
        """Views of a packed per-row tensor (rows, ...), one per decision (shared keys share)."""
        blocks = rows.split(self._block_sizes, dim=0)
        return [blocks[b] for b in self._block_of]

    def _check_tokens(self, tokens: Tensor | Sequence[Sequence[int]]) -> Tensor:
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=self.start.device)
        if tokens.dim() != 2 or tokens.shape[1] != self.num_decisions:
            raise user_error("tokens", detail=f"shape {tuple(tokens.shape)}, expected (n, {self.num_decisions})")
        sizes = torch.tensor(self.vocab_sizes, device=tokens.device)
        bad = (tokens < 0) | (tokens >= sizes)
        if bool(bad.any()):
            row, d = (int(i) for i in bad.nonzero()[0])
            raise user_error(
                detail=f"tokens[{row}][{d}]={int(tokens[row, d])}: decision {d} allows 0..{self.vocab_sizes[d] - 1}"
            )
        return tokens


def _score(logits: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Log-probs of the chosen tokens and entropies from shaped, padded logits (n, D, V)."""
    logp = torch.log_softmax(logits, dim=-1)
    entropies = -(logp.exp() * logp).sum(dim=-1)
    return logp.gather(2, tokens[:, :, None]).squeeze(2), entropies


def _check_vocab_sizes(vocab_sizes: Sequence[int]) -> list[int]:
    sizes = list(vocab_sizes)
    if not sizes:
        raise user_error("vocab_sizes", detail="empty, expected at least one decision")
    for d, size in enumerate(sizes):
        try:
            sizes[d] = operator.index(size)
        except TypeError:
            sizes[d] = 0
        if isinstance(size, bool) or sizes[d] < 1:
            raise user_error(detail=f"vocab_sizes[{d}]={size!r}: expected an int >= 1")
    return sizes


def _check_positive(name: str, value: Any, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
        allowed = "an int >= 1" if integer else "a number > 0"
        raise user_error(detail=f"{name}={value!r}: expected {allowed}")
