"""Encode the corpus into token shards: the input of pretraining.

Documents are streamed from the corpus shards in batches (memory stays bounded whatever
the corpus size), encoded by tiktoken on several threads, each followed by <|endoftext|>,
and appended to flat uint16/uint32 shards. Special-token strings inside a document are
encoded as plain text, so <|endoftext|> occurs exactly once per document. The whole
tokens/ directory is built under a temporary name and swapped in at the end: an
interrupted or failed run leaves the previous shards untouched.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np

from ownllm.core.console import progress
from ownllm.core.errors import UserError
from ownllm.core.fsutil import atomic_directory, atomic_write_json
from ownllm.core.parallel import size_bounded_batches
from ownllm.run.corpus_shards import SPLITS, iter_documents, read_manifest
from ownllm.run.token_shards import FORMAT, VERSION, TokenShardWriter, dtype_for_vocab, tokenizer_hash
from ownllm.tokenizer import Tokenizer

BATCH_DOCUMENTS = 1024  # documents encoded together, on several threads
BATCH_CHARS = 16 << 20  # ... unless they are this much text already (bounded memory)


def tokenize_corpus(
    corpus_dir: Path,
    tokenizer_dir: Path,
    tokens_dir: Path,
    threads: int = 8,
    shard_tokens: int = 1 << 27,
) -> dict:
    """Write `tokens_dir` (shards + meta.json) from the corpus and the saved tokenizer; return meta."""
    manifest = read_manifest(corpus_dir)
    identity = tokenizer_hash(tokenizer_dir)
    tokenizer = Tokenizer.load(tokenizer_dir)
    eot = tokenizer.eot_id
    total_bytes = sum(manifest["splits"][s]["bytes"] for s in SPLITS)

    splits = {}
    started = time.perf_counter()
    with (
        atomic_directory(tokens_dir) as tmp,
        progress(total=total_bytes, unit="B", unit_scale=True, desc="tokenizing") as bar,
    ):
        n_tokens = 0
        for split in SPLITS:
            writer = TokenShardWriter(tmp, split, tokenizer.vocab_size, shard_tokens=shard_tokens)
            documents = iter_documents(corpus_dir, split, manifest)
            for batch in size_bounded_batches(documents, BATCH_CHARS, BATCH_DOCUMENTS):
                encoded = tokenizer.encode_batch(batch, num_threads=threads)
                ids = np.fromiter(
                    itertools.chain.from_iterable(doc_ids + [eot] for doc_ids in encoded),
                    dtype=writer.dtype,
                    count=sum(map(len, encoded)) + len(encoded),
                )
                text_bytes = sum(len(doc.encode("utf-8")) for doc in batch)
                writer.add(ids, documents=len(batch), text_bytes=text_bytes)
                n_tokens += len(ids)
                bar.update(text_bytes)
                bar.set_postfix_str(f"{n_tokens / (time.perf_counter() - started):,.0f} tokens/s", refresh=False)
            splits[split] = writer.close()
        if tokenizer_hash(tokenizer_dir) != identity:  # retrained meanwhile: these shards match neither
            raise UserError(f"the tokenizer in {tokenizer_dir} changed while tokenizing; rerun `ownllm tokenize`")
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "dtype": dtype_for_vocab(tokenizer.vocab_size).str,  # "<u2" or "<u4": little-endian
            "vocab_size": tokenizer.vocab_size,
            "eot_id": eot,
            "tokenizer_hash": identity,
            "corpus_hash": manifest["corpus_hash"],
            "splits": splits,
        }
        atomic_write_json(Path(tmp) / "meta.json", meta)
    return meta
