"""REINFORCE trainer for the controller: EMA baseline, entropy bonus, gradient clipping, Adam.

Why it looks like this:
- Trials finish out of order and long after they were sampled, so ``update`` takes finished
  token sequences and recomputes their log-probs with ``policy.evaluate`` (teacher forcing)
  instead of keeping sampling graphs alive.
- Decisions that do not matter for the chosen method (e.g. ``block_size`` of a site whose
  method is ``none``) carry no signal; ``active_fn`` masks them out of log-prob and entropy.
- A search must resume exactly where it stopped, so ``state_dict`` holds policy, optimizer,
  baseline, step and the sampling RNG; ``state_to_json``/``state_from_json`` make it a
  plain JSON document (float32 values survive the round trip bit for bit).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from search_space.errors import user_error

__all__ = ["Reinforce", "ReinforceConfig", "state_from_json", "state_to_json"]

log = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass(frozen=True)
class ReinforceConfig:
    """Hyperparameters of :class:`Reinforce` (defaults tuned to learn within a few hundred plans)."""

    lr: float = 0.01
    baseline_decay: float = 0.9
    entropy_weight: float = 1e-3
    grad_clip: float | None = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise user_error(detail=f"lr={self.lr!r}: expected a number > 0")
        if not (isinstance(self.baseline_decay, (int, float)) and 0 <= self.baseline_decay < 1):
            raise user_error(detail=f"baseline_decay={self.baseline_decay!r}: expected 0 <= value < 1")
        if not (isinstance(self.entropy_weight, (int, float)) and self.entropy_weight >= 0):
            raise user_error(detail=f"entropy_weight={self.entropy_weight!r}: expected a number >= 0")
        if self.grad_clip is not None and not (isinstance(self.grad_clip, (int, float)) and self.grad_clip > 0):
            raise user_error(detail=f"grad_clip={self.grad_clip!r}: expected a number > 0 or None")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise user_error(detail=f"seed={self.seed!r}: expected an int")


class Reinforce:
    """Trains a policy (``sample``/``evaluate`` like :class:`LSTMController`) with REINFORCE.

    Loss per batch: ``-mean_i[(r_i - b) * sum_d m_id * logp_id]
    - entropy_weight * mean_i[sum_d m_id * H_id]``, where ``b`` is the EMA baseline before
    this batch (the first batch's mean starts it) and ``m`` the ``active_fn`` mask.
    Rewards of failed trials are the caller's choice; NaN/inf rewards are rejected.
    """

    def __init__(
        self,
        policy: nn.Module,
        lr: float = ReinforceConfig.lr,
        baseline_decay: float = ReinforceConfig.baseline_decay,
        entropy_weight: float = ReinforceConfig.entropy_weight,
        grad_clip: float | None = ReinforceConfig.grad_clip,
        seed: int = ReinforceConfig.seed,
        active_fn: Callable[[list[int]], list[bool]] | None = None,
        num_threads: int | None = 1,
    ) -> None:
        self.config = ReinforceConfig(lr, baseline_decay, entropy_weight, grad_clip, seed)
        self.policy = policy
        self.active_fn = active_fn
        if num_threads is not None and (
            isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
        ):
            raise user_error(detail=f"num_threads={num_threads!r}: expected an int >= 1 or None")
        self.num_threads = num_threads
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
        device = next(policy.parameters()).device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.baseline: float | None = None
        self.step = 0

    def sample(self, n: int) -> list[list[int]]:
        """``n`` token sequences from the current policy, drawn from the trainer's own RNG."""
        with torch.no_grad(), self._threads():
            tokens, _, _ = self.policy.sample(n, generator=self.generator)
        return tokens.tolist()

    def update(self, tokens_batch: Sequence[Sequence[int]], rewards: Sequence[float]) -> dict[str, float | int]:
        """One REINFORCE step on finished trials; returns mean_reward, baseline, entropy
        (mean over active decisions, nats), loss and step (after the update)."""
        if len(tokens_batch) == 0 or len(tokens_batch) != len(rewards):
            raise user_error(
                "rewards",
                detail=f"got {len(rewards)} rewards for {len(tokens_batch)} token sequences, "
                "expected the same non-zero number",
            )
        values = [_finite("rewards", i, r) for i, r in enumerate(rewards)]
        device = self.generator.device
        reward = torch.tensor(values, dtype=torch.float32, device=device)
        mean_reward = math.fsum(values) / len(values)
        baseline = mean_reward if self.baseline is None else self.baseline
        mask = self._mask(tokens_batch).to(device)

        self.policy.train()
        with self._threads():
            log_probs, entropies = self.policy.evaluate(torch.as_tensor(tokens_batch, device=device))
            plan_log_prob = (log_probs * mask).sum(dim=1)
            plan_entropy = (entropies * mask).sum(dim=1)
            loss = -((reward - baseline) * plan_log_prob).mean()
            loss = loss - self.config.entropy_weight * plan_entropy.mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.config.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.grad_clip)
            self.optimizer.step()

        decay = self.config.baseline_decay
        self.baseline = decay * baseline + (1.0 - decay) * mean_reward
        self.step += 1
        entropy = float((entropies.detach() * mask).sum() / mask.sum().clamp(min=1))
        stats = {
            "mean_reward": mean_reward,
            "baseline": self.baseline,
            "entropy": entropy,
            "loss": float(loss.detach()),
            "step": self.step,
        }
        log.debug("reinforce update %s", stats)
        return stats

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        """Run with ``num_threads`` intra-op threads: the controller's ops are tiny, so extra
        threads only add synchronisation, which stalls badly (~30x measured) when training
        trials keep every core busy; one thread also makes results machine-independent."""
        before = torch.get_num_threads()
        if self.num_threads is None or self.num_threads == before:
            yield
            return
        torch.set_num_threads(self.num_threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def _mask(self, tokens_batch: Sequence[Sequence[int]]) -> Tensor:
        width = len(tokens_batch[0])
        if self.active_fn is None:
            return torch.ones(len(tokens_batch), width)
        rows = [list(self.active_fn([int(t) for t in tokens])) for tokens in tokens_batch]
        for i, row in enumerate(rows):
            if len(row) != len(tokens_batch[i]):
                raise user_error(
                    "active_fn",
                    detail=f"returned {len(row)} flags for sequence {i} of "
                    f"{len(tokens_batch[i])} tokens, expected one per decision",
                )
        return torch.tensor(rows, dtype=torch.float32)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: policy, optimizer, baseline, step, RNG.

        A snapshot (tensors are copied), so training on afterwards does not change it."""
        policy_config = getattr(self.policy, "config", None)
        return {
            "version": STATE_VERSION,
            "config": asdict(self.config),
            "policy_config": policy_config() if callable(policy_config) else None,
            "policy": copy.deepcopy(self.policy.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "baseline": self.baseline,
            "step": self.step,
            "rng": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the policy must have the same structure."""
        version = state.get("version")
        if version != STATE_VERSION:
            raise user_error(detail=f"version={version!r}: expected {STATE_VERSION}")
        saved = state.get("policy_config") or {}
        current_config = getattr(self.policy, "config", None)
        current = current_config() if callable(current_config) else {}
        for key in ("vocab_sizes", "hidden_size", "num_layers", "share_keys"):
            if key in saved and key in current and saved[key] != current[key]:
                raise user_error(detail=f"policy_config.{key}={saved[key]!r}: this policy has {current[key]!r}")
        if state["config"] != asdict(self.config):
            log.warning(
                "restoring with different hyperparameters: saved %s, now %s", state["config"], asdict(self.config)
            )
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline = None if state["baseline"] is None else float(state["baseline"])
        self.step = int(state["step"])
        self.generator.set_state(torch.as_tensor(state["rng"], dtype=torch.uint8).cpu())


def _finite(field: str, index: int, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise user_error(detail=f"{field}[{index}]={value!r}: expected a finite number")
    return number


def state_to_json(state: Any) -> str:
    """Serialise a :meth:`Reinforce.state_dict` (tensors, tuples, int dict keys) to JSON."""
    return json.dumps(_encode(state))


def state_from_json(text: str) -> Any:
    """Inverse of :func:`state_to_json`."""
    return _decode(json.loads(text))


def _encode(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        t = obj.detach().cpu()
        return {
            "__tensor__": str(t.dtype).removeprefix("torch."),
            "shape": list(t.shape),
            "data": t.reshape(-1).tolist(),
        }
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v) for k, v in obj.items()}
        return {"__items__": [[_encode(k), _encode(v)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v) for v in obj]
    return obj


def _decode(obj: Any) -> Any:
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        dtype = getattr(torch, obj["__tensor__"])
        return torch.tensor(obj["data"], dtype=dtype).reshape(obj["shape"])
    if "__items__" in obj:
        return {_decode(k): _decode(v) for k, v in obj["__items__"]}
    if "__tuple__" in obj:
        return tuple(_decode(v) for v in obj["__tuple__"])
    return {k: _decode(v) for k, v in obj.items()}
