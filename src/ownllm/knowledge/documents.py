"""Reading a person's documents as plain text: .txt, .md, .html, .jsonl and .pdf.

    text = read_document(Path("notes.md"))      # UserError (one line) for what cannot be read

HTML keeps its text, not its markup (scripts and styles dropped); JSON Lines takes each line's
"text" field (or its "content", or its "question" and "answer"); PDF is read with pypdf, page
by page, and a file that is not a readable PDF is refused rather than half-read. Everything is
capped at MAX_CHARS of text so one huge file cannot fill the knowledge base.
"""

from __future__ import annotations

import html.parser
import json
from pathlib import Path

from ownllm.core.errors import UserError

SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".jsonl", ".pdf")
MAX_CHARS = 20_000_000


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


def _jsonl_text(raw: str, path: Path) -> str:
    texts = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path} line {number} is not JSON; fix or remove that line") from None
        if not isinstance(row, dict):
            raise UserError(f"{path} line {number} is not a JSON object")
        text = row.get("text") or row.get("content")
        if text is None and "question" in row and "answer" in row:
            text = f"{row['question']}\n{row['answer']}"
        if isinstance(text, str) and text.strip():
            texts.append(text)
    return "\n\n".join(texts)


def _pdf_text(path: Path) -> str:
    from pypdf import PdfReader  # lazy: start-up (only PDFs need it)
    from pypdf.errors import PdfReadError  # lazy: with pypdf

    try:
        reader = PdfReader(path)
        pages, size = [], 0
        for page in reader.pages:
            text = page.extract_text() or ""
            size += len(text)
            if size > MAX_CHARS:
                raise UserError(f"{path} holds more than {MAX_CHARS:,} characters of text; split it")
            pages.append(text)
    except (PdfReadError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a readable PDF ({type(e).__name__}: {str(e)[:80]})") from None
    return "\n\n".join(pages)


def read_document(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(f"{path}: {suffix or 'no suffix'} is not a document type ownllm reads ({', '.join(SUFFIXES)})")
    if suffix == ".pdf":
        return _pdf_text(path)
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise UserError(f"{path} looks binary (NUL bytes), not {suffix} text")
    raw = data.decode("utf-8", errors="replace")
    if len(raw) > MAX_CHARS:
        raise UserError(f"{path} holds more than {MAX_CHARS:,} characters; split it")
    if suffix in (".html", ".htm"):
        return html_text(raw)
    if suffix == ".jsonl":
        return _jsonl_text(raw, path)
    return raw
