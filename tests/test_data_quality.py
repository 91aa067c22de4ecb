"""Quality filters: each removes what it names, keeps real prose, and follows its threshold."""

from __future__ import annotations

import base64
import random

import pytest

from ownllm.data.cleaning import clean_text
from ownllm.data.quality import QualityThresholds, count_letters, quality_problem, repeated_line_fraction

DEFAULT = QualityThresholds()
STORY = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun. "
    "One day, she saw a big red ball in the park. She ran to it and kicked it very high.\n\n"
    "Her friend Tom saw the ball and laughed. They played together until the sun went down."
)


def test_real_prose_passes_every_filter(bundled_corpus):
    assert quality_problem(STORY, DEFAULT) is None
    for name in ("tinyshakespeare.txt", "children-books/peter_rabbit.txt", "children-books/jungle_book.txt"):
        text = clean_text((bundled_corpus / name).read_text())
        assert quality_problem(text, DEFAULT) is None, name


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("Too short to teach anything.", "too_short"),
        ("x " * 3_000_000, "too_long"),
        ("\n".join(f"{i:>6} {i * 7.31:>12.2f} {i % 13:>4}" for i in range(50)), "too_few_letters"),
        ("╔══════╗ ║ ░░░ ║ ╚══════╝ " * 20, "too_few_letters"),
        ("data: " + base64.b64encode(random.Random(0).randbytes(600)).decode(), "non_text"),
        ("\n".join(["Home | About | Contact | Login"] * 20 + ["Welcome to the page."]), "repeated_lines"),
    ],
)
def test_each_filter_removes_what_it_names(text, reason):
    assert quality_problem(text, DEFAULT) == reason


def test_thresholds_are_configurable():
    short = "A short but fine sentence."
    assert quality_problem(short, DEFAULT) == "too_short"
    assert quality_problem(short, QualityThresholds(min_chars=10)) is None
    assert quality_problem(STORY, QualityThresholds(max_chars=100)) == "too_long"
    chorus = "\n".join(["La la la, sing along with me."] * 3 + ["A verse that is different, at last."] * 1)
    assert quality_problem(chorus, QualityThresholds(min_chars=10)) == "repeated_lines"
    assert quality_problem(chorus, QualityThresholds(min_chars=10, max_repeated_line_fraction=0.7)) is None
    digits = "In 1999 the shop sold 12,345 units and in 2000 it sold 23,456 units to buyers. " * 2
    assert quality_problem(digits, DEFAULT) is None  # 42 of 63 non-space characters are letters
    assert quality_problem(digits, QualityThresholds(min_letter_fraction=0.7)) == "too_few_letters"


def test_letters_count_in_every_script():
    assert count_letters("Hello, world! 123") == 10
    assert count_letters("Grüße, 你好, привет") == 4 + 1 + 2 + 6


def test_repeated_line_fraction_weighs_by_characters():
    speakers = (
        "ROMEO:\nA long line of verse that is spoken once.\n"
        "JULIET:\nAnother long line, also spoken once.\nROMEO:\nA third line."
    )
    # Only the second "ROMEO:" repeats: 6 of the characters.
    total = sum(len(line) for line in speakers.split("\n"))
    assert repeated_line_fraction(speakers) == pytest.approx(6 / total)
