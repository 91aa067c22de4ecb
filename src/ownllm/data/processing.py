"""What a worker process does to each raw document: decode, clean, filter, hash.

This is the CPU-heavy part of the data stage, so it runs in a pool of processes. It is a
pure function of the document and the settings: the main process can hand documents to any
worker and still get the same corpus.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ownllm.data.cleaning import clean_text, decode_utf8, html_to_text, repair_mojibake
from ownllm.data.fingerprints import MinHashSigner, exact_key
from ownllm.data.quality import QualityThresholds, quality_problem

PREVIEW_CHARS = 80


@dataclass(frozen=True)
class ProcessingSettings:
    limits: QualityThresholds
    jsonl_field: str = "text"
    minhash_permutations: np.ndarray | None = None  # None: no near-duplicate detection, no signatures
    shingle_words: int = 5


class Kept(NamedTuple):
    text: str
    key: bytes  # exact-duplicate key, also decides the train/val split
    signature: bytes | None  # MinHash signature as uint32 bytes, for near-duplicate detection
    invalid_utf8: int  # invalid byte sequences replaced by U+FFFD
    mojibake_repaired: bool = False


class Removed(NamedTuple):
    reason: str
    preview: str  # the start of the text, so a person can judge the filter
    invalid_utf8: int
    mojibake_repaired: bool = False


class DocumentProcessor:
    def __init__(self, settings: ProcessingSettings):
        self.settings = settings
        self.signer = None
        if settings.minhash_permutations is not None:
            self.signer = MinHashSigner(settings.minhash_permutations, settings.shingle_words)

    def process(self, kind: str, payload: bytes | None) -> Kept | Removed:
        if payload is None:
            return Removed("too_long", "", 0)
        text, invalid = decode_utf8(payload)
        if kind == "jsonl":
            record_text = self._record_text(text)
            if record_text is None:
                return Removed("invalid_record", preview(payload.decode("utf-8", "replace")), invalid)
            text = record_text
        elif kind == "html":
            text = html_to_text(text)
        repaired = repair_mojibake(text)
        mojibake = repaired is not text  # the same object comes back when nothing was repaired
        text = clean_text(repaired)
        problem = quality_problem(text, self.settings.limits)
        if problem is not None:
            return Removed(problem, preview(text), invalid, mojibake)
        signature = self.signer.signature(text).tobytes() if self.signer else None
        return Kept(text, exact_key(text), signature, invalid, mojibake)

    def _record_text(self, line: str) -> str | None:
        """The configured field of one JSON record, or None if the line is not such a record."""
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            return None
        value = record.get(self.settings.jsonl_field) if isinstance(record, dict) else None
        return value if isinstance(value, str) else None

    def process_chunk(self, chunk: list[tuple[str, bytes | None]]) -> list[Kept | Removed]:
        return [self.process(kind, payload) for kind, payload in chunk]


def preview(text: str) -> str:
    flat = " ".join(text[: PREVIEW_CHARS * 4].split())
    return flat if len(flat) <= PREVIEW_CHARS else flat[: PREVIEW_CHARS - 1] + "…"


# A pool worker builds its processor once, in the initializer, instead of receiving the
# settings (and rebuilding the MinHash permutations) with every chunk.
_worker_processor: DocumentProcessor | None = None


def init_worker(settings: ProcessingSettings) -> None:
    global _worker_processor
    _worker_processor = DocumentProcessor(settings)


def process_chunk_in_worker(chunk: list[tuple[str, bytes | None]]) -> list[Kept | Removed]:
    assert _worker_processor is not None  # the pool's initializer, init_worker, set it
    return _worker_processor.process_chunk(chunk)
