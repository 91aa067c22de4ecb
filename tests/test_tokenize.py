"""`ownllm tokenize`: token shards that decode back to the corpus, refused once their inputs change."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.corpus import assert_one_line_error, cli, story_paragraphs, write_corpus
from ownllm.core.errors import StaleArtifactError
from ownllm.core.fsutil import atomic_directory
from ownllm.data.tokenize import tokenize_corpus
from ownllm.run import RunDir
from ownllm.run.corpus_shards import iter_documents
from ownllm.run.token_shards import open_tokens, tokenizer_hash
from ownllm.tokenizer import ENDOFTEXT, Tokenizer, train_bpe

META_KEYS = {"format", "version", "dtype", "vocab_size", "eot_id", "tokenizer_hash", "corpus_hash", "splits"}
SPLIT_KEYS = {"files", "tokens", "documents", "bytes"}


@pytest.fixture
def run_dir(tmp_path) -> RunDir:
    paragraphs = story_paragraphs()
    train = paragraphs[:300] + [f"A document that mentions {ENDOFTEXT} in its text.", "日本語 😀 ünïcödé"]
    write_corpus(tmp_path / "corpus", train=train, val=paragraphs[300:340])
    run = RunDir(tmp_path)
    save_tokenizer(run, train_bpe(train, 350, workers=1))
    return run


def save_tokenizer(run: RunDir, tokenizer: Tokenizer) -> None:
    with atomic_directory(run.tokenizer) as tmp:
        tokenizer.save(tmp)


def documents(run: RunDir, split: str) -> list[str]:
    return list(iter_documents(run.corpus, split))


def split_at_eot(ids: np.ndarray, eot: int) -> list[list[int]]:
    ends = np.flatnonzero(ids == eot)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [ids[s:e].tolist() for s, e in zip(starts, ends)]


def test_shards_hold_every_document_followed_by_endoftext(run_dir, capsys):
    code, _, err = cli(capsys, "tokenize", "--run", run_dir.root, "--threads", 2)
    assert code == 0, err
    tokens = open_tokens(run_dir.tokens, run_dir.tokenizer, run_dir.corpus)
    tokenizer = Tokenizer.load(run_dir.tokenizer)
    assert set(tokens.meta) == META_KEYS and tokens.meta["dtype"] == "<u2"
    assert tokens.eot_id == tokenizer.eot_id and tokens.vocab_size == 350
    for split in ("train", "val"):
        assert set(tokens.meta["splits"][split]) == SPLIT_KEYS
        docs = documents(run_dir, split)
        shard = tokens.split(split)
        ids = np.concatenate(shard.shards)
        assert ids[-1] == tokenizer.eot_id
        pieces = split_at_eot(ids, tokenizer.eot_id)  # one per document: text never yields <|endoftext|>
        assert [tokenizer.decode(p) for p in pieces] == docs
        assert pieces == [tokenizer.encode(d) for d in docs]
        assert shard.tokens == len(ids) and shard.bytes == sum(len(d.encode("utf-8")) for d in docs)
        assert tokens.meta["splits"][split]["documents"] == len(docs)


def test_small_shards_split_a_long_stream_without_losing_tokens(run_dir):
    meta = tokenize_corpus(run_dir.corpus, run_dir.tokenizer, run_dir.tokens, threads=1, shard_tokens=1000)
    train = meta["splits"]["train"]
    assert len(train["files"]) == -(-train["tokens"] // 1000) > 5
    ids = np.concatenate(open_tokens(run_dir.tokens).split("train").shards)
    tokenizer = Tokenizer.load(run_dir.tokenizer)
    assert tokenizer.decode([i for i in ids.tolist() if i != tokenizer.eot_id]) == "".join(documents(run_dir, "train"))


def test_shards_are_refused_after_the_tokenizer_changes(run_dir):
    tokenize_corpus(run_dir.corpus, run_dir.tokenizer, run_dir.tokens, threads=1)
    save_tokenizer(run_dir, train_bpe(documents(run_dir, "train"), 340, workers=1))
    with pytest.raises(StaleArtifactError, match="another tokenizer; rerun `ownllm tokenize"):
        open_tokens(run_dir.tokens, run_dir.tokenizer, run_dir.corpus)


def test_shards_are_refused_after_the_corpus_changes(run_dir):
    tokenize_corpus(run_dir.corpus, run_dir.tokenizer, run_dir.tokens, threads=1)
    paragraphs = story_paragraphs()
    write_corpus(run_dir.corpus, train=paragraphs[:299], val=paragraphs[300:340])
    with pytest.raises(StaleArtifactError, match="older corpus; rerun `ownllm tokenize"):
        open_tokens(run_dir.tokens, run_dir.tokenizer, run_dir.corpus)


def test_a_failed_run_leaves_the_previous_shards_intact(run_dir, capsys):
    tokenize_corpus(run_dir.corpus, run_dir.tokenizer, run_dir.tokens, threads=1)
    before = {p.name: p.read_bytes() for p in run_dir.tokens.iterdir()}
    shard = run_dir.corpus / "train-00000.jsonl"
    shard.write_bytes(shard.read_bytes() + b"{not json\n")
    code, _, err = cli(capsys, "tokenize", "--run", run_dir.root)
    assert_one_line_error(code, err, "corrupted at line", "ownllm data")
    assert {p.name: p.read_bytes() for p in run_dir.tokens.iterdir()} == before
    assert [p.name for p in run_dir.root.iterdir() if p.name.startswith(".tokens")] == []


def test_missing_tokenizer_names_the_command_to_run(run_dir, capsys):
    (run_dir.tokenizer / "tokenizer.json").unlink()
    code, _, err = cli(capsys, "tokenize", "--run", run_dir.root)
    assert_one_line_error(code, err, "no tokenizer", "ownllm tokenizer")
    assert not run_dir.tokens.exists()


def test_a_vocabulary_over_65536_ids_is_stored_as_uint32(run_dir):
    every_byte_pair = [(bytes([a]), bytes([b])) for a in range(256) for b in range(256)]
    big = Tokenizer(every_byte_pair)  # 256 + 65536 + 16 ids
    save_tokenizer(run_dir, big)
    meta = tokenize_corpus(run_dir.corpus, run_dir.tokenizer, run_dir.tokens, threads=1)
    assert meta["dtype"] == "<u4" and meta["vocab_size"] == 65808
    ids = np.concatenate(open_tokens(run_dir.tokens).split("val").shards)
    assert ids.dtype == np.dtype("<u4") and ids.max() == big.eot_id == 65792
    pieces = split_at_eot(ids, big.eot_id)
    assert [big.decode(p) for p in pieces] == documents(run_dir, "val")


def test_meta_json_is_what_token_shards_reads(run_dir):
    tokenize_corpus(run_dir.corpus, run_dir.tokenizer, run_dir.tokens, threads=1)
    meta = json.loads((run_dir.tokens / "meta.json").read_text())
    assert meta["format"] == "ownllm.tokens" and meta["version"] == 1
    assert meta["tokenizer_hash"] == tokenizer_hash(run_dir.tokenizer)
