"""Finding the input files and cutting them into raw documents, in a fixed order.

An input is a file, a directory (searched recursively, names starting with "." skipped) or a
glob pattern. The extension says how a file is read, after an optional compression suffix:

    .txt .text .md .markdown     plain text, cut into documents by the boundary (--boundary; the
                                 default, auto, cuts only a long file: autosplit.py)
    .html .htm .xhtml            HTML, cut the same way; markup is removed later, in cleaning
    .jsonl .ndjson               one JSON record per line, one document per record (--jsonl-field)
    .parquet                     one document per row of a text column (--parquet-column)
    anything else                plain text, if it does not look binary
    + .gz .bz2 .zst .zstd        decompressed on the fly

Documents are raw bytes here; decoding and cleaning happen in worker processes. Reading
streams in 1 MiB chunks, so memory stays bounded whatever the size of a file: a document
that grows past the size limit is dropped unread (and counted as too long).
"""

from __future__ import annotations

import bz2
import contextlib
import glob
import gzip
import io
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import BinaryIO, cast

import zstandard

from ownllm.core.errors import UserError
from ownllm.data.autosplit import LOOKAHEAD_BYTES, PARAGRAPH_BREAK, AutoSplitter, SplitReport

CHUNK_BYTES = 1 << 20
BINARY_SNIFF_BYTES = 1 << 16

COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".zstd": "zstd"}
FORMATS = {
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".markdown": "text",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}

# The bundled default corpus: which file is cut how (see resources/corpus/LICENSES.md).
BUNDLED_CORPUS = (
    # Stories are separated by a single newline, paragraphs inside a story by a blank line:
    # a story ends at a newline that has a non-blank line on both sides.
    ("tinystories-train-prefix.txt", r"regex:(?<=\S)[ \t]*\n(?=[ \t]*\S)"),
    # Stories and paragraphs are both separated by blank lines, so story boundaries are
    # unknown: the file stays one document rather than being cut mid-story.
    ("tinystories-valid-prefix.txt", "file"),
    ("children-books", "file"),
    ("tinyshakespeare.txt", "file"),
)


@dataclass(frozen=True)
class Boundary:
    """How a text file is cut into documents.

    auto          the whole file, unless it is plain text over 64 KiB: then chapters or runs of
                  paragraphs (autosplit.py; the default for --input)
    file          the whole file is one document
    blank-line    paragraphs: runs of lines separated by one or more blank lines
    line          every non-blank line is a document
    delimiter:S   documents are separated by the literal string S, e.g. delimiter:<|endoftext|>
    regex:P       documents are separated by matches of the regular expression P
                  (Python syntax, matched against the UTF-8 bytes; lookaheads see <= 1 KiB)
    """

    spec: str
    separator: re.Pattern[bytes] | None  # None: one document per file (auto: unless it is long)
    auto: bool = False

    @classmethod
    def parse(cls, spec: str) -> Boundary:
        if spec == "auto":
            return cls(spec, None, auto=True)
        if spec == "file":
            return cls(spec, None)
        if spec == "blank-line":
            return cls(spec, PARAGRAPH_BREAK)
        if spec == "line":
            return cls(spec, re.compile(rb"\n"))
        kind, _, value = spec.partition(":")
        if kind == "delimiter" and value:
            return cls(spec, re.compile(re.escape(value.encode("utf-8"))))
        if kind == "regex" and value:
            try:
                return cls(spec, re.compile(value.encode("utf-8")))
            except re.error as e:
                raise UserError(f"--boundary {spec!r}: invalid regular expression ({e})") from None
        raise UserError(
            f"--boundary {spec!r} is not one of: auto, file, blank-line, line, delimiter:TEXT, regex:PATTERN"
        )


@dataclass(frozen=True)
class InputSpec:
    """One --input argument (a path, directory or glob) and how its text files are cut."""

    pattern: str
    boundary: Boundary


@dataclass(frozen=True)
class SourceFile:
    path: Path
    name: str  # how the manifest and messages name it
    format: str  # text, html, jsonl or parquet
    compression: str | None  # gzip, bz2, zstd or None
    boundary: Boundary
    size: int  # bytes on disk


@dataclass(frozen=True)
class RawDocument:
    source: int  # index of its SourceFile
    ordinal: int  # 1-based position within the file
    kind: str  # text, html or jsonl: how a worker turns the payload into text
    payload: bytes | None  # None: it outgrew the size limit and was dropped unread


def bundled_corpus() -> list[InputSpec]:
    root = Path(str(resources.files("ownllm.resources"))) / "corpus"
    return [InputSpec(str(root / name), Boundary.parse(boundary)) for name, boundary in BUNDLED_CORPUS]


def resolve_inputs(specs: Iterable[InputSpec]) -> list[SourceFile]:
    """Expand paths, directories and globs into a sorted, duplicate-free list of files."""
    found: list[SourceFile] = []
    seen: set[Path] = set()
    for spec in specs:
        for path in _expand(spec.pattern):
            real = path.resolve()
            if real not in seen:
                seen.add(real)
                found.append(_describe(path, spec.boundary))
    if not found:
        raise UserError("no input files given; pass --input PATH (files, directories or globs)")
    return found


def _expand(pattern: str) -> list[Path]:
    if any(c in pattern for c in "*?["):
        matches = sorted(glob.glob(pattern, recursive=True))
        if not matches:
            raise UserError(f"--input {pattern!r} matches no files; check the pattern")
    elif not os.path.exists(pattern):
        raise UserError(f"--input {pattern} does not exist; check the path")
    else:
        matches = [pattern]
    files: list[Path] = []
    for match in matches:
        path = Path(match)
        if path.is_dir():
            inside = _walk(path)
            if not inside:
                raise UserError(f"--input {path} is a directory with no files in it; point --input at your text")
            files.extend(inside)
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"--input {path} is not a regular file or directory")
    return files


def _walk(directory: Path) -> list[Path]:
    files: list[Path] = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(Path(root) / n for n in sorted(names) if not n.startswith("."))
    return files


def _describe(path: Path, boundary: Boundary) -> SourceFile:
    name = path.name.lower()
    compression = None
    for suffix, kind in COMPRESSIONS.items():
        if name.endswith(suffix):
            compression, name = kind, name[: -len(suffix)]
            break
    fmt = FORMATS.get(os.path.splitext(name)[1], "text")
    return SourceFile(path, display_name(path), fmt, compression, boundary, path.stat().st_size)


def display_name(path: Path) -> str:
    """How manifests name a file: as given, except the bundled corpus, named relative to the package
    (ownllm/resources/corpus/...) so that manifests do not depend on where ownllm is installed."""
    package = Path(__file__).resolve().parents[1]
    try:
        return str(Path("ownllm") / path.resolve().relative_to(package))
    except ValueError:
        return str(path)


class SourceReader:
    """Yields the raw documents of every source in order, and keeps per-file facts for the manifest."""

    def __init__(self, sources: list[SourceFile], max_document_bytes: int, parquet_column: str = "text"):
        self.sources = sources
        self.max_document_bytes = max_document_bytes
        self.parquet_column = parquet_column
        self.disk_bytes_read = 0  # for the progress bar
        self.documents = [0] * len(sources)
        self.skipped: dict[int, str] = {}  # source index -> reason ("binary")
        self.auto_splits: dict[int, SplitReport] = {}  # source index -> how the auto boundary cut it

    def __iter__(self) -> Iterator[RawDocument]:
        for index, source in enumerate(self.sources):
            done_before = self.disk_bytes_read
            try:
                yield from self._read(index, source)
            except (OSError, EOFError, zstandard.ZstdError) as e:
                detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
                raise UserError(f"cannot read {source.name}: {detail}; fix or remove the file") from None
            self.disk_bytes_read = done_before + source.size

    def _read(self, index: int, source: SourceFile) -> Iterator[RawDocument]:
        if source.format == "parquet":
            yield from self._read_parquet(index, source)
            return
        boundary = Boundary.parse("line") if source.format == "jsonl" else source.boundary
        with self._open(source) as stream:
            head = stream.read(CHUNK_BYTES)
            if looks_binary(head[:BINARY_SNIFF_BYTES]):
                self.skipped[index] = "binary"
                return
            chunks = _chain_first(head, iter(lambda: stream.read(CHUNK_BYTES), b""))
            splitter = AutoSplitter(self.max_document_bytes) if boundary.auto and source.format == "text" else None
            if splitter is not None:
                payloads = splitter.split(chunks)
            else:
                payloads = split_documents(chunks, boundary.separator, self.max_document_bytes)
            for payload in payloads:
                self.documents[index] += 1
                yield RawDocument(index, self.documents[index], source.format, payload)
            if splitter is not None and splitter.report is not None:
                self.auto_splits[index] = splitter.report

    @contextlib.contextmanager
    def _open(self, source: SourceFile) -> Iterator[BinaryIO]:
        with contextlib.ExitStack() as stack:
            # The counting reader, GzipFile and BZ2File are binary files, though typeshed does not call them BinaryIO.
            raw = cast(BinaryIO, stack.enter_context(_CountingReader(open(source.path, "rb"), self._count)))
            stream: BinaryIO
            if source.compression == "gzip":
                stream = cast(BinaryIO, stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb")))
            elif source.compression == "bz2":
                stream = cast(BinaryIO, stack.enter_context(bz2.BZ2File(raw, "rb")))
            elif source.compression == "zstd":
                reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
                stream = stack.enter_context(reader)
            else:
                stream = raw
            yield stream

    def _count(self, n: int) -> None:
        self.disk_bytes_read += n

    def _read_parquet(self, index: int, source: SourceFile) -> Iterator[RawDocument]:
        import pyarrow as pa  # lazy: start-up (only Parquet inputs pay for it)
        import pyarrow.parquet as pq  # lazy: as above

        text_types = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary)

        done_before = self.disk_bytes_read
        with contextlib.ExitStack() as stack:
            target: BinaryIO | Path
            if source.compression:
                # Parquet needs random access: decompress to a temporary file first (disk, not memory).
                target = stack.enter_context(tempfile.TemporaryFile())
                with self._open(source) as stream:
                    shutil.copyfileobj(stream, target, CHUNK_BYTES)
                target.seek(0)
            else:
                target = source.path
            try:
                parquet = pq.ParquetFile(target)
            except (pa.ArrowException, ValueError) as e:
                raise UserError(f"cannot read {source.name} as Parquet ({e}); fix or remove the file") from None
            column = self.parquet_column
            if column not in parquet.schema_arrow.names:
                names = ", ".join(parquet.schema_arrow.names)
                raise UserError(f"{source.name} has no column {column!r} (it has: {names}); pass --parquet-column")
            column_type = parquet.schema_arrow.field(column).type
            if not any(is_type(column_type) for is_type in text_types):
                raise UserError(
                    f"column {column!r} of {source.name} holds {column_type}, not text; pass --parquet-column"
                )
            rows = max(1, parquet.metadata.num_rows)
            for batch in parquet.iter_batches(batch_size=1024, columns=[column]):
                for value in batch.column(0).to_pylist():
                    self.documents[index] += 1
                    payload = value.encode("utf-8") if isinstance(value, str) else (value or b"")
                    if len(payload) > self.max_document_bytes:
                        payload = None
                    yield RawDocument(index, self.documents[index], "text", payload)
                self.disk_bytes_read = done_before + source.size * self.documents[index] // rows


def split_documents(
    chunks: Iterable[bytes], separator: re.Pattern[bytes] | None, max_bytes: int
) -> Iterator[bytes | None]:
    """Cut a stream of byte chunks into documents at `separator` matches.

    Yields each non-blank document, or None for one that grew past `max_bytes` (it is
    discarded as it streams past, so memory never holds more than about max_bytes).
    With no separator the whole stream is one document.
    """
    if separator is None:
        parts, size = [], 0
        for part in chunks:
            size += len(part)
            if size > max_bytes:
                yield None
                return
            parts.append(part)
        whole = b"".join(parts)
        if whole.strip():
            yield whole
        return

    pending = b""
    dropping = False  # the current document outgrew max_bytes; skip to the next separator
    iterator = iter(chunks)
    chunk = next(iterator, None)
    while chunk is not None:
        following = next(iterator, None)
        at_end = following is None
        pending += chunk
        start = 0
        for match in separator.finditer(pending):
            if not at_end and match.end() > len(pending) - LOOKAHEAD_BYTES:
                break
            piece = pending[start : match.start()]
            if dropping:
                yield None
                dropping = False
            elif piece.strip():
                yield piece
            start = match.end()
        pending = pending[start:]
        if len(pending) > max_bytes + LOOKAHEAD_BYTES:
            dropping = True
            pending = pending[-LOOKAHEAD_BYTES:]
        chunk = following
    if dropping:
        yield None
    elif pending.strip():
        yield pending


def looks_binary(head: bytes) -> bool:
    """True for data that is not text: a NUL byte, or many control bytes that text never has."""
    if b"\x00" in head:
        return True
    if not head:
        return False
    controls = sum(head.count(bytes([b])) for b in _BINARY_CONTROL_BYTES)
    return controls > 0.05 * len(head)


_BINARY_CONTROL_BYTES = [b for b in range(32) if b not in b"\t\n\r\f\v\b\x1b"] + [0x7F]


def _chain_first(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


class _CountingReader(io.RawIOBase):
    """A read-only file wrapper that reports how many bytes were read (for progress on compressed files)."""

    def __init__(self, raw: io.BufferedIOBase, on_read: Callable[[int], None]):
        self._raw = raw
        self._on_read = on_read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._raw.readinto(buffer)
        self._on_read(n or 0)
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()
