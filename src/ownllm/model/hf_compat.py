"""Our weights under Hugging Face Llama's names, so that its LlamaForCausalLM computes the same function.

Used to check our model against an independent implementation (tests, benchmarks) and as
the core of exporting a trained model. No Hugging Face import here: plain tensors and dicts.
"""

from __future__ import annotations

import torch

from ownllm.core.errors import UserError
from ownllm.model.config import ModelConfig


def hf_llama_config(config: ModelConfig) -> dict:
    """Keyword arguments for transformers.LlamaConfig describing the same architecture."""
    if config.qk_norm:
        raise UserError("Hugging Face Llama has no QK-norm; a model trained with qk_norm=true cannot be exported to it")
    return {
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "tie_word_embeddings": config.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
    }


def to_hf_llama_state_dict(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename, split the fused query/key/value matrix, and reorder query/key rows to Hugging Face's rotary layout."""
    c = config
    q_size, kv_size = c.n_heads * c.head_dim, c.kv_heads * c.head_dim
    out = {"model.embed_tokens.weight": state["embed.weight"], "model.norm.weight": state["norm.weight"]}
    if not c.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    for i in range(c.n_layers):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        q, k, v = state[ours + "attn.qkv.weight"].split((q_size, kv_size, kv_size))
        out |= {
            theirs + "input_layernorm.weight": state[ours + "attn_norm.weight"],
            theirs + "self_attn.q_proj.weight": _pairs_to_halves(q, c.n_heads),
            theirs + "self_attn.k_proj.weight": _pairs_to_halves(k, c.kv_heads),
            theirs + "self_attn.v_proj.weight": v,
            theirs + "self_attn.o_proj.weight": state[ours + "attn.out.weight"],
            theirs + "post_attention_layernorm.weight": state[ours + "mlp_norm.weight"],
            theirs + "mlp.gate_proj.weight": state[ours + "mlp.gate.weight"],
            theirs + "mlp.up_proj.weight": state[ours + "mlp.up.weight"],
            theirs + "mlp.down_proj.weight": state[ours + "mlp.down.weight"],
        }
    return {name: t.contiguous() for name, t in out.items()}


def _pairs_to_halves(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Within each head, rows (2i, 2i+1) -> rows (i, i + head_dim/2): adjacent rotary pairs to split halves."""
    rows, cols = weight.shape
    head_dim = rows // heads
    return weight.view(heads, head_dim // 2, 2, cols).transpose(1, 2).reshape(rows, cols)
