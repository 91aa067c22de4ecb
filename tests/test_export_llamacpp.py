"""The exported GGUF file in llama.cpp itself (llama-cpp-python, built from source: slow, and skipped where
it is not installed; `pip install llama-cpp-python==0.3.36` builds it in minutes): the same token ids,
next-token logits within a tolerance, the same greedy continuation, and the chat template giving our
prompt ids."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from helpers.runs import ownllm_here
from ownllm.chatformat.template import ChatTemplate
from ownllm.inference.engine import Engine, SamplingParams
from ownllm.run import RunDir
from ownllm.run.models import resolve_model
from ownllm.tokenizer import Tokenizer

pytestmark = pytest.mark.slow
llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (a slow build from source)")

TEXTS = [
    "Once upon a time, there was a little girl named Lily. She loved her cat.",
    "emoji 😀👍🏽 and CJK 你好世界 こんにちは; combining e\u0301 n\u0303; precomposed é ñ",
    "  runs   of\tspaces\t\t and\n\n\nnewlines \r\n end  ",
    "digits 1234567 3.14159 -42 1,000,000 don't I'll THEY'RE",
]


@pytest.fixture(scope="module")
def exported(chat_run, tmp_path_factory):
    run = chat_run
    path = tmp_path_factory.mktemp("gguf") / "model.gguf"
    status, err = ownllm_here(None, "export", "--run", run, "--format", "gguf", "--out", path)
    assert status == 0, err
    model = resolve_model(RunDir.open(run, create=False)).load("cpu")
    llm = llama_cpp.Llama(str(path), n_ctx=model.config.max_seq_len, n_threads=1, logits_all=True, verbose=False)
    return llm, model, Tokenizer.load(run / "tokenizer")


def test_llama_cpp_tokenizes_as_we_do(exported):
    llm, _, tokenizer = exported
    for text in TEXTS:
        assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) == tokenizer.encode_ordinary(text)
        assert llm.detokenize(tokenizer.encode_ordinary(text)).decode("utf-8") == text


def test_llama_cpp_computes_our_logits_and_greedy_text(exported):
    llm, model, tokenizer = exported
    ids = tokenizer.encode_ordinary(TEXTS[0])
    llm.reset()
    llm.eval(ids)
    theirs = np.array(llm.scores[: len(ids)])[:, : tokenizer.vocab_size]
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0, :, : tokenizer.vocab_size].float().numpy()
    assert np.abs(theirs - ours).max() < 1e-3 * max(1.0, np.abs(ours).max())
    engine = Engine(model, tokenizer, max_slots=1, stop_ids=frozenset())
    try:
        mine = engine.generate(ids, SamplingParams(max_tokens=32, temperature=0)).ids
    finally:
        engine.close()
    llm.reset()
    assert list(itertools.islice(llm.generate(ids, temp=0.0, top_k=1, reset=True), 32)) == mine


def test_llama_cpps_chat_template_gives_our_prompt(exported):
    llm, _, tokenizer = exported
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    conversation = [
        {"role": "system", "content": "You are Ada."},
        {"role": "user", "content": "What is 12 * 7?"},
    ]
    template = llm.metadata["tokenizer.chat_template"]
    formatter = Jinja2ChatFormatter(template, eos_token="<|end_of_turn|>", bos_token="<|endoftext|>")
    prompt = formatter(messages=conversation).prompt
    ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    assert ids == ChatTemplate(tokenizer).render_prompt(conversation)
