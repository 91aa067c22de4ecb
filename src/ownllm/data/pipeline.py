"""The data stage end to end: input files -> clean, deduplicated train/val corpus.

    SourceReader (main process)     files in sorted order -> raw documents (bytes), streamed
        | chunks of <= 256 documents or 256 KiB, at most 2 x workers chunks in flight
    DocumentProcessor (workers)     decode, clean, quality filters, exact key, MinHash signature
        | results in input order
    Deduplicator (main process)     first of each exact / near-duplicate group is kept
        | split by key hash: val if hash < --val-fraction (but neither split left empty
        |   when there are two documents: _OneSplitSoFar)
    CorpusWriter                    JSONL shards + manifest.json, built in a temporary
                                    directory that replaces corpus/ only when complete

Because the main process sees results in input order, the shards are byte-identical for any
number of workers. Memory is bounded whatever the corpus size: the reader and the in-flight
window by chunk and document size limits, and what grows with the number of documents (the
duplicate index, where each kept document came from) lives on disk, in a scratch directory
inside the staging directory, deleted before the corpus is published.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ownllm import __version__
from ownllm.core.console import progress, say
from ownllm.core.errors import UserError
from ownllm.core.fsutil import atomic_directory, atomic_write_json, sha256_file
from ownllm.core.parallel import available_cores, ordered_map, size_bounded_batches
from ownllm.data.dedup import Deduplicator, Match, RowFile, minhash_permutations
from ownllm.data.fingerprints import key_fraction
from ownllm.data.processing import (
    Kept,
    ProcessingSettings,
    Removed,
    init_worker,
    preview,
    process_chunk_in_worker,
)
from ownllm.data.quality import QualityThresholds
from ownllm.data.sources import InputSpec, RawDocument, SourceReader, display_name, resolve_inputs
from ownllm.run import RunDir, corpus_shards
from ownllm.run.corpus_shards import CorpusWriter

CHUNK_DOCUMENTS = 256
CHUNK_BYTES = 256 << 10
EXAMPLES_PER_REASON = 3
DUPLICATE_CLUSTER_EXAMPLES = 5
DUPLICATES_PER_EXAMPLE = 3
DEDUP_MODES = ("near", "exact", "off")


@dataclass(frozen=True)
class CorpusSettings:
    """Every setting of the data stage; recorded in the manifest and in config.toml."""

    inputs: tuple[InputSpec, ...]
    limits: QualityThresholds = field(default_factory=QualityThresholds)
    jsonl_field: str = "text"
    parquet_column: str = "text"
    dedup: str = "near"  # near (exact + near duplicates), exact, or off
    near_dup_threshold: float = 0.8
    minhash_perms: int = 128
    shingle_words: int = 5
    val_fraction: float = 0.05
    workers: int = 0  # 0: every available core
    shard_mb: int = 64

    def processing(self) -> ProcessingSettings:
        return ProcessingSettings(
            limits=self.limits,
            jsonl_field=self.jsonl_field,
            minhash_permutations=minhash_permutations(self.minhash_perms) if self.dedup == "near" else None,
            shingle_words=self.shingle_words,
        )

    def to_dict(self) -> dict:
        """A plain-data view: inputs as written, thresholds flattened."""
        data = asdict(self)
        data["inputs"] = [
            {"path": display_name(Path(spec.pattern)), "boundary": spec.boundary.spec} for spec in self.inputs
        ]
        data["workers"] = self.resolved_workers()
        return data

    def resolved_workers(self) -> int:
        return self.workers or available_cores()

    def max_document_bytes(self) -> int:
        # UTF-8 takes at most 4 bytes a character; anything longer cannot pass max_chars.
        return 4 * self.limits.max_chars + 4


class CorpusReport:
    """Counts everything that happens to documents, for the manifest and the summary line."""

    def __init__(self, source_names: list[str]):
        self.source_names = source_names
        self.documents_in = 0
        self.bytes_in = 0
        self.removed: Counter[str] = Counter()
        self.removed_examples: dict[str, list[dict]] = {}
        self.invalid_utf8_sequences = 0
        self.invalid_utf8_documents = 0
        self.mojibake_repaired = 0  # documents
        self.duplicates = {"exact_duplicate": 0, "near_duplicate": 0}
        self.cluster_examples: dict[int, dict] = {}

    def where(self, source: int, ordinal: int) -> str:
        """How the manifest names a document: path#N, N counting documents from 1 within the file."""
        return f"{self.source_names[source]}#{ordinal}"

    def remove(self, reason: str, source: int, ordinal: int, start: str) -> None:
        """A document failed a filter; `start` is the start of its text."""
        self.removed[reason] += 1
        self._example(reason, self.where(source, ordinal), start)

    def skip_file(self, reason: str, source: int) -> None:
        """A whole file was unusable (binary): it counts as one document in and one removed."""
        self.documents_in += 1
        self.removed[reason] += 1
        self._example(reason, self.source_names[source], "")

    def duplicate(self, match: Match, kept_where: str, source: int, ordinal: int, start: str) -> None:
        self.removed[match.reason] += 1
        self.duplicates[match.reason] += 1
        example = self.cluster_examples.get(match.kept_id)
        if example is None and len(self.cluster_examples) < DUPLICATE_CLUSTER_EXAMPLES:
            example = self.cluster_examples[match.kept_id] = {"kept": kept_where, "removed": []}
        if example is not None and len(example["removed"]) < DUPLICATES_PER_EXAMPLE:
            removed: dict[str, Any] = {"document": self.where(source, ordinal), "reason": match.reason}
            removed.update(similarity=round(match.similarity, 3), preview=start)
            example["removed"].append(removed)

    def _example(self, reason: str, document: str, start: str) -> None:
        examples = self.removed_examples.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append({"document": document, "preview": start})


def build_corpus(settings: CorpusSettings, run: RunDir) -> dict:
    """Build run/corpus/ from the inputs; return the manifest. Raises UserError on bad input."""
    started = time.monotonic()
    _check_settings(settings)
    sources = resolve_inputs(settings.inputs)
    reader = SourceReader(sources, settings.max_document_bytes(), settings.parquet_column)
    report = CorpusReport([s.name for s in sources])

    with atomic_directory(run.corpus) as staging:
        writer = CorpusWriter(staging, shard_bytes=settings.shard_mb << 20)
        assembler = _Assembler(settings, writer, report, scratch=staging)
        results = ordered_map(
            process_chunk_in_worker,
            _chunks(reader),
            workers=settings.resolved_workers(),
            initializer=init_worker,
            initargs=(settings.processing(),),
        )
        bar = progress(total=sum(s.size for s in sources), unit="B", unit_scale=True, desc="data")
        try:
            for locations, outcomes in results:
                for location, outcome in zip(locations, outcomes):
                    assembler.add(location, outcome)
                bar.update(reader.disk_bytes_read - bar.n)
                rate = report.documents_in / max(time.monotonic() - started, 1e-9)
                bar.set_postfix_str(f"{report.documents_in:,} docs, {rate:,.0f} docs/s", refresh=False)
            moved = assembler.finish()
        finally:
            results.close()  # stops the worker pool at once if anything went wrong
            bar.close()
            assembler.close()  # its scratch files must be gone before the staging directory is published
        for index, reason in reader.skipped.items():
            report.skip_file(reason, index)
        summary = writer.close()
        _check_not_empty(summary, report, reader)
        _warn_skipped(reader)
        seconds = time.monotonic() - started
        manifest = _manifest(settings, sources, reader, report, summary, assembler.dedup, moved, seconds)
        atomic_write_json(staging / "manifest.json", manifest)

    run.record_config("data", settings.to_dict())
    counts = manifest["counts"]
    run.log_metrics(
        {
            "stage": "data",
            "documents_in": counts["documents_in"],
            "documents_out": counts["documents_out"],
            "seconds": round(seconds, 3),
        }
    )
    return manifest


class _Assembler:
    """The main-process side: sees every outcome in input order, deduplicates, splits, writes."""

    def __init__(self, settings: CorpusSettings, writer: CorpusWriter, report: CorpusReport, scratch: Path):
        self.val_fraction = settings.val_fraction
        self.writer = writer
        self.report = report
        self.dedup = None
        self._scratch = Path(tempfile.mkdtemp(prefix=".scratch-", dir=scratch))
        if settings.dedup != "off":
            near = settings.near_dup_threshold if settings.dedup == "near" else None
            self.dedup = Deduplicator(near, settings.minhash_perms, directory=self._scratch)
        # (source, ordinal) of each kept document, to name the original of a duplicate in examples.
        self._kept_where = RowFile(self._scratch / "kept_where.u32", 2, np.uint32)
        # With --val-fraction 0 an empty val split is what was asked for.
        self._held = _OneSplitSoFar(self._scratch / "held.jsonl") if self.val_fraction > 0 else None

    def finish(self) -> dict | None:
        """Write the documents still held back. If they all went to one split, one of them moves
        to the other (a single document goes to train); return what moved, for the manifest."""
        held, self._held = self._held, None
        if held is None:
            return None
        moved = held.write_to(self.writer, move_one=held.count >= 2 or held.split == "val")
        held.close()
        if moved is None:
            return None
        (source, ordinal), from_split = moved
        to_split = "val" if from_split == "train" else "train"
        return {"document": self.report.where(source, ordinal), "from": from_split, "to": to_split}

    def close(self) -> None:
        """Delete the scratch files (the duplicate index); the counts stay readable."""
        if self.dedup is not None:
            self.dedup.close()
        if self._held is not None:
            self._held.close()
        self._kept_where.close()
        shutil.rmtree(self._scratch, ignore_errors=True)

    def add(self, location: tuple[int, int, int], outcome: Kept | Removed) -> None:
        source, ordinal, size = location
        report = self.report
        report.documents_in += 1
        report.bytes_in += size
        if outcome.invalid_utf8:
            report.invalid_utf8_sequences += outcome.invalid_utf8
            report.invalid_utf8_documents += 1
        report.mojibake_repaired += outcome.mojibake_repaired
        if isinstance(outcome, Removed):
            report.remove(outcome.reason, source, ordinal, outcome.preview)
            return
        if self.dedup is not None:
            signature = None if outcome.signature is None else np.frombuffer(outcome.signature, dtype=np.uint32)
            match = self.dedup.check(outcome.key, signature)
            if match is not None:
                kept_source, kept_ordinal = (int(v) for v in self._kept_where[match.kept_id])
                kept_where = report.where(kept_source, kept_ordinal)
                report.duplicate(match, kept_where, source, ordinal, preview(outcome.text))
                return
            self._kept_where.append((source, ordinal))
        fraction = key_fraction(outcome.key)
        split = "val" if fraction < self.val_fraction else "train"
        if self._held is not None:
            if self._held.split in (None, split):
                self._held.add(split, outcome.text, abs(fraction - self.val_fraction), (source, ordinal))
                return
            self._held.write_to(self.writer, move_one=False)  # both splits have documents now
            self._held.close()
            self._held = None
        self.writer.add(split, outcome.text)


class _OneSplitSoFar:
    """Kept documents, held in a scratch file for as long as every one so far went to the same split.

    The hash rule splits per document, so a small corpus (one book cut into a dozen chapters) can
    send every document to train, leaving val empty and pretraining without a validation loss.
    Held documents are written out, in order, as soon as a document goes to the other split: each
    split's shards are then byte for byte what writing them at once would give. If that never
    happens, the held document whose hash came closest to --val-fraction moves to the other split.
    """

    def __init__(self, path: Path):
        self._file = open(path, "w+", encoding="utf-8", newline="\n")  # one JSON string a line
        self.split: str | None = None
        self.count = 0
        self._closest: tuple[float, int, tuple[int, int]] | None = None  # distance to the threshold, index, where

    def add(self, split: str, text: str, distance: float, where: tuple[int, int]) -> None:
        self._file.write(json.dumps(text, ensure_ascii=False) + "\n")
        if self._closest is None or distance < self._closest[0]:
            self._closest = (distance, self.count, where)
        self.split = split
        self.count += 1

    def write_to(self, writer: CorpusWriter, move_one: bool) -> tuple[tuple[int, int], str] | None:
        """Write the held documents to their split, or the closest one to the other if `move_one`;
        return where the one moved came from (source, ordinal) and the split it left."""
        if self.split is None or self._closest is None:
            return None  # nothing held
        held_split, other_split = self.split, "val" if self.split == "train" else "train"
        moving = self._closest[1] if move_one else -1
        self._file.seek(0)
        for index, line in enumerate(self._file):
            writer.add(other_split if index == moving else held_split, json.loads(line))
        return (self._closest[2], held_split) if move_one else None

    def close(self) -> None:
        self._file.close()


def _chunks(documents: Iterable[RawDocument]) -> Iterator[tuple[list, list]]:
    """Group documents into jobs of bounded size; locations stay here, payloads go to a worker."""
    for batch in size_bounded_batches(documents, CHUNK_BYTES, CHUNK_DOCUMENTS, size=_payload_size):
        yield ([(d.source, d.ordinal, _payload_size(d)) for d in batch], [(d.kind, d.payload) for d in batch])


def _payload_size(doc: RawDocument) -> int:
    return len(doc.payload) if doc.payload is not None else 0


def _warn_skipped(reader: SourceReader, most: int = 5) -> None:
    skipped = list(reader.skipped.items())
    for index, reason in skipped[:most]:
        say(f"warning: skipped {reader.sources[index].name}: looks {reason}, not text")
    if len(skipped) > most:
        say(f"warning: skipped {len(skipped) - most} more files that look binary (listed in the manifest)")


def _check_settings(s: CorpusSettings) -> None:
    limits = s.limits
    problems = []
    if s.dedup not in DEDUP_MODES:
        problems.append(f"--dedup must be one of {', '.join(DEDUP_MODES)}")
    if not 0 < s.near_dup_threshold <= 1:
        problems.append("--near-dup-threshold must be in (0, 1]")
    if not 16 <= s.minhash_perms <= 1024:
        problems.append("--minhash-perms must be between 16 and 1024")
    if s.shingle_words < 1:
        problems.append("--shingle-words must be at least 1")
    if not 0 <= s.val_fraction < 1:
        problems.append("--val-fraction must be in [0, 1)")
    if s.workers < 0:
        problems.append("--workers must be 0 (all cores) or more")
    if s.shard_mb < 1:
        problems.append("--shard-mb must be at least 1")
    if limits.min_chars < 0 or limits.max_chars < max(1, limits.min_chars):
        problems.append("need 0 <= --min-chars <= --max-chars and --max-chars >= 1")
    for name in ("min_letter_fraction", "max_non_text_fraction", "max_repeated_line_fraction"):
        if not 0 <= getattr(limits, name) <= 1:
            problems.append(f"--{name.replace('_', '-')} must be in [0, 1]")
    if not s.jsonl_field or not s.parquet_column:
        problems.append("--jsonl-field and --parquet-column must not be empty")
    if problems:
        raise UserError("; ".join(problems))


def _check_not_empty(summary: dict, report: CorpusReport, reader: SourceReader) -> None:
    kept = sum(split["documents"] for split in summary["splits"].values())
    if report.documents_in == len(reader.skipped):
        detail = f" ({len(reader.skipped)} of {len(reader.sources)} files are binary)" if reader.skipped else ""
        raise UserError(f"the inputs hold no text{detail}; point --input at text files")
    if kept == 0:
        reasons = ", ".join(f"{reason} {count:,}" for reason, count in report.removed.most_common())
        raise UserError(
            f"all {report.documents_in:,} documents were removed ({reasons}); "
            "check --input, --boundary and --jsonl-field, or loosen the filter thresholds"
        )
    if summary["splits"]["train"]["documents"] == 0:
        raise UserError(f"all {kept:,} kept documents went to validation; lower --val-fraction")


def _manifest(settings, sources, reader, report, summary, dedup, moved, seconds) -> dict:
    splits = summary["splits"]
    documents_out = sum(s["documents"] for s in splits.values())
    inputs = []
    for index, source in enumerate(sources):
        inputs.append(
            {
                "path": source.name,
                "sha256": sha256_file(source.path),
                "bytes": source.size,
                "format": source.format,
                "compression": source.compression,
                "boundary": source.boundary.spec if source.format in ("text", "html") else "record",
                "documents": reader.documents[index],
                "auto_split": reader.auto_splits[index].to_dict() if index in reader.auto_splits else None,
                "skipped": reader.skipped.get(index),
            }
        )
    duplicates: dict[str, Any] = {
        "exact": {"removed": report.duplicates["exact_duplicate"]},
        "near": {"removed": report.duplicates["near_duplicate"]},
        "clusters": dedup.clusters if dedup is not None else 0,
        "examples": list(report.cluster_examples.values()),
    }
    if dedup is not None and dedup.lsh_bands:
        duplicates["near"]["lsh_bands"], duplicates["near"]["lsh_rows"] = dedup.lsh_bands
    return {
        "format": corpus_shards.FORMAT,
        "version": corpus_shards.VERSION,
        "corpus_hash": summary["corpus_hash"],
        "splits": splits,
        "split_moved": moved,
        "created_by": f"ownllm {__version__} data",
        "counts": {
            "files": len(sources),
            "files_skipped": len(reader.skipped),
            "documents_in": report.documents_in,
            "documents_out": documents_out,
            "bytes_in": report.bytes_in,
            "bytes_out": sum(s["bytes"] for s in splits.values()),
        },
        "removed": dict(sorted(report.removed.items())),
        "removed_examples": report.removed_examples,
        "duplicates": duplicates,
        "invalid_utf8": {
            "sequences_replaced": report.invalid_utf8_sequences,
            "documents": report.invalid_utf8_documents,
        },
        "mojibake_repaired": {"documents": report.mojibake_repaired},
        "inputs": inputs,
        "settings": settings.to_dict(),
        "seconds": round(seconds, 3),
    }
