"""Reading a person's documents as plain text: .txt, .md, .html, .jsonl and .pdf.

    text = read_document(Path("notes.md"))                        # UserError (one line) for what cannot be read
    text = parse_document(data, "notes.md", ReadLimits(...))      # the same from bytes (uploads)

HTML keeps its text, not its markup (scripts and styles dropped); JSON Lines takes each line's
"text" field (or its "content", or its "question" and "answer"); PDF is read with pypdf, page
by page, and a file that is not a readable PDF is refused rather than half-read.

What is not text is refused, not indexed as junk: a NUL byte anywhere, or invalid UTF-8 in
more than MAX_INVALID_SHARE of the characters (a few stray Latin-1 bytes in a text are kept,
as U+FFFD). Every document is bounded (ReadLimits): at most `max_chars` of text, and a PDF at
most `max_pages` pages read within `seconds`. A PDF is also a compressed container, so a small
file can hold a "bomb" (a stream that inflates to gigabytes, or many pages of it): each stream
may decompress to at most PDF_STREAM_BYTES (pypdf's own limits, lowered from its 75 MB), and
each page's decompressed streams are dropped once its text is out, so memory stays that of
one page, not of all. The errors say which kind of refusal it is (UnsupportedDocument,
UnreadableDocument, DocumentTooLarge; all UserErrors), so the server can answer 415, 422, 413.
"""

from __future__ import annotations

import html.parser
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ownllm.core.errors import UserError

SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".jsonl", ".pdf")
MAX_CHARS = 20_000_000
MAX_PDF_PAGES = 5_000
PDF_SECONDS = 300.0
PDF_STREAM_BYTES = 10 << 20  # one decompressed PDF stream (a page's content, a font) at most
MAX_INVALID_SHARE = 0.01  # characters that are not UTF-8, beyond which a file is not text


class UnsupportedDocument(UserError):
    """Not a type ownllm reads (by its suffix)."""


class UnreadableDocument(UserError):
    """Not what its suffix says: binary, not UTF-8, a broken PDF or JSON Lines file."""


class DocumentTooLarge(UserError):
    """More text, pages, decompressed bytes or reading time than the limits allow."""


@dataclass(frozen=True)
class ReadLimits:
    max_chars: int = MAX_CHARS
    max_pages: int = MAX_PDF_PAGES
    seconds: float = PDF_SECONDS  # reading a PDF's text, checked after each page


class _Text(html.parser.HTMLParser):
    SKIP = {"script", "style", "head", "noscript"}
    BLOCKS = {"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "section", "article", "pre"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP and self.skipping:
            self.skipping -= 1
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def html_text(markup: str) -> str:
    parser = _Text()
    parser.feed(markup)
    parser.close()
    text = "".join(parser.parts)
    return "\n\n".join(" ".join(p.split()) for p in text.split("\n\n") if p.strip())


def _jsonl_text(raw: str, name: str) -> str:
    texts = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise UnreadableDocument(f"{name} line {number} is not JSON; fix or remove that line") from None
        if not isinstance(row, dict):
            raise UnreadableDocument(f"{name} line {number} is not a JSON object")
        text = row.get("text") or row.get("content")
        if text is None and "question" in row and "answer" in row:
            text = f"{row['question']}\n{row['answer']}"
        if isinstance(text, str) and text.strip():
            texts.append(text)
    return "\n\n".join(texts)


def _pdf_text(data: bytes, name: str, limits: ReadLimits) -> str:
    from pypdf import PdfReader, apply_configuration  # lazy: start-up (only PDFs need it)
    from pypdf.errors import LimitReachedError  # lazy: with pypdf

    cap = PDF_STREAM_BYTES
    deadline = time.monotonic() + limits.seconds
    try:
        with apply_configuration(
            zlib_maximum_output_length=cap,
            lzw_maximum_output_length=cap,
            run_length_maximum_output_length=cap,
            brotli_maximum_output_length=cap,
            jbig2_maximum_output_length=cap,
            array_based_stream_maximum_output_length=cap,
        ):
            reader = PdfReader(io.BytesIO(data))
            count = len(reader.pages)
            if count > limits.max_pages:
                raise DocumentTooLarge(f"{name} has {count:,} pages, more than {limits.max_pages:,}; split it")
            pages, size = [], 0
            for number, page in enumerate(reader.pages, 1):
                text = (page.extract_text() or "").replace("\x00", "")
                _forget_decoded(page)
                size += len(text)
                if size > limits.max_chars:
                    raise DocumentTooLarge(f"{name} holds more than {limits.max_chars:,} characters of text; split it")
                if time.monotonic() > deadline:
                    raise DocumentTooLarge(
                        f"{name}: reading its text took more than {limits.seconds:g} s "
                        f"(page {number} of {count}); split it"
                    )
                pages.append(text)
    except UserError:
        raise
    except LimitReachedError as e:
        raise DocumentTooLarge(
            f"{name} is past the limits on reading a PDF (a stream inflating past {cap >> 20} MB, or too many "
            f"objects: {str(e)[:80]})"
        ) from None
    except Exception as e:  # pypdf on a hostile file raises whatever it trips on (IndexError, RecursionError ...)
        raise UnreadableDocument(f"{name} is not a readable PDF ({type(e).__name__}: {str(e)[:80]})") from None
    return "\n\n".join(pages)


def _forget_decoded(page: Any) -> None:
    """Drop the decompressed content streams of a page whose text is out: pypdf keeps a stream's
    decoded bytes (`decoded_self`) as long as the reader lives, so a PDF of many pages that each
    inflate to PDF_STREAM_BYTES would otherwise hold them all."""
    contents = page.get("/Contents")
    contents = contents.get_object() if contents is not None else None
    for part in contents if isinstance(contents, list) else [contents]:
        stream = part.get_object() if part is not None else None
        if stream is not None and getattr(stream, "decoded_self", None) is not None:
            stream.decoded_self = None


def _text(data: bytes, name: str, suffix: str) -> str:
    """Bytes that should be UTF-8 text, as text; refused when they are not (see the module's docstring)."""
    if b"\x00" in data:
        raise UnreadableDocument(f"{name} looks binary (NUL bytes), not {suffix} text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raw = data.decode("utf-8-sig", errors="replace")
    invalid = raw.count("\ufffd")
    if invalid > MAX_INVALID_SHARE * len(raw):
        raise UnreadableDocument(
            f"{name} is not UTF-8 text ({invalid:,} of its {len(raw):,} characters are not); "
            f"save it as UTF-8 (or it is not {suffix} text at all)"
        )
    return raw


def check_suffix(name: str) -> str:
    """The document type of a file name (its suffix, lower case), or UnsupportedDocument."""
    suffix = Path(name).suffix.lower()
    if suffix not in SUFFIXES:
        raise UnsupportedDocument(
            f"{name}: {suffix or 'no suffix'} is not a document type ownllm reads ({', '.join(SUFFIXES)})"
        )
    return suffix


def parse_document(data: bytes, name: str, limits: ReadLimits = ReadLimits()) -> str:
    """The text of a document's bytes; `name` gives its type (suffix) and names it in errors."""
    suffix = check_suffix(name)
    if suffix == ".pdf":
        return _pdf_text(data, name, limits)
    if len(data) > 4 * limits.max_chars + 3:  # UTF-8 holds at most 4 bytes a character (and a BOM)
        raise DocumentTooLarge(f"{name} holds more than {limits.max_chars:,} characters; split it")
    raw = _text(data, name, suffix)
    if len(raw) > limits.max_chars:
        raise DocumentTooLarge(f"{name} holds more than {limits.max_chars:,} characters; split it")
    if suffix in (".html", ".htm"):
        return html_text(raw)
    if suffix == ".jsonl":
        return _jsonl_text(raw, name)
    return raw


def read_document(path: Path, limits: ReadLimits = ReadLimits()) -> str:
    check_suffix(str(path))
    return parse_document(path.read_bytes(), str(path), limits)
