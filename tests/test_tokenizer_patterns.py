"""Split patterns: presets, custom regexes, and freezing Unicode classes into literal ranges."""

from __future__ import annotations

import pytest
import regex

from ownllm.core.errors import UserError
from ownllm.tokenizer.patterns import GPT2_PATTERN, GPT4_PATTERN, freeze_pattern, resolve_pattern

SOME_CHARACTERS = "".join(chr(c) for c in range(0, 0x110000, 41) if not 0xD800 <= c < 0xE000)
TEXT = "Hello, world! It's 2024: naïve café, 日本語 😀 \u0558x\n\n\t  don'T  12345 -- ]^\\ " + SOME_CHARACTERS


@pytest.mark.parametrize(
    "template",
    [
        GPT4_PATTERN,
        GPT2_PATTERN,
        r"\p{L}+|\P{L}",
        r"[^\s\p{L}\p{N}]+|\w+|\s+",
        r"[]\p{N}]+|[^]\d]",  # a "]" right after "[" or "[^" is a literal
        r"\pL+|\d+|\S|\s",
        r"\\p{L}|[\\\p{N}]+|.|\n",  # an escaped backslash is not the start of a class escape
    ],
)
def test_frozen_pattern_splits_exactly_like_its_template(template):
    frozen = freeze_pattern(template)
    assert regex.findall(frozen, TEXT) == regex.findall(template, TEXT)


def test_freezing_replaces_every_unicode_class_by_literal_ranges():
    frozen = freeze_pattern(GPT4_PATTERN)
    assert not regex.search(r"\\[pPwWdDsS]", frozen)
    assert r"\u0041-\u005A" in frozen  # A-Z, inside the letter ranges


def test_presets_and_custom_patterns_resolve():
    assert resolve_pattern("gpt4") == ("gpt4", GPT4_PATTERN)
    assert resolve_pattern("gpt2") == ("gpt2", GPT2_PATTERN)
    assert resolve_pattern(r"\w+|\s+") == ("custom", r"\w+|\s+")
    with pytest.raises(UserError, match="neither a preset"):
        resolve_pattern("gpt5(")
    with pytest.raises(UserError, match="capturing groups"):
        resolve_pattern(r"(ab)+|.|\s")
