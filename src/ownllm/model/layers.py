"""The small pieces of a Llama-style block: RMSNorm, rotary position embeddings, the SwiGLU MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Scale each vector to unit root-mean-square, then by a learned gain (no mean, no bias: cheaper than LayerNorm)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rotary_tables(head_dim: int, max_seq_len: int, theta: float) -> torch.Tensor:
    """cos and sin of every (position, pair) angle, shape (max_seq_len, head_dim / 2, 2).

    Pair i of a head's vector (dimensions 2i and 2i + 1) turns by angle
    position * theta^(-2i / head_dim): fast for the first pairs, slow for the last.
    (Stored as real numbers, not complex ones, so that model.to(dtype) cannot drop a part.)
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
    return torch.stack((angles.cos(), angles.sin()), dim=-1)


def apply_rotary(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate each pair of x (B, T, heads, head_dim) by its position's angle.

    rotation is (T, head_dim / 2, 2) when every row has the same positions, or
    (B, T, head_dim / 2, 2) when each row has its own (batched generation from a KV cache).

    After rotation the dot product of a query at position m and a key at position n depends
    only on m - n: attention sees relative positions. A pair (a, b) is the complex number
    a + ib and rotating it is multiplying by cos + i sin, which PyTorch runs as one fast
    kernel. This is Meta's Llama layout (pairs are adjacent dimensions); Hugging Face's
    Llama pairs dimension i with i + head_dim/2, so exporting there permutes the rows of the
    query and key weights (see hf_compat.py).
    """
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    rotation = rotation.float().unsqueeze(-3)  # broadcast over heads
    # The compiler generates no complex-number code; it gets the same arithmetic on reals.
    rotate = _rotate_real if torch.compiler.is_compiling() else _rotate_complex
    return rotate(pairs, rotation).flatten(-2).type_as(x)


def _rotate_complex(pairs: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(torch.view_as_complex(pairs) * torch.view_as_complex(rotation))


def _rotate_real(pairs: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """(a, b) -> (a cos - b sin, b cos + a sin), written as pairs * (cos, cos) + (b, a) * (-sin, sin):
    plain element-wise work with no unbind/stack (which compiled to a pick by parity). On an H200
    the fused rotary backward ran 11% faster, the whole step 1.008x (docs/benchmarks.md, GPU)."""
    cos, sin = rotation.unbind(-1)
    return pairs * torch.stack((cos, cos), dim=-1) + pairs.flip(-1) * torch.stack((-sin, sin), dim=-1)


class SwiGLU(nn.Module):
    """The MLP: down(silu(gate(x)) * up(x)). The gate lets each hidden unit switch its input on or off.

    (gate and up could be one matrix of 2 * hidden outputs, split afterwards; on CPU that
    measured slower, as the split halves are strided and their gradients need a concatenation.)
    """

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.silu(self.gate(x)) * self.up(x)))
