"""Quality filters: drop documents that would teach a model little, and say why.

Each filter measures one property of the cleaned text against a threshold the user can set.
A document is removed for the first filter it fails, in this order:

    empty            nothing left after cleaning
    too_short        fewer than min_chars characters (fragments, headings, stray lines)
    too_long         more than max_chars characters (also bounds the memory one document takes)
    too_few_letters  letters are less than min_letter_fraction of the non-space characters
                     (tables of numbers, ASCII art, symbol soup, undecodable bytes)
    non_text         more than max_non_text_fraction of the non-space characters sit in
                     "words" longer than 40 characters, which no language has
                     (base64, hashes, minified code, long URLs)
    repeated_lines   more than max_repeated_line_fraction of the characters are in lines that
                     repeat an earlier line of the same document (boilerplate, menus, logs)
"""

from __future__ import annotations

import string
from dataclasses import dataclass

FILTER_REASONS = ("empty", "too_short", "too_long", "too_few_letters", "non_text", "repeated_lines")
LONG_TOKEN_CHARS = 40
_ASCII_LETTERS = string.ascii_letters.encode()
_ASCII = bytes(range(128))


@dataclass(frozen=True)
class QualityThresholds:
    """Defaults keep all of the bundled corpus's real stories and books (see docs/data.md)."""

    min_chars: int = 100
    max_chars: int = 5_000_000
    min_letter_fraction: float = 0.5
    max_non_text_fraction: float = 0.5
    max_repeated_line_fraction: float = 0.3


def quality_problem(text: str, limits: QualityThresholds) -> str | None:
    """The reason `text` should be removed, or None if it passes every filter."""
    if not text:
        return "empty"
    if len(text) < limits.min_chars:
        return "too_short"
    if len(text) > limits.max_chars:
        return "too_long"
    words = text.split()
    non_space = sum(map(len, words))
    if count_letters(text) < limits.min_letter_fraction * non_space:
        return "too_few_letters"
    if max(map(len, words)) > LONG_TOKEN_CHARS:
        in_long_words = sum(len(w) for w in words if len(w) > LONG_TOKEN_CHARS)
        if in_long_words > limits.max_non_text_fraction * non_space:
            return "non_text"
    if repeated_line_fraction(text) > limits.max_repeated_line_fraction:
        return "repeated_lines"
    return None


def count_letters(text: str) -> int:
    """Letters in any script. ASCII letters are counted with bytes.translate (C speed); only the
    non-ASCII characters, usually few, are tested one by one."""
    data = text.encode("utf-8")
    ascii_letters = len(data) - len(data.translate(None, _ASCII_LETTERS))
    if text.isascii():
        return ascii_letters
    # Deleting the ASCII bytes from UTF-8 leaves the multi-byte characters, still valid UTF-8.
    others = data.translate(None, _ASCII).decode("utf-8")
    return ascii_letters + sum(map(str.isalpha, others))


def repeated_line_fraction(text: str) -> float:
    """Share of the characters of non-blank lines that repeat an earlier line exactly."""
    seen: set[str] = set()
    total = repeated = 0
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        total += len(line)
        if line in seen:
            repeated += len(line)
        else:
            seen.add(line)
    return repeated / total if total else 0.0
