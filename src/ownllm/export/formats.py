"""The export formats: what each writes, and how a person then uses it.

hf      a directory: hf.py
gguf    one file: gguf_file.py
ollama  a directory holding the GGUF file and a Modelfile with our template and stop tokens
"""

from __future__ import annotations

from pathlib import Path

from ownllm.core.errors import UserError
from ownllm.eval.evaluate import val_task
from ownllm.export.gguf_file import dequantized_model, write_gguf
from ownllm.export.hf import write_hf
from ownllm.run import RunDir
from ownllm.run.models import ResolvedModel
from ownllm.run.token_shards import open_tokens
from ownllm.tokenizer import Tokenizer

# Ollama's Go template for our chat format (its own template language, not Jinja).
OLLAMA_TEMPLATE = (
    "{{- range .Messages }}"
    '{{- if eq .Role "system" }}<|system|>{{ .Content }}<|end_of_turn|>'
    '{{- else if eq .Role "user" }}<|user|>{{ .Content }}<|end_of_turn|>'
    '{{- else if eq .Role "assistant" }}<|assistant|>{{ .Content }}<|end_of_turn|>'
    '{{- else if eq .Role "tool" }}<|tool_result|>{{ .Content }}<|end_of_turn|>'
    "{{- end }}"
    "{{- end }}<|assistant|>"
)


def export(fmt: str, run: RunDir, model: ResolvedModel, scratch: Path, name: str, quantize: str) -> Path:
    """Write format `fmt` under `scratch` and return what was made (a file or a directory) for the caller to move."""
    if fmt == "hf":
        made = scratch / name
        made.mkdir()
        write_hf(run, model, made)
        return made
    tokenizer = Tokenizer.load(run.tokenizer)
    if fmt == "gguf":
        made = scratch / name
        write_gguf(tokenizer, model, made, run.root.name, quantize)
        return made
    made = scratch / name
    made.mkdir()
    gguf_name = f"{run.root.name}-{quantize}.gguf"
    write_gguf(tokenizer, model, made / gguf_name, run.root.name, quantize)
    (made / "Modelfile").write_text(modelfile(gguf_name, model.stage == "sft"), encoding="utf-8")
    return made


def quantization_cost(run: RunDir, model: ResolvedModel, quantize: str, windows: int = 64) -> str:
    """One line: bits per byte on the validation split, the exact weights against what `quantize` keeps of them."""
    try:
        split = open_tokens(run.tokens, run.tokenizer, run.corpus).split("val")
    except UserError as e:
        return f"the cost of {quantize} was not measured: {e}"
    exact = val_task(model.load("cpu"), split, 16, windows)
    rounded = val_task(dequantized_model(model, quantize), split, 16, windows)
    a, b = exact["metrics"]["bits_per_byte"], rounded["metrics"]["bits_per_byte"]
    return (
        f"{quantize} on the validation split ({exact['items']:,} tokens): {b:.5f} bits per byte against "
        f"{a:.5f} for float32 ({b - a:+.5f}, {100 * (b - a) / a:+.3f}%)"
    )


def modelfile(gguf_name: str, chat: bool) -> str:
    """An Ollama Modelfile: the weights, our template, our stop tokens and the chat command's sampling."""
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{OLLAMA_TEMPLATE}"""' if chat else 'TEMPLATE """{{ .Prompt }}"""']
    stops = ["<|end_of_turn|>", "<|endoftext|>", "<|user|>", "<|system|>"] if chat else ["<|endoftext|>"]
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    lines += ["PARAMETER temperature 0.8", "PARAMETER top_k 50"]
    return "\n".join(lines) + "\n"


def how_to_use(fmt: str, out: Path) -> list[str]:
    if fmt == "hf":
        return [
            "load it:  AutoModelForCausalLM.from_pretrained(OUT), AutoTokenizer.from_pretrained(OUT)".replace(
                "OUT", repr(str(out))
            ),
            f"serve it: vllm serve {out}",
        ]
    if fmt == "gguf":
        return [f"run it:   llama-cli -m {out} -cnv    (or llama-server -m {out})"]
    return [f"create it: cd {out} && ollama create mine -f Modelfile && ollama run mine"]
