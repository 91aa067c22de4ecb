"""The whole model: token embedding -> n_layers pre-norm blocks -> final norm -> logits over the vocabulary.

Shapes: idx (B, T) token ids -> x (B, T, d_model) through every block -> logits (B, T, vocab_size).
Logit t predicts token t + 1 and depends only on tokens 0..t.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ownllm.model.attention import CausalSelfAttention
from ownllm.model.config import ModelConfig
from ownllm.model.kv_cache import CacheView
from ownllm.model.layers import RMSNorm, SwiGLU, rotary_tables
from ownllm.model.loss import linear_cross_entropy


class Block(nn.Module):
    """Pre-norm residual block: x + attention(norm(x)), then x + mlp(norm(x)).

    Normalising the input of each branch, not the residual stream, keeps a clean path for
    gradients from the loss to the embeddings: deep stacks train without warm-up tricks.
    """

    def __init__(self, config: ModelConfig, layer: int = 0):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = CausalSelfAttention(config, layer)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config.d_model, config.hidden_dim, config.dropout)

    def forward(self, x: torch.Tensor, rotation: torch.Tensor, cache: CacheView | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rotation, cache)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    rotation: torch.Tensor  # a buffer (register_buffer below); declared for the type checker

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config.validate()
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        # Tied embeddings: the output layer is the embedding matrix itself (fewer parameters, no lm_head).
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)
        rotation = rotary_tables(config.head_dim, config.max_seq_len, config.rope_theta)
        self.register_buffer("rotation", rotation, persistent=False)  # derived from the config: not saved
        self.grad_checkpointing = False  # recompute block activations in backward: less memory, ~30% more compute
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        """Small normal weights; the projections that write into the residual stream are scaled by
        1/sqrt(2 * n_layers) so the stream's variance does not grow with depth (GPT-2's rule)."""
        residual_std = std / math.sqrt(2 * self.config.n_layers)
        for name, p in self.named_parameters():
            if p.dim() == 1:  # norm gains
                nn.init.ones_(p)
            elif name.endswith(("attn.out.weight", "mlp.down.weight")):
                nn.init.normal_(p, mean=0.0, std=residual_std)
            else:
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: CacheView | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) for idx (B, T); with targets (B, T), the mean cross-entropy loss instead.

        With a KV cache view (generation) idx holds the new tokens of each row, at the view's
        positions, and attends to the row's cached ones too. last_only: logits of the last
        position only, (B, 1, vocab): all that sampling the next token needs.
        """
        x = self.hidden_states(idx, cache, last_only)
        out_weight = self.lm_head.weight if self.lm_head is not None else self.embed.weight
        if targets is None:
            return F.linear(x, out_weight)
        return linear_cross_entropy(x.view(-1, x.shape[-1]), out_weight, targets.reshape(-1))

    def hidden_states(self, idx: torch.Tensor, cache: CacheView | None = None, last_only: bool = False) -> torch.Tensor:
        """The final norm's output (B, T, d_model): what the output layer reads, and what an embedder pools."""
        T = idx.shape[1]
        if cache is None:
            if self.config.max_seq_len < T:
                raise ValueError(f"sequence of {T} tokens exceeds max_seq_len={self.config.max_seq_len}")
            rotation = self.rotation[:T]
        else:
            rotation = self.rotation[cache.positions]  # (B, T, ...): each row at its own positions
        x = self.dropout(self.embed(idx))
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, rotation, use_reentrant=False)
            else:
                x = block(x, rotation, cache)
        if last_only:
            x = x[:, -1:]
        return self.norm(x)

    def num_params(self) -> int:
        """Every learned number (a tied embedding counted once)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        """Forward + backward FLOPs to train on one token with a context of seq_len.

        Each weight in a matrix product costs 2 FLOPs forward and 4 backward: 6 per weight
        (the embedding lookup is not a product, the output layer is, tied or not). Causal
        attention adds, per layer, about 2 * seq_len * d_model multiply-adds for scores and
        for the weighted sum, halved by the mask: 6 * n_layers * seq_len * d_model in all.
        """
        c = self.config
        matmul_weights = sum(p.numel() for n, p in self.named_parameters() if p.dim() == 2 and n != "embed.weight")
        if self.lm_head is None:
            matmul_weights += c.vocab_size * c.d_model
        attention = 6 * c.n_layers * seq_len * c.n_heads * c.head_dim
        return 6 * matmul_weights + attention
