"""Our own decoder-only transformer, Llama-style: RMSNorm, rotary positions, SwiGLU, no biases.

Read in this order: config.py (the shape of a model), layers.py (norm, rotary, MLP),
attention.py (causal self-attention), transformer.py (blocks and the whole model).
"""

from ownllm.model.config import ModelConfig
from ownllm.model.transformer import Transformer

__all__ = ["ModelConfig", "Transformer"]
