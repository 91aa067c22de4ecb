"""The corpus artifact: cleaned documents in JSONL shards plus manifest.json.

    corpus/
      manifest.json          format, version, corpus_hash, splits, and the data stage's report
      train-00000.jsonl      one {"text": "..."} object per line, one line per document
      val-00000.jsonl

JSONL keeps the shards readable with any tool and streamable line by line. The corpus hash
is derived from the shard hashes, so the tokenize stage can tell when its input changed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

from ownllm.core.errors import UserError, check_format
from ownllm.core.fsutil import read_json, sha256_file

FORMAT = "ownllm.corpus"
VERSION = 1
SPLITS = ("train", "val")
REBUILD = "rebuild it with `ownllm data --run DIR`"


class CorpusWriter:
    """Appends documents to size-capped shards of each split inside `out_dir` (a fresh directory)."""

    def __init__(self, out_dir: Path, shard_bytes: int = 64 << 20):
        self.out_dir = Path(out_dir)
        self.shard_bytes = shard_bytes
        self._files: dict[str, list[str]] = {s: [] for s in SPLITS}
        self._handles: dict[str, io.BufferedWriter] = {}
        self._shard_size: dict[str, int] = {s: 0 for s in SPLITS}
        self.documents = {s: 0 for s in SPLITS}
        self.bytes = {s: 0 for s in SPLITS}

    def add(self, split: str, text: str) -> None:
        line = (json.dumps({"text": text}, ensure_ascii=False) + "\n").encode("utf-8")
        f = self._handles.get(split)
        if f is None or self._shard_size[split] + len(line) > self.shard_bytes and self._shard_size[split] > 0:
            f = self._next_shard(split)
        f.write(line)
        self._shard_size[split] += len(line)
        self.documents[split] += 1
        self.bytes[split] += len(text.encode("utf-8"))

    def _next_shard(self, split: str) -> io.BufferedWriter:
        if split in self._handles:
            self._handles[split].close()
        name = f"{split}-{len(self._files[split]):05d}.jsonl"
        self._files[split].append(name)
        self._handles[split] = open(self.out_dir / name, "wb")
        self._shard_size[split] = 0
        return self._handles[split]

    def close(self) -> dict:
        """Close every shard; return the `splits` section of the manifest and the corpus hash."""
        for f in self._handles.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        self._handles.clear()
        splits = {}
        for s in SPLITS:
            files = [{"name": n, "sha256": sha256_file(self.out_dir / n)} for n in self._files[s]]
            splits[s] = {"files": files, "documents": self.documents[s], "bytes": self.bytes[s]}
        return {"splits": splits, "corpus_hash": corpus_hash(splits)}


def corpus_hash(splits: dict) -> str:
    h = hashlib.sha256()
    for s in SPLITS:
        for f in splits.get(s, {}).get("files", []):
            h.update(f"{s}/{f['name']}:{f['sha256']}\n".encode())
    return h.hexdigest()


def read_manifest(corpus_dir: Path) -> dict:
    """Load and validate corpus/manifest.json, or explain in one line what to run."""
    corpus_dir = Path(corpus_dir)
    path = corpus_dir / "manifest.json"
    if not path.exists():
        raise UserError(f"no corpus at {corpus_dir} (missing manifest.json); run `ownllm data --run DIR` first")
    manifest = read_json(path, "corpus manifest")
    check_format(manifest, FORMAT, VERSION, path, REBUILD)
    for s in SPLITS:
        for f in manifest["splits"][s]["files"]:
            if not (corpus_dir / f["name"]).is_file():
                raise UserError(f"corpus shard {corpus_dir / f['name']} is missing; {REBUILD}")
    return manifest


def iter_documents(corpus_dir: Path, split: str, manifest: dict | None = None) -> Iterator[str]:
    """Stream the documents of one split, in shard order, without loading a shard whole."""
    corpus_dir = Path(corpus_dir)
    manifest = manifest or read_manifest(corpus_dir)
    for f in manifest["splits"][split]["files"]:
        yield from iter_shard(corpus_dir / f["name"])


def iter_shard(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                yield json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"corpus shard {path} is corrupted at line {lineno}; {REBUILD}") from None
