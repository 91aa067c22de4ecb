"""The tokens artifact: flat binary token shards that a training loader memory-maps.

    tokens/
      meta.json            format, version, dtype, vocab_size, eot_id, tokenizer_hash,
                           corpus_hash, and per split: files (name, tokens), tokens, documents, bytes
      train-00000.bin      little-endian uint16 (vocabulary <= 65536) or uint32 token ids;
      val-00000.bin        every document is followed by <|endoftext|>

`bytes` is the UTF-8 size of the split's text: loss in nats per token times
tokens / bytes / ln 2 gives bits per byte, comparable across tokenizers.
Shards record the hashes of the tokenizer and corpus they were built from; `open_tokens`
refuses shards whose inputs have changed since, naming the command to rerun.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ownllm.core.errors import StaleArtifactError, UserError, check_format
from ownllm.core.fsutil import read_json, sha256_file
from ownllm.run.corpus_shards import read_manifest

FORMAT = "ownllm.tokens"
VERSION = 1
REBUILD = "rebuild them with `ownllm tokenize --run DIR`"
TOKENIZER_FILE = "tokenizer.json"


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def tokenizer_hash(tokenizer_dir: Path) -> str:
    """The identity of a saved tokenizer: the hash of its tokenizer.json."""
    path = Path(tokenizer_dir) / TOKENIZER_FILE
    if not path.is_file():
        raise UserError(f"no tokenizer at {tokenizer_dir}; run `ownllm tokenizer --run DIR` first")
    return sha256_file(path)


class TokenShardWriter:
    """Appends token arrays of one split to size-capped shards inside `out_dir`."""

    def __init__(self, out_dir: Path, split: str, vocab_size: int, shard_tokens: int = 1 << 27):
        self.out_dir, self.split = Path(out_dir), split
        self.dtype = dtype_for_vocab(vocab_size)
        self.shard_tokens = shard_tokens
        self.files: list[dict] = []
        self._f: io.BufferedWriter | None = None
        self._in_shard = 0
        self.tokens = self.documents = self.bytes = 0

    def add(self, ids: np.ndarray | list[int], documents: int = 1, text_bytes: int = 0) -> None:
        """Append already-encoded ids (with their trailing <|endoftext|>) for `documents` documents."""
        ids = np.asarray(ids, dtype=self.dtype)
        start = 0
        while start < len(ids):
            if self._f is None or self._in_shard >= self.shard_tokens:
                self._next_shard()
            assert self._f is not None  # _next_shard opened one
            take = min(len(ids) - start, self.shard_tokens - self._in_shard)
            ids[start : start + take].tofile(self._f)
            self._in_shard += take
            self.files[-1]["tokens"] += take
            start += take
        self.tokens += len(ids)
        self.documents += documents
        self.bytes += text_bytes

    def _next_shard(self) -> None:
        self._close_file()
        name = f"{self.split}-{len(self.files):05d}.bin"
        self.files.append({"name": name, "tokens": 0})
        self._f = open(self.out_dir / name, "wb")
        self._in_shard = 0

    def _close_file(self) -> None:
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None

    def close(self) -> dict:
        """Finish the split; return its section of meta.json."""
        self._close_file()
        return {"files": self.files, "tokens": self.tokens, "documents": self.documents, "bytes": self.bytes}


@dataclass
class TokenSplit:
    """The memory-mapped shards of one split (nothing is read until it is indexed)."""

    shards: list[np.ndarray]
    tokens: int
    bytes: int

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / max(self.tokens, 1)


@dataclass
class TokenShards:
    root: Path
    meta: dict

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def eot_id(self) -> int:
        return int(self.meta["eot_id"])

    def split(self, name: str) -> TokenSplit:
        info = self.meta["splits"].get(name)
        if info is None:
            raise UserError(f"token shards in {self.root} have no {name!r} split; {REBUILD}")
        dtype = np.dtype(self.meta["dtype"])
        shards: list[np.ndarray] = []
        for f in info["files"]:
            path = self.root / f["name"]
            expected = int(f["tokens"]) * dtype.itemsize
            if not path.is_file() or path.stat().st_size != expected:
                raise UserError(f"token shard {path} is missing or truncated; {REBUILD}")
            if f["tokens"]:
                shards.append(np.memmap(path, dtype=dtype, mode="r"))
        return TokenSplit(shards=shards, tokens=int(info["tokens"]), bytes=int(info["bytes"]))


def read_meta(tokens_dir: Path) -> dict:
    tokens_dir = Path(tokens_dir)
    path = tokens_dir / "meta.json"
    if not path.exists():
        raise UserError(f"no token shards at {tokens_dir}; run `ownllm tokenize --run DIR` first")
    meta = read_json(path, "token shard metadata")
    check_format(meta, FORMAT, VERSION, path, REBUILD)
    return meta


def open_tokens(tokens_dir: Path, tokenizer_dir: Path | None = None, corpus_dir: Path | None = None) -> TokenShards:
    """Open token shards, refusing them if the tokenizer or corpus they came from has changed."""
    meta = read_meta(tokens_dir)
    if tokenizer_dir is not None and (Path(tokenizer_dir) / TOKENIZER_FILE).exists():
        if tokenizer_hash(tokenizer_dir) != meta["tokenizer_hash"]:
            raise StaleArtifactError(
                f"token shards in {tokens_dir} were built with another tokenizer; rerun `ownllm tokenize --run DIR`"
            )
    if corpus_dir is not None and (Path(corpus_dir) / "manifest.json").exists():
        if read_manifest(corpus_dir)["corpus_hash"] != meta["corpus_hash"]:
            raise StaleArtifactError(
                f"token shards in {tokens_dir} were built from an older corpus; rerun `ownllm tokenize --run DIR`"
            )
    return TokenShards(root=Path(tokens_dir), meta=meta)
