"""The q/k/v sites of an ``nn.MultiheadAttention``: regularizers on its input projections.

The fused attention computes the three projections inside one op, so these sites are
virtual (``<attention>:q|k|v``): `apply_plan` switches the module's class to
`RegularizedMultiheadAttention` (same parameters, so the same ``state_dict``), which computes
attention unfused with the projections regularized, only in training and only while one of
its regularizers is active; otherwise it is the stock module. `remove_plan` switches it back.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from search_space import layers as _layers

QKV_ATTR = "plan_qkv_regularizers"
_QKV = ("q", "k", "v")


class RegularizedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose q/k/v projections pass through regularizers.

    Never constructed: `apply_plan` switches an existing module's class to this one (the
    parameters, and so the state_dict, stay as they are) and `remove_plan` switches it back.
    In eval, or while no q/k/v regularizer is active, it is exactly the stock module (fused
    fast path included); otherwise it computes attention unfused with the same semantics
    (masks, dropout on the weights, need_weights) and the projections regularized.
    """

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        regs = self._modules.get(QKV_ATTR)
        if not self.training or regs is None or not any(_active(r) for r in regs.values()):
            return super().forward(
                query,
                key,
                value,
                key_padding_mask=key_padding_mask,
                need_weights=need_weights,
                attn_mask=attn_mask,
                average_attn_weights=average_attn_weights,
                is_causal=is_causal,
            )
        unbatched = query.dim() == 2
        if unbatched:
            bdim = 0 if self.batch_first else 1
            query, key, value = (t.unsqueeze(bdim) for t in (query, key, value))
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        out, weights = _regularized_attention(
            self, regs, query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
        )
        if not self.batch_first:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(0 if self.batch_first else 1)
            weights = None if weights is None else weights.squeeze(0)
        return out, weights


def _active(reg: nn.Module) -> bool:
    layer = unwrap_regularizer(reg)
    return float(getattr(layer, type(layer).prob_attr, 1.0)) > 0.0


def _additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Bool masks (True = not allowed) as -inf additive masks; float masks unchanged."""
    if mask is None or mask.dtype != torch.bool:
        return None if mask is None else mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))


def _regularized_attention(
    m: nn.MultiheadAttention,
    regs: nn.ModuleDict,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    need_weights: bool,
    attn_mask: torch.Tensor | None,
    average_attn_weights: bool,
    is_causal: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Batch-first attention with regularized projections; inputs (B, T, E), (B, S, kdim/vdim)."""
    b, t, e = query.shape
    s, h = key.shape[1], m.num_heads
    d = e // h
    if m._qkv_same_embed_dim:
        weights = m.in_proj_weight.chunk(3)
    else:
        weights = (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)
    biases = m.in_proj_bias.chunk(3) if m.in_proj_bias is not None else (None, None, None)
    proj = {}
    for name, x, w, bias in zip(_QKV, (query, key, value), weights, biases):
        y = F.linear(x, w, bias)
        proj[name] = regs[name](y) if name in regs else y
    q, k, v = (proj[n].view(b, -1, h, d).transpose(1, 2) for n in _QKV)
    dtype = q.dtype
    mask = _additive_mask(attn_mask, dtype)
    if mask is not None and mask.dim() == 3:
        mask = mask.view(b, h, t, s)
    if mask is None and is_causal:
        mask = _additive_mask(torch.ones(t, s, dtype=torch.bool, device=q.device).triu(1), dtype)
    pad = _additive_mask(key_padding_mask, dtype)
    if pad is not None:
        pad = pad.view(b, 1, 1, s)
        mask = pad if mask is None else mask + pad
    dropout = m.dropout if m.training else 0.0
    if need_weights:
        scores = q @ k.transpose(-2, -1) / math.sqrt(d)
        if mask is not None:
            scores = scores + mask
        attn = scores.softmax(-1)
        out = F.dropout(attn, dropout, training=dropout > 0) @ v
        attn_weights: torch.Tensor | None = attn.mean(1) if average_attn_weights else attn
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        attn_weights = None
    out = F.linear(out.transpose(1, 2).reshape(b, t, e), m.out_proj.weight, m.out_proj.bias)
    return out, attn_weights


def _attach_qkv(mha: nn.MultiheadAttention, part: str, reg: nn.Module) -> None:
    holder = mha._modules.get(QKV_ATTR)
    if holder is None:
        holder = nn.ModuleDict()
        mha.add_module(QKV_ATTR, holder)
        mha.__class__ = RegularizedMultiheadAttention
    holder[part] = reg


def unwrap_regularizer(reg: nn.Module) -> nn.Module:
    """The regularizer layer itself, unwrapped from its LinearScheduler when ramped."""
    return reg.layer if isinstance(reg, _layers.LinearScheduler) else reg
