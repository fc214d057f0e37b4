"""AutoDropout's Transformer dropout pattern (Pham & Le 2021) for (batch, tokens, channels) states.

The pattern: along the token axis the sequence is tiled with period
``stride``; in every period the first ``size`` consecutive tokens form a *block* (tokens outside
blocks are never dropped). The tiling starts at a random offset drawn uniformly from
``[0, stride)`` per example and per forward pass (one offset per example, shared by all
channels). Inside blocks, noise units are dropped with probability ``block_rate``:

* ``share_t``: all tokens of one block share one noise draw (else one draw per token);
* ``share_c``: one draw serves all channels (else one draw per channel).

So ``share_t and share_c`` drops whole spans of ``size`` tokens (word-dropout-like),
``share_t`` alone drops one channel over a whole span (variational-style along time),
``share_c`` alone drops whole tokens, neither is element-wise dropout restricted to blocks.

Choices where the paper's text is not specific (documented in docs/layers.md):

* ``drop_prob`` is the **expected fraction of dropped units**, as for every other layer, so a
  search compares patterns at equal amounts of noise. With the uniform offset every token lies
  in a block with probability exactly ``coverage = min(size, stride) / stride``, so the noise
  inside blocks uses ``block_rate = drop_prob / coverage``. When ``drop_prob > coverage`` the
  pattern cannot drop that much: ``block_rate`` saturates at 1 and the realized rate is
  ``coverage`` (``expected_rate``), instead of failing a sampled plan.
* ``size > stride`` saturates to ``size == stride`` (every token is in a block; blocks are
  the periods, so ``share_t`` shares noise across one period).
* Kept units are rescaled by the realized kept fraction of the whole batch tensor (one
  scalar, as `PatternDropout` does), so the expected sum of activations is unchanged.
* Inputs (``layout``, `search_space.layouts`): (N, T, C) hidden states ("NTC", the default),
  (T, N, C) ("TNC", as ``nn.TransformerEncoderLayer(batch_first=False)`` or an
  ``nn.LSTM`` produce; ``batch_first=False`` says the same), (N, C, L) 1-D feature maps
  ("NCL": the pattern runs along L, e.g. a Conv1d model), or, with "NTC", (N, H, T, S)
  attention probabilities, where tokens are the query axis T and "channels" are (head, key)
  pairs.

The random draws (offsets, then uniform noise) are made by `draws`; which path turns them into
an output is `_dispatch.sequence_route`'s decision, as for every layer: the fast path builds
the mask with broadcast index arithmetic and applies it with `_drop_ops.apply_keep`,
``algorithm="reference"`` with plain Python loops over examples and tokens and
`_drop_ops.reference_apply`, so the two are compared exactly on the same draws.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from search_space.errors import user_error
from search_space.layouts import get_layout

from ._dispatch import ONE_FAST_PATH, Route, check_algorithm, sequence_route
from ._drop_ops import apply_keep, reference_apply
from ._layout import dense_layout
from ._validate import check_int, check_prob, check_rank


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise user_error(name, value, "true or false")
    return value


#: (batch axis, token axis, channel axes) of each 3-D layout the pattern runs on.
_AXES = {"NTC": (0, 1, (2,)), "TNC": (1, 0, (2,)), "NCL": (0, 2, (1,))}


class SequenceDropout(nn.Module):
    """Zero blocks of consecutive tokens tiled along a sequence, rescale the rest (see module doc).

    ``generator`` (optional) makes the masks of this layer reproducible independently of the
    global RNG; without it the global (``torch.manual_seed``) generator is used.
    """

    prob_attr: ClassVar[str] = "drop_prob"

    def __init__(
        self,
        drop_prob: float = 0.1,
        size: int = 2,
        stride: int = 4,
        share_t: bool = False,
        share_c: bool = False,
        batch_first: bool = True,
        algorithm: str = "auto",
        generator: torch.Generator | None = None,
        layout: str | None = None,
    ) -> None:
        super().__init__()
        self.drop_prob = check_prob("drop_prob", drop_prob)
        self.size = check_int("size", size)
        self.stride = check_int("stride", stride)
        self.share_t = _check_bool("share_t", share_t)
        self.share_c = _check_bool("share_c", share_c)
        if layout is not None and not _check_bool("batch_first", batch_first):
            raise user_error("batch_first", False, "true (the default) when a layout is given", hint="say layout='TNC'")
        self.layout = layout or ("NTC" if _check_bool("batch_first", batch_first) else "TNC")
        self.algorithm = check_algorithm(algorithm, ONE_FAST_PATH)
        self.generator = generator

    # ------------------------------------------------------------------ rates
    @property
    def coverage(self) -> float:
        """Probability that a token lies in a block (exact, over the random offset)."""
        return min(self.size, self.stride) / self.stride

    @property
    def block_rate(self) -> float:
        """Drop probability of a noise unit inside a block."""
        return min(1.0, check_prob("drop_prob", self.drop_prob) / self.coverage)

    @property
    def expected_rate(self) -> float:
        """Expected fraction of dropped units: ``drop_prob``, or ``coverage`` when saturated."""
        return self.block_rate * self.coverage

    # ------------------------------------------------------------------ layout
    @property
    def layout(self) -> str:
        """ "NTC", "TNC" or "NCL" (see the module docstring)."""
        return self._layout

    @layout.setter
    def layout(self, value: object) -> None:
        name = get_layout(value, "SequenceDropout layout").name
        if name not in _AXES:
            raise user_error("SequenceDropout layout", value, ", ".join(_AXES))
        object.__setattr__(self, "_layout", name)

    @property
    def batch_first(self) -> bool:
        """False for (T, N, C) inputs (layout "TNC")."""
        return self._layout != "TNC"

    @batch_first.setter
    def batch_first(self, value: bool) -> None:
        self.layout = "NTC" if _check_bool("batch_first", value) else "TNC"

    def _axes(self, x: torch.Tensor) -> tuple[int, int, tuple[int, ...]]:
        """(batch axis, token axis, channel axes) of the input."""
        if self._layout != "NTC" or x.dim() != 4:
            check_rank("SequenceDropout", x, (3,), f"({get_layout(self._layout).axes})")
            return _AXES[self._layout]
        check_rank("SequenceDropout", x, (3, 4), "(N, T, C) or (N, H, T, S)")
        return (0, 2, (1, 3)) if x.dim() == 4 else _AXES["NTC"]

    def n_units(self, tokens: int) -> int:
        """Noise units along the token axis: blocks that can touch ``tokens`` tokens, or tokens."""
        return (tokens - 1) // self.stride + 2 if self.share_t else tokens

    def draws(
        self, n: int, tokens: int, channels: tuple[int, ...], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The random numbers of one forward: offsets (n,) in [0, stride) and uniform noise
        (n, units, *channels) with channels of size 1 when ``share_c``."""
        chans = tuple(1 for _ in channels) if self.share_c else tuple(channels)
        offsets = torch.randint(0, self.stride, (n,), device=device, generator=self.generator)
        noise = torch.rand((n, self.n_units(tokens), *chans), device=device, generator=self.generator)
        return offsets, noise

    def _drop_fast(self, offsets: torch.Tensor, noise: torch.Tensor, tokens: int) -> torch.Tensor:
        n = offsets.shape[0]
        # rel = t - offset + stride >= 1: the token's position in the tiling (one period ahead).
        rel = torch.arange(tokens, device=offsets.device).view(1, tokens) - offsets.view(n, 1) + self.stride
        covered = (rel % self.stride) < min(self.size, self.stride)
        extra = (1,) * (noise.dim() - 2)
        if self.share_t:
            index = (rel // self.stride).view(n, tokens, *extra).expand(n, tokens, *noise.shape[2:])
            noise = torch.gather(noise, 1, index)
        return covered.view(n, tokens, *extra) & (noise < self.block_rate)

    def _drop_reference(self, offsets: torch.Tensor, noise: torch.Tensor, tokens: int) -> torch.Tensor:
        size, stride, q = min(self.size, self.stride), self.stride, self.block_rate
        drop = torch.zeros((offsets.shape[0], tokens, *noise.shape[2:]), dtype=torch.bool)
        for i, o in enumerate(offsets.tolist()):
            for t in range(tokens):
                if (t - o) % stride < size:  # Python's % is the torus position
                    unit = (t - o) // stride + 1 if self.share_t else t
                    drop[i, t] = noise[i, unit].cpu() < q
        return drop.to(offsets.device)

    def drop_mask(
        self, x: torch.Tensor, sampler: str | None = None, draws: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Boolean mask (True = dropped) broadcastable to ``x``, in x's axis order. ``sampler``
        ("index" or "loops", default the dispatch's) and ``draws`` replace the choice and draw."""
        b, t, chan_axes = self._axes(x)
        sampler = sampler or sequence_route(self.algorithm, x).sampler
        if draws is None:
            draws = self.draws(x.shape[b], x.shape[t], tuple(x.shape[a] for a in chan_axes), x.device)
        build = self._drop_reference if sampler == "loops" else self._drop_fast
        drop = build(*draws, x.shape[t])  # axes (b, t, *chan_axes)
        order = (b, t, *chan_axes)
        return drop.permute(*[order.index(a) for a in range(x.dim())])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._axes(x)
        p = check_prob("drop_prob", self.drop_prob)
        if not self.training or p == 0.0 or x.numel() == 0:
            return x
        return self.drop(x)

    def drop(
        self,
        x: torch.Tensor,
        *,
        route: Route | None = None,
        draws: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Train-mode output: ``x * keep * numel / kept``. ``route`` (default
        `_dispatch.sequence_route`) and ``draws`` (offsets, noise) replace the dispatch's
        choice and the draw."""
        x = dense_layout(x)
        route = route or sequence_route(self.algorithm, x)
        drop = self.drop_mask(x, route.sampler, draws)
        if route.apply == "reference":
            return reference_apply(x, ~drop)
        return apply_keep(x, (~drop).to(torch.uint8), route.apply)

    def extra_repr(self) -> str:
        return (
            f"drop_prob={self.drop_prob}, size={self.size}, stride={self.stride}, share_t={self.share_t}, "
            f"share_c={self.share_c}, layout={self.layout!r}, algorithm={self.algorithm!r}"
        )
