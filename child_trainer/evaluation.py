"""A trained child's validation and test metrics in eval mode (regularizers off): top-1
accuracy for image children (`evaluate`), mean NLL per token for language models
(`evaluate_lm`), in large batches with one host sync.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["evaluate", "evaluate_lm"]


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 1024,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> float:
    """Top-1 accuracy in eval mode (regularizers off), large batches, one host sync."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size]
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            correct += (model(xb).argmax(1) == y[i : i + batch_size]).sum()
    model.train(was_training)
    return correct.item() / max(1, len(x))


@torch.inference_mode()
def evaluate_lm(
    model: nn.Module, stream: torch.Tensor, seq_len: int, batch_size: int = 256, amp_dtype: torch.dtype | None = None
) -> float:
    """Mean NLL per token (nats) in eval mode over non-overlapping windows of ``seq_len``
    tokens (each window starts with a fresh context; the last partial window counts too)."""
    was_training = model.training
    model.eval()
    n = (len(stream) - 1) // seq_len
    total = torch.zeros((), dtype=torch.float64, device=stream.device)
    windows = [(stream[: n * seq_len].view(n, seq_len), stream[1 : n * seq_len + 1].view(n, seq_len))]
    rest = len(stream) - 1 - n * seq_len
    if rest > 0:
        windows.append((stream[n * seq_len : -1].view(1, rest), stream[n * seq_len + 1 :].view(1, rest)))
    for x, y in windows:
        for i in range(0, len(x), batch_size):
            with torch.autocast(stream.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(x[i : i + batch_size])
            total += nn.functional.cross_entropy(
                logits.float().flatten(0, 1), y[i : i + batch_size].flatten(), reduction="sum"
            ).double()
    model.train(was_training)
    return total.item() / max(1, len(stream) - 1)
