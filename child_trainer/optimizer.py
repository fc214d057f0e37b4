"""The training recipe's optimizer (SGD with Nesterov momentum, or AdamW for Transformer
children) and its learning-rate schedule (linear warm-up, then cosine decay to zero).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .train_config import TrainConfig


def _lr_lambda(total_steps: int, warmup_fraction: float, schedule: str) -> Callable[[int], float]:
    """Linear warm-up then cosine decay to zero; onecycle starts the ramp at lr/25 (Smith 2018)."""
    warm = max(1, int(warmup_fraction * total_steps)) if warmup_fraction > 0 else 0
    start = 1.0 / 25.0 if schedule == "onecycle" else 0.0

    def factor(step: int) -> float:
        if step < warm:
            return start + (1.0 - start) * (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _make_optimizer(cfg: TrainConfig, model: nn.Module, no_decay: Sequence[nn.Parameter] = ()) -> torch.optim.Optimizer:
    """The recipe's optimizer; ``no_decay`` (learned dropout logits) in a group without weight decay."""
    skip = {id(p) for p in no_decay}
    params: list[dict[str, Any]] = [{"params": [p for p in model.parameters() if id(p) not in skip]}]
    if no_decay:
        params.append({"params": list(no_decay), "weight_decay": 0.0})
    if cfg.resolved_optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )
