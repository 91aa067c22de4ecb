"""`ownllm tokenizer`: trains on the run's corpus, reports compression, and fails cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.corpus import assert_one_line_error, cli, story_paragraphs, write_corpus
from ownllm.run import RunDir
from ownllm.run.corpus_shards import read_manifest
from ownllm.tokenizer import Tokenizer

CORPUS = Path(__file__).resolve().parents[1] / "src" / "ownllm" / "resources" / "corpus"


@pytest.fixture
def run_dir(tmp_path) -> RunDir:
    paragraphs = story_paragraphs()
    write_corpus(tmp_path / "corpus", train=paragraphs[:600], val=paragraphs[600:700])
    return RunDir(tmp_path)


@pytest.fixture
def trained(run_dir, capsys) -> RunDir:
    code, _, err = cli(capsys, "tokenizer", "--run", run_dir.root, "--vocab-size", 400, "--workers", 1)
    assert code == 0, err
    return run_dir


def test_trains_on_the_training_split_and_records_what_it_did(trained):
    tokenizer = Tokenizer.load(trained.tokenizer)
    assert tokenizer.vocab_size == 400 and len(tokenizer.merges) == 400 - 256 - 16
    manifest = read_manifest(trained.corpus)
    assert tokenizer.metadata["corpus_hash"] == manifest["corpus_hash"]
    assert tokenizer.metadata["documents"] == 600
    assert trained.read_config()["tokenizer"]["vocab_size"] == 400
    records = [json.loads(line) for line in trained.metrics.read_text().splitlines()]
    assert any(r.get("stage") == "tokenizer" and r["merges"] == 128 for r in records)


def test_stats_reports_bytes_per_token_on_the_validation_split(trained, capsys):
    code, out, _ = cli(capsys, "tokenizer", "--run", trained.root, "--stats")
    assert code == 0
    tokenizer = Tokenizer.load(trained.tokenizer)
    val = story_paragraphs()[600:700]
    n_bytes = sum(len(p.encode("utf-8")) for p in val)
    n_tokens = sum(len(tokenizer.encode(p)) for p in val)
    assert f"{n_bytes:,} bytes, {n_tokens:,} tokens" in out
    assert f"compression: {n_bytes / n_tokens:.3f} bytes per token" in out


def test_bad_input_fails_in_one_line_and_keeps_the_existing_tokenizer(trained, capsys):
    saved = (trained.tokenizer / "tokenizer.json").read_bytes()

    code, _, err = cli(capsys, "tokenizer", "--run", trained.root, "--vocab-size", 200)
    assert_one_line_error(code, err, "vocabulary size 200 is too small", "273 or more")

    code, _, err = cli(capsys, "tokenizer", "--run", trained.root, "--pattern", "[unclosed")
    assert_one_line_error(code, err, "neither a preset")

    manifest_path = trained.corpus / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "version": 99}))
    code, _, err = cli(capsys, "tokenizer", "--run", trained.root, "--vocab-size", 300)
    assert_one_line_error(code, err, "format version 99", "ownllm data")

    assert (trained.tokenizer / "tokenizer.json").read_bytes() == saved


def test_missing_inputs_name_the_command_to_run(tmp_path, capsys):
    code, _, err = cli(capsys, "tokenizer", "--run", tmp_path / "nothing-here")
    assert_one_line_error(code, err, "does not exist", "ownllm data")

    (tmp_path / "empty-run").mkdir()
    code, _, err = cli(capsys, "tokenizer", "--run", tmp_path / "empty-run")
    assert_one_line_error(code, err, "no corpus", "ownllm data")


def test_stats_without_a_tokenizer_says_to_train_one(run_dir, capsys):
    code, _, err = cli(capsys, "tokenizer", "--run", run_dir.root, "--stats")
    assert_one_line_error(code, err, "no tokenizer", "ownllm tokenizer")


def test_the_real_command_exits_2_without_a_traceback(run_dir, ownllm):
    result = ownllm("tokenizer", "--run", run_dir.root, "--vocab-size", "100")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert not run_dir.tokenizer.exists()


def test_a_custom_pattern_the_two_engines_read_differently_is_refused(tmp_path, capsys):
    # `$` also matches before a final newline in the regex module, but not in tiktoken's engine:
    # the regex module makes "a\n" one piece, tiktoken two, so the encoders would disagree.
    write_corpus(tmp_path / "corpus", train=["a\n"] * 20, val=["a\n"])
    code, _, err = cli(capsys, "tokenizer", "--run", tmp_path, "--vocab-size", 300, "--pattern", r"a$\n?|.|\n")
    assert code == 2
    assert "cuts text differently" in err.strip().splitlines()[-1]
    assert not (tmp_path / "tokenizer").exists()
