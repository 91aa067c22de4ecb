"""Our own decoder-only transformer, Llama-style: RMSNorm, rotary positions, SwiGLU, no biases.

Read in this order: config.py (the shape of a model), layers.py (norm, rotary, MLP),
attention.py (causal self-attention), kv_cache.py (what generation remembers),
transformer.py (blocks and the whole model), loss.py (the fused output layer and loss).
"""

from ownllm.model.config import ModelConfig
from ownllm.model.transformer import Transformer

__all__ = ["ModelConfig", "Transformer"]
