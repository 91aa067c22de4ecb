"""`ownllm export --format hf`: a Hugging Face model directory that `transformers` loads offline.

    OUT/config.json              LlamaForCausalLM's configuration (model/hf_compat.py maps our shape)
    OUT/model.safetensors        the weights under Llama's names, query/key rows in its rotary order
    OUT/generation_config.json   our stop tokens and the chat command's sampling defaults
    OUT/tokenizer.json           our byte-level BPE for `tokenizers` (hf_tokenizer.py)
    OUT/tokenizer_config.json    special tokens and the chat template (chat_template.py)
    OUT/README.md                the model card, with the metadata the Hugging Face hub reads

A chat model stops at <|end_of_turn|> (and <|endoftext|>); when it writes <|tool_call|> and a
call, the caller runs the tool and appends a "tool" message, as `ownllm chat` does.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ownllm.eval.model_card import latest_eval, model_card
from ownllm.export.chat_template import CHAT_TEMPLATE
from ownllm.export.hf_tokenizer import tokenizer_json
from ownllm.model import ModelConfig
from ownllm.model.hf_compat import hf_llama_config, to_hf_llama_state_dict
from ownllm.run import RunDir
from ownllm.run.checkpoints import load_model
from ownllm.run.models import ResolvedModel
from ownllm.tokenizer import END_OF_TURN, ENDOFTEXT, Tokenizer

CHAT_SAMPLING = {"do_sample": True, "temperature": 0.8, "top_k": 50}  # `ownllm chat`'s defaults


def stop_ids(tokenizer: Tokenizer, chat: bool) -> list[int]:
    ids = [tokenizer.special_tokens[ENDOFTEXT]]
    return [tokenizer.special_tokens[END_OF_TURN], *ids] if chat else ids


def write_hf(run: RunDir, model: ResolvedModel, out: Path) -> None:
    """Write the directory's files into `out` (an empty directory)."""
    config = ModelConfig.from_dict(model.state["model_config"])
    tokenizer = Tokenizer.load(run.tokenizer)
    chat = model.stage == "sft"
    eos = stop_ids(tokenizer, chat)
    weights = load_model(model.path, torch.device("cpu"))[0].state_dict()
    tensors = to_hf_llama_state_dict({k: v.float() for k, v in weights.items()}, config)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    _json(
        out / "config.json",
        {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            **hf_llama_config(config),
            "bos_token_id": tokenizer.special_tokens[ENDOFTEXT],
            "eos_token_id": eos[0] if len(eos) == 1 else eos,
            "torch_dtype": "float32",
            "use_cache": True,
        },
    )
    _json(
        out / "generation_config.json",
        {"bos_token_id": tokenizer.special_tokens[ENDOFTEXT], "eos_token_id": eos, **CHAT_SAMPLING},
    )
    _json(out / "tokenizer.json", tokenizer_json(tokenizer))
    _json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": config.max_seq_len,
            "bos_token": ENDOFTEXT,
            "eos_token": END_OF_TURN if chat else ENDOFTEXT,
            "pad_token": ENDOFTEXT,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "chat_template": CHAT_TEMPLATE,
        },
    )
    (out / "README.md").write_text(_front_matter(run, model) + model_card(run, model), encoding="utf-8")


def _front_matter(run: RunDir, model: ResolvedModel) -> str:
    """The YAML block the Hugging Face hub reads: licence, library, task, tags, evaluation results."""
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "license: other",
        "license_name: see-the-training-data",
        "tags: [ownllm, llama, trained-from-scratch]",
    ]
    results = latest_eval(run, model)
    if results:
        rows = [
            (task, metric, value)
            for task, r in results["tasks"].items()
            for metric, value in r["metrics"].items()
            if task in ("hellaswag", "arc_easy", "arc_challenge", "piqa", "blimp", "squad")
        ]
        if rows:
            lines += ["model-index:", f"- name: {run.root.name}", "  results:"]
            for task, metric, value in rows:
                lines += [
                    "  - task: {type: text-generation}",
                    f"    dataset: {{name: {task}, type: {task}}}",
                    f"    metrics: [{{type: {metric}, value: {value:.4f}}}]",
                ]
    return "\n".join([*lines, "---", ""]) + "\n"


def _json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
