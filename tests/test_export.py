"""`ownllm export`: the Hugging Face directory loaded by transformers itself (token ids, logits, chat
template and greedy generation against ours, for the base and the chat model), the GGUF file read
back with the gguf package's reader, the Ollama Modelfile, and bad input."""

from __future__ import annotations

import json
import shutil

import gguf
import numpy as np
import pytest
import torch

from helpers.runs import ownllm_here
from ownllm.chatformat.template import ChatTemplate
from ownllm.export.gguf_file import dequantized_model
from ownllm.export.hf_tokenizer import merge_list
from ownllm.inference.engine import Engine, SamplingParams
from ownllm.run import RunDir
from ownllm.run.models import resolve_model
from ownllm.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = [
    "Once upon a time, there was a little girl named Lily. She loved her cat.",
    "emoji 😀👍🏽🇫🇷 and CJK 你好世界 こんにちは 안녕하세요",
    "combining: e\u0301 n\u0303 a\u0308; precomposed: é ñ ä",
    "  runs   of\tspaces\t\t and\n\n\nnewlines \r\n end  ",
    "digits 1234567 3.14159 -42 1,000,000",
    "don't I'll we've THEY'RE it's",
    "<|user|> text that looks like <|endoftext|> special tokens <|reserved_3|>",
    "",
    "\n",
    "x" * 300,
]
CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "You are Ada."},
        {"role": "user", "content": "What is 12 * 7?"},
        {"role": "assistant", "content": "", "tool_call": {"name": "calculator", "arguments": "12 * 7"}},
        {"role": "tool", "content": "84"},
        {"role": "assistant", "content": "It is 84."},
        {"role": "user", "content": "Tell me a story about a cat 😀"},
    ],
    [
        {"role": "user", "content": "Compute"},
        {"role": "assistant", "content": "Sure ", "tool_call": {"name": "", "arguments": "not a call"}},
        {"role": "tool", "content": "error: a tool call must look like calculator(EXPRESSION)"},
    ],
]


@pytest.fixture(scope="module")
def run(chat_run):
    """A run with a base model and a chat model (conftest's chat_run)."""
    return chat_run


@pytest.fixture(scope="module", params=["sft", "pretrain"])
def exported(request, run, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / request.param
    status, err = ownllm_here(None, "export", "--run", run, "--format", "hf", "--out", out, "--stage", request.param)
    assert status == 0, err
    resolved = resolve_model(RunDir.open(run, create=False), request.param)
    return request.param, out, resolved.load("cpu"), Tokenizer.load(run / "tokenizer")


def test_the_hf_tokenizer_gives_our_ids(exported):
    _, out, _, tokenizer = exported
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    for text in TEXTS:  # special-token text as plain characters (split_special_tokens), as encode_ordinary does
        ids = theirs(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        assert ids == tokenizer.encode_ordinary(text), text
        assert theirs.decode(tokenizer.encode_ordinary(text)) == text


def test_the_hf_model_computes_our_logits_and_greedy_text(exported):
    stage, out, model, tokenizer = exported
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = tokenizer.encode_ordinary(TEXTS[0] + " " + TEXTS[1])
    with torch.no_grad():
        ours_logits = model(torch.tensor([ids])).float()
        their_logits = theirs(torch.tensor([ids])).logits.float()
    assert torch.allclose(ours_logits, their_logits, atol=1e-4, rtol=1e-4)
    prompt = tokenizer.encode_ordinary("Once upon a time")
    engine = Engine(model, tokenizer, max_slots=1, stop_ids=frozenset())
    try:
        ours = engine.generate(prompt, SamplingParams(max_tokens=64, temperature=0)).ids
    finally:
        engine.close()
    generated = theirs.generate(torch.tensor([prompt]), max_new_tokens=64, do_sample=False, eos_token_id=None)
    assert generated[0, len(prompt) :].tolist() == ours


def test_apply_chat_template_gives_our_ids(exported):
    stage, out, _, tokenizer = exported
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    template = ChatTemplate(tokenizer)
    for conversation in CONVERSATIONS:
        ids = theirs.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        assert list(ids) == template.render_prompt(conversation)
    config = json.loads((out / "generation_config.json").read_text())
    stops = [tokenizer.special_tokens["<|end_of_turn|>"]] if stage == "sft" else []
    assert config["eos_token_id"] == [*stops, tokenizer.eot_id]
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n") and "# Model card:" in card


@pytest.mark.parametrize("quantize", ["f32", "q8_0"])
def test_the_gguf_file_reads_back(run, tmp_path, quantize):
    path = tmp_path / "model.gguf"
    status, err = ownllm_here(None, "export", "--run", run, "--format", "gguf", "--out", path, "--quantize", quantize)
    assert status == 0, err
    tokenizer = Tokenizer.load(run / "tokenizer")
    resolved = resolve_model(RunDir.open(run, create=False))
    model = resolved.load("cpu")
    reader = gguf.GGUFReader(path)

    def field(name):
        f = reader.fields[name]
        return f.contents()

    assert field("general.architecture") == "llama" and field("tokenizer.ggml.model") == "gpt2"
    assert field("tokenizer.ggml.pre") == "llama-bpe"
    assert field("llama.block_count") == model.config.n_layers
    assert field("llama.embedding_length") == model.config.d_model
    tokens = field("tokenizer.ggml.tokens")
    assert len(tokens) == model.config.vocab_size and tokens[tokenizer.eot_id] == "<|endoftext|>"
    assert field("tokenizer.ggml.merges") == [f"{a} {b}" for a, b in merge_list(tokenizer)]
    assert field("tokenizer.ggml.eos_token_id") == tokenizer.special_tokens["<|end_of_turn|>"]
    assert "<|tool_call|>" in field("tokenizer.chat_template")
    by_name = {t.name: t for t in reader.tensors}
    assert len(by_name) == 2 + 9 * model.config.n_layers + (0 if model.config.tie_embeddings else 1)
    q = by_name["blk.0.attn_q.weight"]
    kind = gguf.GGMLQuantizationType.Q8_0 if quantize == "q8_0" else gguf.GGMLQuantizationType.F32
    assert q.tensor_type == kind and by_name["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    ours = model.state_dict()["blocks.0.attn.qkv.weight"][: model.config.n_heads * model.config.head_dim].numpy()
    stored = gguf.quants.dequantize(q.data, q.tensor_type).reshape(ours.shape)
    assert np.allclose(stored, ours, atol=0 if quantize == "f32" else np.abs(ours).max() / 100)


def test_q8_0_costs_little_on_the_validation_text(run):
    """The weights q8_0 stores, put back into our model: next-token log-probabilities barely move."""
    resolved = resolve_model(RunDir.open(run, create=False), "pretrain")
    exact, quantized = resolved.load("cpu"), dequantized_model(resolved, "q8_0")
    ids = torch.tensor([Tokenizer.load(run / "tokenizer").encode_ordinary(TEXTS[0] * 3)])
    with torch.no_grad():
        a = torch.log_softmax(exact(ids).float(), -1)
        b = torch.log_softmax(quantized(ids).float(), -1)
    assert 0 < (a - b).abs().max() < 0.05


def test_ollama_gets_the_gguf_and_a_modelfile(run, tmp_path):
    out = tmp_path / "ollama"
    status, err = ownllm_here(None, "export", "--run", run, "--format", "ollama", "--out", out)
    assert status == 0, err
    files = sorted(p.name for p in out.iterdir())
    assert files == ["Modelfile", "run-f32.gguf"]
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./run-f32.gguf\n") and 'PARAMETER stop "<|end_of_turn|>"' in modelfile
    assert "<|assistant|>" in modelfile


def test_bad_exports_are_refused_and_write_nothing(run, tmp_path, capsys):
    empty = tmp_path / "empty-run"
    shutil.copytree(run, empty, ignore=shutil.ignore_patterns("checkpoints"))
    status, err = ownllm_here(capsys, "export", "--run", empty, "--format", "hf", "--out", tmp_path / "a")
    assert status == 2 and err.count("\n") == 1 and not (tmp_path / "a").exists()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    status, err = ownllm_here(capsys, "export", "--run", run, "--format", "hf", "--out", taken)
    assert status == 2 and "--force" in err and [p.name for p in taken.iterdir()] == ["keep.txt"]
    status, err = ownllm_here(
        capsys, "export", "--run", run, "--format", "hf", "--out", tmp_path / "b", "--quantize", "q8_0"
    )
    assert status == 2 and "--quantize" in err
    status, err = ownllm_here(capsys, "export", "--run", run, "--format", "gguf", "--out", taken, "--force")
    assert status == 0, err
    assert taken.is_file() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no leftovers


def test_the_exported_config_is_what_vllms_llama_loader_reads(exported):
    """vLLM (GPU servers) cannot run here: check what its Llama loader reads from the directory."""
    _, out, model, _ = exported
    config = transformers.AutoConfig.from_pretrained(out)
    assert config.architectures == ["LlamaForCausalLM"] and config.model_type == "llama"
    assert config.max_position_embeddings == model.config.max_seq_len and config.head_dim == model.config.head_dim
    assert config.rope_parameters["rope_type"] == "default" and config.num_key_value_heads == model.config.kv_heads
    assert {"tokenizer.json", "tokenizer_config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}


def test_a_shape_a_format_cannot_express_is_refused(tokenizer_run, tmp_path, capsys):
    run = tmp_path / "qk"
    shutil.copytree(tokenizer_run, run)
    settings = ["--preset", "tiny", "--set", "steps=1", "--set", "threads=1", "--set", "sample_every=0"]
    status, err = ownllm_here(capsys, "pretrain", "--run", run, *settings, "--set", "model.qk_norm=true")
    assert status == 0, err
    for fmt, out in (("hf", tmp_path / "hf"), ("gguf", tmp_path / "m.gguf")):
        status, err = ownllm_here(capsys, "export", "--run", run, "--format", fmt, "--out", out)
        assert status == 2 and "QK-norm" in err and err.count("\n") == 1 and not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
