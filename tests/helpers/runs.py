"""Shared builders for the model, training and sampling tests (this module holds no tests itself).

`byte_level_run` writes a run directory whose token shards hold real text from the bundled
corpus, one token per UTF-8 byte (vocabulary 257: the bytes and <|endoftext|>). It needs no
tokenizer, so training tests do not depend on the tokenizer stage; `bpe_run` adds a real
trained tokenizer for the tests that sample text.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ownllm.cli import main
from ownllm.run.token_shards import FORMAT, VERSION, TokenShardWriter, tokenizer_hash

CORPUS = Path(__file__).resolve().parents[2] / "src" / "ownllm" / "resources" / "corpus"
BYTE_EOT = 256


def ownllm_here(capsys, *args) -> tuple[int, str]:
    """`ownllm ARGS` through the command-line entry point in this process: (exit status, stderr)."""
    if capsys is not None:
        capsys.readouterr()
    try:
        main([str(a) for a in args])
        status = 0
    except SystemExit as e:
        status = e.code
    return status, capsys.readouterr().err if capsys is not None else ""


def story_documents(limit_bytes: int, skip_bytes: int = 0) -> list[str]:
    """Paragraph-separated documents from the bundled TinyStories validation prefix."""
    text = (CORPUS / "tinystories-valid-prefix.txt").read_text(encoding="utf-8")
    text = text[skip_bytes : skip_bytes + limit_bytes]
    return [d.strip() for d in text.split("\n\n") if d.strip()]


def write_token_shards(
    tokens_dir: Path,
    splits: dict[str, list[list[int]]],
    vocab_size: int,
    eot_id: int,
    texts: dict[str, list[str]],
    tok_hash: str,
    shard_tokens: int = 1 << 27,
) -> None:
    tokens_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "dtype": np.dtype("<u2").str,
        "vocab_size": vocab_size,
        "eot_id": eot_id,
        "tokenizer_hash": tok_hash,
        "corpus_hash": "test-fixture",
        "splits": {},
    }
    for split, docs in splits.items():
        writer = TokenShardWriter(tokens_dir, split, vocab_size, shard_tokens=shard_tokens)
        for ids, text in zip(docs, texts[split]):
            writer.add(ids + [eot_id], text_bytes=len(text.encode("utf-8")))
        meta["splits"][split] = writer.close()
    (tokens_dir / "meta.json").write_text(json.dumps(meta), encoding="utf-8")


def byte_level_run(
    root: Path, train_bytes: int = 120_000, val_bytes: int = 20_000, shard_tokens: int = 1 << 27
) -> Path:
    train, val = story_documents(train_bytes), story_documents(val_bytes, skip_bytes=train_bytes)
    texts = {"train": train, "val": val}
    ids = {split: [list(d.encode("utf-8")) for d in docs] for split, docs in texts.items()}
    write_token_shards(
        root / "tokens", ids, vocab_size=257, eot_id=BYTE_EOT, texts=texts, tok_hash="bytes", shard_tokens=shard_tokens
    )
    return root


def bpe_run(root: Path, vocab_size: int = 400) -> Path:
    """A run with a real BPE tokenizer trained on the stories, and token shards made with it."""
    from ownllm.tokenizer import train_bpe

    train, val = story_documents(120_000), story_documents(20_000, skip_bytes=120_000)
    tokenizer = train_bpe(train, vocab_size=vocab_size)
    tokenizer.save(root / "tokenizer")
    texts = {"train": train, "val": val}
    ids = {split: [tokenizer.encode(d) for d in docs] for split, docs in texts.items()}
    write_token_shards(
        root / "tokens", ids, tokenizer.vocab_size, tokenizer.eot_id, texts, tokenizer_hash(root / "tokenizer")
    )
    return root


def metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def step_losses(run: Path) -> dict[int, float]:
    """The loss of every training step, the last record winning (a resumed run repeats some steps)."""
    return {r["step"]: r["loss"] for r in metrics(run) if "loss" in r}


# Fine-tuning settings of a few seconds on a tiny pretrained run (tests of `ownllm sft`).
SFT = [
    "--preset",
    "tiny",
    "--set",
    "threads=1",
    "--set",
    "dtype=fp32",
    "--set",
    "sft.generated=160",
    "--set",
    "sft.bundled.oasst=0",
    "--set",
    "sft.bundled.dolly=0",
    "--set",
    "sft.bundled.chatterbot=16",
    "--set",
    "sft.held_out=0.1",
]


# A few seconds of pretraining with room for 256-token conversations: the fine-tuning tests' base model.
TINY_CHAT_BASE = ["--preset", "tiny", "--set", "threads=1", "--set", "model.max_seq_len=256", "--set", "steps=4"]
TINY_CHAT_BASE += ["--set", "eval_every=0", "--set", "sample_every=0"]


def with_embedder(source: Path, root: Path, steps: int) -> Path:
    """A copy of `source` (a run with a pretrained model) at root/run, after `steps` of tiny embedding training."""
    import shutil

    run = root / "run"
    shutil.copytree(source, run)
    status, err = ownllm_here(None, "embed", "train", "--run", run, "--preset", "tiny", "--set", f"steps={steps}")
    assert status == 0, err
    return run
