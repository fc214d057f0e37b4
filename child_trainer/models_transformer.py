"""The small Transformer children: ``vit_tiny`` on image patches and ``transformer_lm`` on text.

Both declare AutoDropout's Transformer sites (``regularization_sites``): the embedding output,
and per block (``blocks.<i>``) the q/k/v projections, the attention output, the feed-forward
hidden activation and the feed-forward output. Apart from the ConvNets (`child_trainer.models`,
which builds every child by name and re-exports these) because they share only the init recipe.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from search_space.errors import user_error

__all__ = ["SelfAttention", "FeedForward", "TransformerLayer", "PatchEmbed", "ViTTiny", "TokenEmbed", "TransformerLM"]


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections (each one a regularization
    site) and PyTorch's fused scaled-dot-product kernel."""

    def __init__(self, dim: int, heads: int, causal: bool) -> None:
        super().__init__()
        if dim % heads:
            raise user_error("dim", detail=f"must be divisible by heads (got {dim} and {heads})")
        self.heads, self.causal = heads, causal
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (
            p(x).view(b, t, self.heads, c // self.heads).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, c))


class FeedForward(nn.Module):
    """fc1 -> GELU (``act``, the hidden-activation site) -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerLayer(nn.Module):
    """Pre-LayerNorm Transformer layer: x + attn(ln(x)), then x + ff(ln(x)). (Not called
    ``...Block``: find_sites would also take its (N, T, C) output as a residual-block site.)"""

    regularization_sites = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "mlp.act", "mlp.fc2")

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4, causal: bool = False) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), SelfAttention(dim, heads, causal)
        self.norm2, self.mlp = nn.LayerNorm(dim), FeedForward(dim, mlp_ratio * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _init_transformer(model: nn.Module) -> None:
    """GPT/ViT-style init: N(0, 0.02) linears and embeddings, zero biases, unit LayerNorm."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding, nn.Conv2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> (N, T, C) tokens plus learned positions (the embedding site)."""

    def __init__(self, image_size: int, patch: int, in_channels: int, dim: int) -> None:
        super().__init__()
        if image_size % patch:
            raise user_error("image_size", detail=f"must be divisible by the patch size {patch} (got {image_size})")
        self.proj = nn.Conv2d(in_channels, dim, patch, patch)
        self.pos = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2) + self.pos


class ViTTiny(nn.Module):
    """A small Vision Transformer: patch tokens, pre-LN layers, mean-pooled tokens -> linear.

    Patches of 2x2 on maps up to 16x16 (digits 8x8: 16 tokens), 4x4 above (CIFAR: 64 tokens).
    Mean pooling instead of a class token keeps every position a plain sequence token.
    """

    regularization_sites = ("embed",)

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 32,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        patch: int | None = None,
    ) -> None:
        super().__init__()
        patch = patch or (2 if image_size <= 16 else 4)
        self.embed = PatchEmbed(image_size, patch, in_channels, dim)
        self.blocks = nn.ModuleList(TransformerLayer(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        _init_transformer(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(1))


class TokenEmbed(nn.Module):
    """Token embedding plus learned positions: (N, T) ids -> (N, T, C) (the embedding site)."""

    def __init__(self, vocab_size: int, max_len: int, dim: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.zeros(1, max_len, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] > self.pos.shape[1]:
            raise user_error(detail=f"sequence of {ids.shape[1]} tokens is longer than max_len {self.pos.shape[1]}")
        return self.tok(ids) + self.pos[:, : ids.shape[1]]


class TransformerLM(nn.Module):
    """A small causal Transformer language model with tied input/output embeddings.

    (N, T) token ids -> (N, T, vocab) next-token logits. Defaults (dim 64, 2 layers, 4 heads)
    train tens of steps per second on one CPU core at sequence length 64.
    """

    regularization_sites = ("embed",)

    def __init__(self, vocab_size: int, max_len: int = 256, dim: int = 64, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.embed = TokenEmbed(vocab_size, max_len, dim)
        self.blocks = nn.ModuleList(TransformerLayer(dim, heads, causal=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        _init_transformer(self)
        self.head.weight = self.embed.tok.weight  # tied

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))
