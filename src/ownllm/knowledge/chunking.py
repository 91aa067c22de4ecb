"""Cutting a document into passages for retrieval: whole sentences, paragraphs kept together, some overlap.

A passage must be small enough to sit in the model's context beside a question (the demo's
model reads 256 tokens) and large enough to hold a fact with its subject. So text is read as
sentences (a paragraph break also ends one), packed in order into chunks of at most
`max_chars`, and each chunk after the first starts with the last sentences of the one before,
up to `overlap_chars`, so a fact that straddles a border is whole in one of them. A single
sentence longer than `max_chars` is cut at white space (or, failing that, anywhere).

Chunks keep their character span in the document, so a citation can point at the passage.

Memory stays proportional to the text, whatever its shape: the sentence pattern is written so
that a sentence is matched without a backtracking entry per character (a 10 MB line used to
take 1.2 GB), and sentence spans are kept in two arrays of integers, not a list of tuples (a
10 MB text of two-character sentences: 80 MB rather than 700 MB).
"""

from __future__ import annotations

import re
from array import array
from dataclasses import dataclass

MAX_CHARS = 600
OVERLAP_CHARS = 120
# A sentence: up to its end mark (and closing quotes), a paragraph break, or the end of the text;
# single line breaks (wrapped lines) stay inside it. Runs of other characters are one repeat
# ([^.!?\n]*), which Python's re matches without remembering a position per character.
_SENTENCE = re.compile(r"[^.!?\n]*(?:\n(?![ \t]*\n)[^.!?\n]*)*(?:[.!?]+[\"')\]]*|\n[ \t]*\n|$)")


@dataclass(frozen=True)
class Chunk:
    start: int  # character offsets in the document
    end: int
    text: str


def _units(text: str, max_chars: int) -> tuple[array, array]:
    """(starts, ends) of the sentences, white space trimmed, none longer than max_chars."""
    starts, ends = array("q"), array("q")
    for match in _SENTENCE.finditer(text):
        start, end = match.span()
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        while end - start > max_chars:  # a run-on sentence: cut at the last space that fits
            cut = text.rfind(" ", start + 1, start + max_chars + 1)
            cut = cut if cut > start else start + max_chars
            starts.append(start)
            ends.append(cut)
            start = cut
            while start < end and text[start].isspace():
                start += 1
        if end > start:
            starts.append(start)
            ends.append(end)
    return starts, ends


def chunk_text(text: str, max_chars: int = MAX_CHARS, overlap_chars: int = OVERLAP_CHARS) -> list[Chunk]:
    if max_chars < 50 or not 0 <= overlap_chars < max_chars // 2:
        raise ValueError("max_chars must be at least 50 and overlap_chars under half of it")
    starts, ends = _units(text, max_chars)
    chunks: list[Chunk] = []
    covered, first = 0, 0  # units[:covered] are in a chunk; the next chunk starts at units[first]
    while covered < len(starts):
        i = _pack(starts, ends, first, max_chars)
        if i <= covered:  # the overlap leaves no room for a new sentence: start without it
            first = covered
            i = _pack(starts, ends, first, max_chars)
        start, end = starts[first], ends[i - 1]
        chunks.append(Chunk(start, end, text[start:end]))
        covered, previous_first = i, first
        first = i  # the next chunk repeats the last sentences of this one, up to overlap_chars
        while first - 1 > previous_first and ends[i - 1] - starts[first - 1] <= overlap_chars:
            first -= 1
    return chunks


def _pack(starts: array, ends: array, first: int, max_chars: int) -> int:
    """The end (exclusive) of the longest run of units from `first` that fits in max_chars (at least one)."""
    i = first
    while i < len(starts) and ends[i] - starts[first] <= max_chars:
        i += 1
    return max(i, first + 1)
