"""The skeleton every stage relies on: the command line, atomic writes, the run directory and artifact formats."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO
from ownllm.core.errors import UserError
from ownllm.core.fsutil import atomic_directory, atomic_open, atomic_write_json
from ownllm.run import RunDir, corpus_shards, token_shards


def test_help_lists_every_stage(ownllm):
    r = ownllm("--help")
    assert r.returncode == 0
    for command in ("data", "tokenizer", "tokenize", "pretrain", "sample"):
        assert command in r.stdout


def test_version(ownllm):
    r = ownllm("--version")
    assert r.returncode == 0 and r.stdout.startswith("ownllm ")


def test_unknown_command_is_a_usage_error(ownllm):
    r = ownllm("frobnicate")
    assert r.returncode == 2
    assert "invalid choice" in r.stderr
    assert "Traceback" not in r.stderr


def test_atomic_open_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "artifact.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_open(target, "w") as f:
        f.write('{"v": 2, "half')
        raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["artifact.json"], "temporary file left behind"


def test_sigkill_mid_write_leaves_previous_file_intact(tmp_path):
    """A real process killed while writing never leaves a half file under the final name."""
    target = tmp_path / "big.bin"
    target.write_bytes(b"old")
    writer = (
        "import sys, time\n"
        "from ownllm.core.fsutil import atomic_open\n"
        "with atomic_open(sys.argv[1]) as f:\n"
        "    f.write(b'x' * 1000); f.flush()\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    p = subprocess.Popen([sys.executable, "-c", writer, str(target)], stdout=subprocess.PIPE, env=env)
    assert p.stdout.readline().strip() == b"writing"
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=10)
    assert target.read_bytes() == b"old"


def test_atomic_directory_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "tokenizer"
    with atomic_directory(target) as d:
        (d / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), atomic_directory(target) as d:
        (d / "a.txt").write_text("second")
        raise RuntimeError("interrupted")
    assert (target / "a.txt").read_text() == "first"
    with atomic_directory(target) as d:
        (d / "b.txt").write_text("third")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer"]


def test_run_config_keeps_each_stage_section(tmp_path):
    run = RunDir.open(tmp_path / "r")
    run.record_config("data", {"val_fraction": 0.05, "inputs": [tmp_path], "unset": None})
    run.record_config("tokenizer", {"vocab_size": 8192})
    config = run.read_config()
    assert config["data"] == {"val_fraction": 0.05, "inputs": [str(tmp_path)]}
    assert config["tokenizer"] == {"vocab_size": 8192}


def test_run_dir_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        RunDir.open(f)


def _write_corpus(path, docs):
    with atomic_directory(path) as d:
        w = corpus_shards.CorpusWriter(d, shard_bytes=64)
        for i, text in enumerate(docs):
            w.add("val" if i % 3 == 0 else "train", text)
        atomic_write_json(
            d / "manifest.json", {"format": corpus_shards.FORMAT, "version": corpus_shards.VERSION, **w.close()}
        )


def test_corpus_shards_round_trip_and_hash(tmp_path):
    docs = [f'document {i} with text ünïcode ✓ "quotes"\nand a second line' for i in range(10)]
    _write_corpus(tmp_path / "corpus", docs)
    manifest = corpus_shards.read_manifest(tmp_path / "corpus")
    assert len(manifest["splits"]["train"]["files"]) > 1, "small shard size should give several shards"
    train = list(corpus_shards.iter_documents(tmp_path / "corpus", "train"))
    val = list(corpus_shards.iter_documents(tmp_path / "corpus", "val"))
    assert val == docs[0::3]
    assert sorted(train + val) == sorted(docs)
    assert manifest["splits"]["train"]["documents"] == len(train)
    _write_corpus(tmp_path / "other", docs[:-1])
    assert corpus_shards.read_manifest(tmp_path / "other")["corpus_hash"] != manifest["corpus_hash"]


def test_corpus_of_another_version_is_refused(tmp_path):
    _write_corpus(tmp_path / "corpus", ["a", "b"])
    m = json.loads((tmp_path / "corpus" / "manifest.json").read_text())
    m["version"] = 99
    (tmp_path / "corpus" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="format version 99"):
        corpus_shards.read_manifest(tmp_path / "corpus")
    (tmp_path / "corpus" / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupted"):
        corpus_shards.read_manifest(tmp_path / "corpus")


def _write_tokens(tokens_dir, vocab_size, arrays):
    with atomic_directory(tokens_dir) as d:
        w = token_shards.TokenShardWriter(d, "train", vocab_size, shard_tokens=7)
        for a in arrays:
            w.add(a, text_bytes=len(a) * 3)
        meta = {
            "format": token_shards.FORMAT,
            "version": token_shards.VERSION,
            "dtype": w.dtype.str,
            "vocab_size": vocab_size,
            "eot_id": vocab_size - 1,
            "tokenizer_hash": "t",
            "corpus_hash": "c",
            "splits": {"train": w.close()},
        }
        atomic_write_json(d / "meta.json", meta)


@pytest.mark.parametrize("vocab_size, dtype", [(8192, np.uint16), (70000, np.uint32)])
def test_token_shards_round_trip(tmp_path, vocab_size, dtype):
    arrays = [np.arange(i, i + 5) * 13 % vocab_size for i in range(6)]
    _write_tokens(tmp_path / "tokens", vocab_size, arrays)
    split = token_shards.open_tokens(tmp_path / "tokens").split("train")
    assert all(s.dtype == dtype for s in split.shards)
    assert max(len(s) for s in split.shards) <= 7
    np.testing.assert_array_equal(np.concatenate(split.shards), np.concatenate(arrays))
    assert split.tokens == 30 and split.bytes_per_token == 3.0


def test_truncated_token_shard_is_refused(tmp_path):
    _write_tokens(tmp_path / "tokens", 8192, [np.arange(20)])
    shard = tmp_path / "tokens" / "train-00001.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(UserError, match="missing or truncated.*ownllm tokenize"):
        token_shards.open_tokens(tmp_path / "tokens").split("train")


def test_missing_stages_name_the_command_to_run(tmp_path):
    with pytest.raises(UserError, match="ownllm data"):
        corpus_shards.read_manifest(tmp_path / "corpus")
    with pytest.raises(UserError, match="ownllm tokenize"):
        token_shards.open_tokens(tmp_path / "tokens")
    with pytest.raises(UserError, match="ownllm tokenizer"):
        token_shards.tokenizer_hash(tmp_path / "tokenizer")


def test_artifacts_get_the_usual_permissions(tmp_path):
    """Temporary-file helpers create private files; finished artifacts must follow the umask like any file."""
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {})
        with atomic_directory(tmp_path / "d") as d:
            (d / "x").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
