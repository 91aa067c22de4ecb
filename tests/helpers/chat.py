"""A tiny trained chat run for tests of everything that talks: the reply loop, `ownllm chat`, the server.

    from helpers.chat import tiny_chat_run, CONVERSATIONS, SYSTEM
    run = tiny_chat_run(tmp_path_factory)          # built once per test session (5-10 s), then shared
    engine = Engine.load(run)                       # tokenizer/ and checkpoints/sft/ are there

The model (2 layers x 64, context 1024) is trained with the real Trainer, on the chat
template's loss mask, until it has learnt the few conversations below by heart, so greedy
decoding (temperature 0) answers each of their questions with their exact replies:

- "What is 12 * 7?" -> a call `calculator(12 * 7)`, then, after the tool's "84", "12 * 7 = 84."
- "Hello" -> "Hi! I am Pip."
- "Sing" -> "la la la ..." that never ends by itself (its training copy is cut before the
  end of its turn): a long reply, for tests that stop one. Asked first, or after the
  calculator exchange (the one two-turn conversation).

Every conversation starts with the persona's system prompt (SYSTEM), which the checkpoint
records as "persona" exactly as `ownllm sft` does, so a chat session's default prompt is the
one the model learnt. This module holds no tests itself.
"""

from __future__ import annotations

from pathlib import Path

import torch

from helpers import torch_threads
from ownllm.chatformat.persona import Persona
from ownllm.chatformat.template import IGNORE_INDEX, ChatTemplate

PERSONA = Persona()
SYSTEM = PERSONA.system_prompt()
SEQ_LEN = 160  # training window; the model's context (max_seq_len) is longer, for long replies
CONTEXT = 1024

TOOL_QUESTION, TOOL_ANSWER = "What is 12 * 7?", "12 * 7 = 84."
GREETING, GREETING_REPLY = "Hello", "Hi! I am Pip."
SONG_REQUEST = "Sing"

CONVERSATIONS = [
    [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": TOOL_QUESTION},
        {"role": "assistant", "content": "", "tool_call": {"name": "calculator", "arguments": "12 * 7"}},
        {"role": "tool", "content": "84"},
        {"role": "assistant", "content": TOOL_ANSWER},
    ],
    [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": GREETING},
        {"role": "assistant", "content": GREETING_REPLY},
    ],
    [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": SONG_REQUEST},
        {"role": "assistant", "content": "la " * 200},
    ],  # cut to the window: the model never sees it end
    # Two turns: the song after the calculator exchange.
    [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": TOOL_QUESTION},
        {"role": "assistant", "content": "", "tool_call": {"name": "calculator", "arguments": "12 * 7"}},
        {"role": "tool", "content": "84"},
        {"role": "assistant", "content": TOOL_ANSWER},
        {"role": "user", "content": SONG_REQUEST},
        {"role": "assistant", "content": "la " * 200},
    ],
]

_built: dict[Path, Path] = {}


def tiny_chat_run(tmp_path_factory, steps: int = 120) -> Path:
    """A run directory with tokenizer/ and checkpoints/sft/, built once per test session."""
    key = tmp_path_factory.getbasetemp()
    if key not in _built:
        _built[key] = _build(tmp_path_factory.mktemp("tiny_chat_run"), steps)
    return _built[key]


class ConversationBatches:
    """The trainer's loader interface over rendered conversations: every batch holds each one once.

    Targets are -100 except where the chat template's mask says the assistant speaks, and on
    padding (inputs are padded with <|endoftext|>).
    """

    def __init__(self, template: ChatTemplate, conversations: list, seq_len: int):
        rows_in, rows_out = [], []
        for conversation in conversations:
            inputs, targets = template.render(conversation).training_pair(IGNORE_INDEX)
            inputs, targets = inputs[:seq_len], targets[:seq_len]
            pad = seq_len - len(inputs)
            rows_in.append(inputs + [template.tokenizer.eot_id] * pad)
            rows_out.append(targets + [IGNORE_INDEX] * pad)
        self.inputs, self.targets = torch.tensor(rows_in), torch.tensor(rows_out)
        self.batches = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.batches += 1
        return self.inputs, self.targets

    def state_dict(self) -> dict:
        return {"batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self.batches = state["batches"]


def _build(root: Path, steps: int) -> Path:
    from helpers.runs import story_documents
    from ownllm.core.device import Precision
    from ownllm.model import ModelConfig, Transformer
    from ownllm.run import RunDir
    from ownllm.run.token_shards import tokenizer_hash
    from ownllm.tokenizer import train_bpe
    from ownllm.train.config import TrainConfig
    from ownllm.train.trainer import Hooks, Trainer

    texts = story_documents(20_000) + [m["content"] for c in CONVERSATIONS for m in c]
    tokenizer = train_bpe(texts, vocab_size=400, workers=1)
    tokenizer.save(root / "tokenizer")
    template = ChatTemplate(tokenizer)
    loader = ConversationBatches(template, CONVERSATIONS, SEQ_LEN)
    rows = len(CONVERSATIONS)
    model_config = ModelConfig(vocab_size=tokenizer.vocab_size, n_layers=2, d_model=64, n_heads=4, max_seq_len=CONTEXT)
    config = TrainConfig(
        model=model_config,
        seq_len=SEQ_LEN,
        micro_batch=rows,
        batch_tokens=rows * SEQ_LEN,
        steps=steps,
        lr=3e-3,
        warmup_steps=10,
        weight_decay=0.0,
        eval_every=0,
        sample_every=0,
        checkpoint_every=0,
        keep_checkpoints=1,
        log_every=50,
        device="cpu",
        dtype="fp32",
    ).validate()
    torch.manual_seed(0)
    model = Transformer(model_config)
    precision = Precision(torch.device("cpu"), torch.float32, peak_flops=1e11, peak_source="test fixture")
    with torch_threads(1):
        Trainer(
            stage="sft",
            run=RunDir.open(root),
            config=config,
            model=model,
            loader=loader,
            precision=precision,
            hooks=Hooks(
                checkpoint_state={"tokenizer_hash": tokenizer_hash(root / "tokenizer"), "persona": PERSONA.to_dict()}
            ),
        ).fit()
    return root


def chat_run_with_notes(tmp_path_factory, tmp_path: Path, capsys) -> tuple[Path, Path]:
    """A copy of the tiny chat run whose knowledge base holds one note about the quarterly meeting: (run, note)."""
    import shutil

    from helpers.runs import ownllm_here

    run = tmp_path / "run"
    shutil.copytree(tiny_chat_run(tmp_path_factory), run)
    note = tmp_path / "notes.md"
    note.write_text("The quarterly meeting is on Friday in room 4.")
    assert ownllm_here(capsys, "kb", "add", "--run", run, note)[0] == 0
    return run, note
