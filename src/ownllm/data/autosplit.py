"""The `auto` boundary: a long text file cut into documents at natural boundaries.

A newcomer's first corpus is often one file: a book. As one document it lands wholly in train
or wholly in val (the split is per document), so the validation split comes out empty and
pretraining refuses to start. `--boundary auto`, the default for --input, keeps a plain-text
file whole only while it is small (at most 64 KiB: a story, a note, one of a folder of them) and
cuts a larger one into documents:

- at chapter headings ("CHAPTER I.", "Chapter 2 THE SHADOW", "BOOK ONE", "IV. MR. BADGER", a
  line holding only "XII"), when its first MiB has at least two: a document per chapter, and a
  chapter over 64 KiB cut further at paragraph breaks;
- otherwise into runs of whole paragraphs (blank-line separated) of up to 16 KiB.

A paragraph is cut only when it alone is over the size limit, and then at the last sentence
end in the window (else line break, else space). No document is cut off under 1 KiB (a heading
right after another joins the next chapter, a short tail joins the document before), so cutting
never makes a piece that --min-chars would remove. Documents are exact slices of the file: no
byte is added, lost or reordered, and where the cuts fall depends only on the bytes, never on
how the stream was read. A Project Gutenberg header and licence are dropped here, because
cleaning finds them only in a whole book, not in a slice of one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

from ownllm.data.cleaning import GUTENBERG_END_BYTES, GUTENBERG_START_BYTES

# A paragraph break: a line break followed by one or more blank lines (the blank-line boundary).
PARAGRAPH_BREAK = re.compile(rb"\r?\n(?:[ \t\f\v]*\r?\n)+")
# A break must end this far before the end of the bytes read so far (unless the stream has
# ended): room for a regex lookahead and for runs such as many blank lines.
LOOKAHEAD_BYTES = 1024

_ROMAN = rb"(?=[IVXLC])C{0,3}(?:XC|XL|L?X{0,3})(?:IX|IV|V?I{0,3})(?<=[IVXLC])"  # I to CCCXCIX, never empty
_NUMBER_WORD = (
    rb"(?i:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen"
    rb"|seventeen|eighteen|nineteen|twenty)"
)
# The first line of a paragraph that starts a chapter (optionally a Markdown heading).
_HEADING = re.compile(
    rb"[ \t]*(?:#{1,6}[ \t]+)?(?:"
    rb"(?:CHAPTER|Chapter|BOOK|Book|PART|Part|STAVE|Stave)[ \t]+(?:\d+|" + _ROMAN + rb"|" + _NUMBER_WORD + rb")\b.*"
    rb"|" + _ROMAN + rb"\.?"  # a numeral alone: "XII", "IV."
    rb"|" + _ROMAN + rb"\.[ \t]+[^a-z]+"  # a numeral and a title in capitals: "IV. MR. BADGER"
    rb")[ \t]*\r?"
)
_HEADING_LINE_MAX_BYTES = 80

# Where a paragraph too long for one document is cut, best first: after a sentence end (with
# any closing quotes or brackets, ASCII or curly), after a line break, after a space.
_SENTENCE_END = re.compile(rb"[.!?](?:[\"')\]]|\xe2\x80[\x99\x9d])*[ \t\r\n]+")
_LINE_END = re.compile(rb"\n")
_SPACE = re.compile(rb"[ \t]+")


@dataclass(frozen=True)
class SplitSizes:
    """The sizes the rules above use, in bytes (tests pass small ones)."""

    split_above: int = 64 << 10  # files up to this size stay one document
    paragraphs_target: int = 16 << 10  # without chapter headings, documents of whole paragraphs up to this
    chapter_limit: int = 64 << 10  # a chapter longer than this is cut at paragraph breaks
    min_document: int = 1 << 10  # no document is cut off shorter than this
    heading_scan: int = 1 << 20  # chapter headings are looked for in this much of the start of the file
    min_headings: int = 2  # this many make the file one with chapters


@dataclass
class SplitReport:
    """What was done to one file, for the manifest and the summary line."""

    at: str  # "chapter headings" or "paragraphs": which rule was used
    text_bytes: int  # bytes of text cut into documents (a Gutenberg header and licence not counted)
    chapter_headings: int = 0  # cuts before a chapter heading
    paragraph_breaks: int = 0  # cuts between paragraphs, where a document reached the size limit
    inside_paragraphs: int = 0  # cuts inside a paragraph too long for one document
    gutenberg_dropped: bool = False

    def count_cut(self, kind: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)

    def to_dict(self) -> dict:
        return asdict(self)


class AutoSplitter:
    """Cuts one text stream into documents by the rules above; `report` says what it did.

    `max_document_bytes` is the reader's limit (4 bytes a character of --max-chars, plus 4):
    documents are kept to at most --max-chars bytes, so cutting never makes one too long.
    """

    def __init__(self, max_document_bytes: int, sizes: SplitSizes = SplitSizes()):
        self.max_document_bytes = max_document_bytes
        self.sizes = sizes
        self.report: SplitReport | None = None  # None: the file stayed whole

    def split(self, chunks: Iterable[bytes]) -> Iterator[bytes | None]:
        """Yield the documents; a small file is one document (None if over the size limit), as with `file`."""
        sizes = self.sizes
        stream = iter(chunks)
        head, ended = _read_at_least(stream, max(sizes.heading_scan, sizes.split_above + 1))
        if ended and len(head) <= sizes.split_above:
            if head.strip():
                yield head if len(head) <= self.max_document_bytes else None
            return

        start = GUTENBERG_START_BYTES.search(head, 0, sizes.heading_scan)
        if start:
            head = head[start.end() :]
        chapters = _count_headings(head[: sizes.heading_scan], sizes.min_headings) >= sizes.min_headings
        limit = sizes.chapter_limit if chapters else sizes.paragraphs_target
        longest = self.max_document_bytes // 4 - 1  # --max-chars
        limit = max(256, min(limit, longest - 2 * sizes.min_document))  # short ends may join: see _pack
        self.report = SplitReport("chapter headings" if chapters else "paragraphs", 0, gutenberg_dropped=bool(start))
        pieces = self._before_gutenberg_end(paragraph_pieces(_chain_first(head, stream), limit))
        yield from self._pack(pieces, limit, chapters)

    def _before_gutenberg_end(self, pieces: Iterator[tuple[bytes, bool]]) -> Iterator[tuple[bytes, bool]]:
        """The pieces up to a Project Gutenberg footer; reading stops there."""
        assert self.report is not None
        for piece, starts_paragraph in pieces:
            if b"utenberg" in piece or b"UTENBERG" in piece:
                end = GUTENBERG_END_BYTES.search(piece)
                if end:
                    if end.start():
                        yield piece[: end.start()], starts_paragraph
                    self.report.gutenberg_dropped = True
                    return
            yield piece, starts_paragraph

    def _pack(self, pieces: Iterable[tuple[bytes, bool]], limit: int, chapters: bool) -> Iterator[bytes]:
        """Group paragraph pieces into documents: a new one at a chapter heading or at the size limit.

        Each document is held back one step, so that a short piece left after a size cut (the
        end of a long chapter, or of the file) can still join it rather than stand alone.
        """
        report = self.report
        assert report is not None
        smallest = self.sizes.min_document
        held: bytes | None = None  # the document before `current`, not given out yet
        held_cut: str | None = None  # the kind of cut between `held` and `current` (a SplitReport count)
        current = bytearray()
        for piece, starts_paragraph in pieces:
            report.text_bytes += len(piece)
            at_heading = chapters and starts_paragraph and is_heading(piece)
            if len(current) < smallest:
                if held is not None and at_heading and held_cut != "chapter_headings":
                    held, current, held_cut = held + current, bytearray(), "chapter_headings"  # the cut moves here
                current += piece
                continue
            if at_heading or len(current) + len(piece) > limit:
                if held is not None and held_cut is not None:
                    yield held
                    report.count_cut(held_cut)
                held, current = bytes(current), bytearray()
                if at_heading:
                    held_cut = "chapter_headings"
                else:
                    held_cut = "paragraph_breaks" if starts_paragraph else "inside_paragraphs"
            current += piece
        if held is not None and len(current) < smallest:
            held, current = held + current, bytearray()  # a short tail joins the document before
        elif held_cut is not None:
            report.count_cut(held_cut)
        if held is not None:
            yield held
        if current.strip():
            yield bytes(current)


def is_heading(paragraph: bytes) -> bool:
    """True if the paragraph's first line is a chapter heading."""
    first_line = paragraph[: _HEADING_LINE_MAX_BYTES + 8].lstrip(b"\r\n").split(b"\n", 1)[0]
    return len(first_line) <= _HEADING_LINE_MAX_BYTES and _HEADING.fullmatch(first_line) is not None


def _count_headings(text: bytes, enough: int) -> int:
    """How many paragraphs of `text` start with a chapter heading, counting no further than `enough`."""
    found = 0
    starts = [0] + [m.end() for m in PARAGRAPH_BREAK.finditer(text)]
    for start in starts:
        if is_heading(text[start : start + _HEADING_LINE_MAX_BYTES + 8]):
            found += 1
            if found >= enough:
                break
    return found


def paragraph_pieces(chunks: Iterable[bytes], limit: int) -> Iterator[tuple[bytes, bool]]:
    """Cut a byte stream into paragraphs, each with the break after it: (bytes, starts a paragraph).

    A paragraph longer than `limit` comes in pieces of at most `limit` bytes (plus the break
    after the last one), cut by `_cut_point`; every piece but the first says False. The pieces
    joined are the stream. Memory holds one chunk and at most `limit` bytes more.
    """
    pending = b""
    start = 0  # pending[:start] has been yielded
    starts_paragraph = True
    iterator = iter(chunks)
    chunk = next(iterator, None)
    while chunk is not None:
        following = next(iterator, None)
        at_end = following is None
        pending = pending[start:] + chunk
        start = 0
        settled = len(pending) if at_end else len(pending) - LOOKAHEAD_BYTES  # no later byte can move a cut here
        found = PARAGRAPH_BREAK.search(pending)
        while True:
            if found is not None and found.start() < start:
                found = PARAGRAPH_BREAK.search(pending, start)
            if found is not None and found.start() - start <= limit:
                if found.end() > settled:
                    break  # the break may grow with the next chunk
                yield pending[start : found.end()], starts_paragraph
                start, starts_paragraph = found.end(), True
                found = PARAGRAPH_BREAK.search(pending, start)
            elif settled - start > limit:  # no break in the next `limit` bytes: cut inside the paragraph
                cut = _cut_point(pending, start, limit)
                yield pending[start:cut], starts_paragraph
                start, starts_paragraph = cut, False
            else:
                break
        chunk = following
    if start < len(pending):
        yield pending[start:], starts_paragraph


def _cut_point(data: bytes, start: int, limit: int) -> int:
    """Where to end a piece that starts at `start` and may not exceed `limit` bytes.

    After the last sentence end, else line break, else space, in the second half of the window
    (so pieces are at least half the limit); with none, at the last character boundary.
    """
    window_end = start + limit
    for pattern in (_SENTENCE_END, _LINE_END, _SPACE):
        last = None
        for last in pattern.finditer(data, start + limit // 2, window_end):  # noqa: B007 (the last one is wanted)
            pass
        if last is not None:
            return last.end()
    cut = window_end
    while cut > start + 1 and data[cut] & 0xC0 == 0x80:  # a UTF-8 continuation byte: not a character start
        cut -= 1
    return cut


def _read_at_least(stream: Iterator[bytes], size: int) -> tuple[bytes, bool]:
    """At least `size` bytes from the start of the stream (or all of it) and whether it ended."""
    parts, total = [], 0
    for part in stream:
        parts.append(part)
        total += len(part)
        if total >= size:
            return b"".join(parts), False
    return b"".join(parts), True


def _chain_first(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest
