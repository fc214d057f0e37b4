"""Batched on-device augmentation: one gather per batch, no per-sample Python."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from search_space.errors import user_error

__all__ = ["random_crop", "random_flip", "augment_batch", "AUGMENTATIONS"]

AUGMENTATIONS = ("cifar", "shift", "none")


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop back to (H, W) at an independent random offset per image."""
    if padding <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, n), device=x.device, generator=generator)
    rows = (offsets[0, :, None] + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (offsets[1, :, None] + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chans = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[batch, chans, rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image horizontally with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """``cifar``: crop with 4-pixel padding + flip; ``shift``: +-1 pixel shifts (digits, no flip)."""
    if kind == "cifar":
        return random_flip(random_crop(x, 4, generator), generator)
    if kind == "shift":
        return random_crop(x, 1, generator)
    if kind == "none":
        return x
    raise user_error("augment", detail=f"unknown augmentation {kind!r}", allowed=", ".join(AUGMENTATIONS))
