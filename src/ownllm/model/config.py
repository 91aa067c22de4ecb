"""The shape of a model: a dataclass saved with every checkpoint, checked before any tensor exists."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ownllm.core.errors import UserError
from ownllm.core.settings import dataclass_from_dict


@dataclass
class ModelConfig:
    vocab_size: int = 8192
    n_layers: int = 4
    d_model: int = 256
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: one key/value head per query head; fewer: grouped-query attention
    ffn_hidden: int | None = None  # None: the Llama rule, about 8/3 * d_model rounded up to a multiple of 64
    max_seq_len: int = 512  # longest context the rotary tables cover
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False  # the output layer reuses the token embedding matrix
    qk_norm: bool = False  # RMSNorm on each head's queries and keys before rotary (stabilises high learning rates)
    dropout: float = 0.0

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def hidden_dim(self) -> int:
        if self.ffn_hidden:
            return self.ffn_hidden
        return _round_up(8 * self.d_model // 3, 64)

    def validate(self) -> ModelConfig:
        """Refuse, in one line each, the shapes that cannot work."""
        for name in ("vocab_size", "n_layers", "d_model", "n_heads", "max_seq_len"):
            if getattr(self, name) < 1:
                raise UserError(f"model {name}={getattr(self, name)} must be at least 1")
        if self.d_model % self.n_heads:
            raise UserError(
                f"model n_heads={self.n_heads} does not divide d_model={self.d_model}; "
                f"pick n_heads among {_divisors(self.d_model)}"
            )
        if self.head_dim % 2:
            raise UserError(
                f"head size d_model/n_heads={self.head_dim} is odd; rotary embeddings need an even head size"
            )
        if self.kv_heads < 1 or self.n_heads % self.kv_heads:
            raise UserError(
                f"model n_kv_heads={self.n_kv_heads} does not divide n_heads={self.n_heads}; "
                f"pick n_kv_heads among {_divisors(self.n_heads)}"
            )
        if self.ffn_hidden is not None and self.ffn_hidden < 1:
            raise UserError(f"model ffn_hidden={self.ffn_hidden} must be at least 1 (or unset for the Llama rule)")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"model dropout={self.dropout} must be in [0, 1)")
        if self.rope_theta <= 0 or self.norm_eps <= 0:
            raise UserError("model rope_theta and norm_eps must be positive")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return dataclass_from_dict(cls, d, "model").validate()


def _round_up(x: int, multiple: int) -> int:
    return (x + multiple - 1) // multiple * multiple


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
