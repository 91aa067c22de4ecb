"""`ownllm export --format gguf`: one GGUF file for llama.cpp and Ollama, written with the `gguf` package.

The architecture is `llama` (our blocks are Llama's: RMSNorm, rotary, SwiGLU, no biases).
GGUF keeps Meta's rotary layout, rotating interleaved pairs, which is ours: query and key
rows are written as they are (Hugging Face's layout needs them reordered, GGUF does not).
The tokenizer is a byte-level BPE (`tokenizer.ggml.model = gpt2`) with our vocabulary, the
merge list of hf_tokenizer.py and llama.cpp's `llama-bpe` pre-tokeniser (Llama 3's split,
which cuts text as our GPT-4 pattern does); special tokens are control tokens; the chat
template is chat_template.py's.

`quantize="q8_0"` stores every matrix in 8-bit blocks of 32 (norms stay float32);
`quantization_cost` measures what that does to bits per byte on the validation split.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch

from ownllm.core.errors import UserError
from ownllm.export.chat_template import CHAT_TEMPLATE
from ownllm.export.hf import stop_ids
from ownllm.export.hf_tokenizer import merge_list, vocabulary
from ownllm.model import ModelConfig
from ownllm.run.checkpoints import load_model
from ownllm.run.models import ResolvedModel
from ownllm.tokenizer import ENDOFTEXT, Tokenizer

QUANTIZATIONS = {"f32": gguf.GGMLQuantizationType.F32, "q8_0": gguf.GGMLQuantizationType.Q8_0}
PRE_TOKENIZERS = {"gpt4": "llama-bpe"}  # our split pattern -> llama.cpp's pre-tokeniser that cuts the same way


def tensors(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, np.ndarray]:
    """Our weights under llama.cpp's tensor names, float32."""
    c = config
    q_size, kv_size = c.n_heads * c.head_dim, c.kv_heads * c.head_dim

    def array(t: torch.Tensor) -> np.ndarray:
        return t.detach().float().contiguous().numpy()

    out = {"token_embd.weight": array(state["embed.weight"]), "output_norm.weight": array(state["norm.weight"])}
    if not c.tie_embeddings:
        out["output.weight"] = array(state["lm_head.weight"])
    for i in range(c.n_layers):
        ours, theirs = f"blocks.{i}.", f"blk.{i}."
        q, k, v = state[ours + "attn.qkv.weight"].split((q_size, kv_size, kv_size))
        out |= {
            theirs + "attn_norm.weight": array(state[ours + "attn_norm.weight"]),
            theirs + "attn_q.weight": array(q),
            theirs + "attn_k.weight": array(k),
            theirs + "attn_v.weight": array(v),
            theirs + "attn_output.weight": array(state[ours + "attn.out.weight"]),
            theirs + "ffn_norm.weight": array(state[ours + "mlp_norm.weight"]),
            theirs + "ffn_gate.weight": array(state[ours + "mlp.gate.weight"]),
            theirs + "ffn_up.weight": array(state[ours + "mlp.up.weight"]),
            theirs + "ffn_down.weight": array(state[ours + "mlp.down.weight"]),
        }
    return out


def check_exportable(config: ModelConfig, tokenizer: Tokenizer, quantize: str) -> None:
    if config.qk_norm:
        raise UserError("llama.cpp's llama architecture has no QK-norm; a model with qk_norm=true cannot be exported")
    if tokenizer.pattern_name not in PRE_TOKENIZERS:
        raise UserError(
            f"the tokenizer's split pattern {tokenizer.pattern_name!r} has no llama.cpp pre-tokeniser that cuts text "
            f"the same way (only {', '.join(PRE_TOKENIZERS)} does); retrain the tokenizer with --pattern gpt4"
        )
    if quantize not in QUANTIZATIONS:
        raise UserError(f"--quantize {quantize!r} is not one of {', '.join(QUANTIZATIONS)}")
    if quantize == "q8_0" and (config.d_model % 32 or config.hidden_dim % 32):
        raise UserError(
            f"q8_0 needs widths that are multiples of 32 (d_model {config.d_model}, hidden {config.hidden_dim})"
        )


def quantized(array: np.ndarray, quantize: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    kind = QUANTIZATIONS[quantize]
    if array.ndim < 2 or kind == gguf.GGMLQuantizationType.F32:
        return array, gguf.GGMLQuantizationType.F32
    return gguf.quants.quantize(array, kind), kind


def write_gguf(tokenizer: Tokenizer, model: ResolvedModel, path: Path, name: str, quantize: str = "f32") -> None:
    config = ModelConfig.from_dict(model.state["model_config"])
    check_exportable(config, tokenizer, quantize)
    state = load_model(model.path, torch.device("cpu"))[0].state_dict()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_description(
        f"trained from scratch with ownllm ({model.stage or 'checkpoint'} step {model.state.get('step')})"
    )
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quantize == "q8_0" else gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.d_model)
    writer.add_block_count(config.n_layers)
    writer.add_feed_forward_length(config.hidden_dim)
    writer.add_head_count(config.n_heads)
    writer.add_head_count_kv(config.kv_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_vocab_size(config.vocab_size)

    words = vocabulary(tokenizer)
    words += [f"<|padding_{i}|>" for i in range(len(words), config.vocab_size)]  # rows past the tokenizer's
    control = set(tokenizer.special_tokens.values()) | set(range(tokenizer.vocab_size, config.vocab_size))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZERS[tokenizer.pattern_name])
    writer.add_token_list(words)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if i in control else gguf.TokenType.NORMAL for i in range(len(words))]
    )
    writer.add_token_merges([f"{left} {right}" for left, right in merge_list(tokenizer)])
    chat = model.stage == "sft"
    eos = stop_ids(tokenizer, chat)
    writer.add_bos_token_id(tokenizer.special_tokens[ENDOFTEXT])
    writer.add_eos_token_id(eos[0])
    if chat:
        writer.add_eot_token_id(eos[0])
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    for tensor_name, array in tensors(state, config).items():
        data, kind = quantized(array, quantize)  # q8_0: bytes, from whose row length gguf infers the shape
        writer.add_tensor(tensor_name, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def dequantized_model(model: ResolvedModel, quantize: str):
    """The model with every matrix replaced by what `quantize` stores of it (to measure the cost on our side)."""
    net = load_model(model.path, torch.device("cpu"))[0]
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 2 and quantize != "f32":
                blocks = gguf.quants.quantize(p.float().numpy(), QUANTIZATIONS[quantize])
                p.copy_(torch.from_numpy(gguf.quants.dequantize(blocks, QUANTIZATIONS[quantize]).reshape(p.shape)))
    return net
