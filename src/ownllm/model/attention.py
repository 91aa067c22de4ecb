"""Causal multi-head self-attention with rotary positions, grouped-query attention and optional QK-norm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ownllm.model.config import ModelConfig
from ownllm.model.kv_cache import CacheView
from ownllm.model.layers import RMSNorm, apply_rotary


class CausalSelfAttention(nn.Module):
    """Each position mixes the values of itself and earlier positions, weighted by query-key similarity.

    With grouped-query attention (n_kv_heads < n_heads) several query heads share one key/value
    head: a smaller KV cache at inference for almost the same quality.
    """

    def __init__(self, config: ModelConfig, layer: int = 0):
        super().__init__()
        self.layer = layer  # which of the KV cache's layers is this one's
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.kv_heads, config.head_dim
        q_size, kv_size = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.split_sizes = (q_size, kv_size, kv_size)
        # Queries, keys and values come from one matrix product, then split.
        self.qkv = nn.Linear(config.d_model, q_size + 2 * kv_size, bias=False)
        self.out = nn.Linear(q_size, config.d_model, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None
        self.dropout = config.dropout
        self.out_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rotation: torch.Tensor, cache: CacheView | None = None) -> torch.Tensor:
        B, T, _ = x.shape  # batch, time (sequence length), model width
        q, k, v = self.qkv(x).split(self.split_sizes, dim=-1)
        q = q.view(B, T, self.n_heads, self.head_dim)
        k = k.view(B, T, self.n_kv_heads, self.head_dim)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:  # both or neither (config.qk_norm)
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, rotation), apply_rotary(k, rotation)
        mask = None
        if cache is not None:  # generation: add this step's keys/values, attend to all of them so far
            k, v = cache.update(self.layer, k, v)
            mask = cache.mask
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, T, head_dim)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=cache is None,  # position t attends to positions <= t only (the cache's mask says the same)
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return self.out_dropout(self.out(y))
