"""A text embedder made of the run's own transformer: what retrieval and the safety classifier read.

    embedder = Embedder(model_config, dim=256)   # the pretrained Transformer inside, plus a projection
    vectors = embedder.encode(tokens, lengths)    # (N, dim), unit length: cosine similarity = dot product
    loss = embedder(tokens, lengths)              # the contrastive loss of a batch of pairs

Pooling is the mean of the final hidden states over the text's tokens. The model is causal, so
position t has seen tokens 0..t: the mean gives every part of the text a say, where the last
hidden state alone would lean on its end. Rows are padded on the right, after the text, which
causal attention never lets the text see; the mean leaves the padding out.

A training batch holds B pairs of texts that belong together: the B first texts, then their B
partners. Each first text must pick its partner out of all B partners (the other B - 1 are
in-batch negatives) and each partner its first text: cross-entropy over the cosine similarities
divided by TEMPERATURE, both ways (InfoNCE, as in CLIP and the E5/GTE embedders). The output
layer is not used; untied, it is frozen so that the optimizer and DDP leave it alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ownllm.model.config import ModelConfig
from ownllm.model.transformer import Transformer

TEMPERATURE = 0.05  # a sharp softmax over similarities; the usual value for in-batch negatives


class Embedder(nn.Module):
    def __init__(self, config: ModelConfig, dim: int = 256):
        super().__init__()
        self.transformer = Transformer(config)
        self.project = nn.Linear(config.d_model, dim, bias=False)
        self.dim = dim
        if self.transformer.lm_head is not None:
            self.transformer.lm_head.requires_grad_(False)

    # What the training loop asks of a model (train/trainer.py), answered by the transformer inside.
    @property
    def config(self) -> ModelConfig:
        return self.transformer.config

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.blocks

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def flops_per_token(self, seq_len: int) -> float:
        """The transformer's training FLOPs per token without its output layer, plus the projection's."""
        c = self.config
        return self.transformer.flops_per_token(seq_len) - 6 * c.vocab_size * c.d_model + 6 * c.d_model * self.dim

    def encode(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Unit vectors (N, dim) for N texts: tokens (N, T) padded on the right, lengths (N,) of each text."""
        hidden = self.transformer.hidden_states(tokens)  # (N, T, d_model)
        mask = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths[:, None]
        mean = (hidden * mask[..., None]).sum(1) / lengths.clamp(min=1)[:, None]
        return F.normalize(self.project(mean).float(), dim=-1)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The contrastive loss of 2B rows: B texts, then their B partners in the same order."""
        half = tokens.shape[0] // 2  # each half cut to its own longest text: short questions, long passages
        first, second = (
            self.encode(tokens[rows, : int(lengths[rows].max())], lengths[rows])
            for rows in (slice(None, half), slice(half, None))
        )
        logits = first @ second.T / TEMPERATURE  # (B, B): row i's partner is column i
        labels = torch.arange(first.shape[0], device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
