"""Cleaning: decoding, Unicode, control characters, whitespace, Gutenberg licences, HTML."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from ownllm.data.cleaning import (
    _normalize_lines,
    clean_text,
    decode_utf8,
    html_to_text,
    normalize_whitespace,
    strip_gutenberg,
)

GUTENBERG_BOOK = """\ufeffThe Project Gutenberg eBook of Alice's Adventures in Wonderland

This ebook is for the use of anyone anywhere in the United States and
most other parts of the world at no cost and with almost no restrictions
whatsoever.

Title: Alice's Adventures in Wonderland
Author: Lewis Carroll

*** START OF THE PROJECT GUTENBERG EBOOK ALICE'S ADVENTURES IN WONDERLAND ***

CHAPTER I.
Down the Rabbit-Hole

Alice was beginning to get very tired of sitting by her sister on the bank.

End of the Project Gutenberg EBook of Alice's Adventures in Wonderland

*** END OF THE PROJECT GUTENBERG EBOOK ALICE'S ADVENTURES IN WONDERLAND ***

Section 1. General Terms of Use and Redistributing Project Gutenberg-tm
electronic works
"""


def test_invalid_utf8_is_replaced_and_counted_but_real_replacement_chars_are_not():
    assert decode_utf8("café".encode()) == ("café", 0)
    text, invalid = decode_utf8(b"caf\xe9 au lait \xff\xfe ok \xef\xbf\xbd")
    assert text == "caf\ufffd au lait \ufffd\ufffd ok \ufffd"
    assert invalid == 3  # \xe9, \xff and \xfe; the genuine U+FFFD (EF BF BD) at the end is not counted


def test_nfc_controls_and_line_endings():
    decomposed = "Cafe\u0301 cre\u0300me"
    assert unicodedata.normalize("NFC", decomposed) != decomposed
    cleaned = clean_text(f"{decomposed}\r\nline\x00two\x07\rthree\u2028four\ufeff\u200b")
    assert cleaned == "Café crème\nlinetwo\nthree\nfour"


def test_whitespace_is_normalised_but_indentation_kept():
    text = "  \n\nTitle\u00a0\u00a0here  \t \n\n\n\n    indented   verse line  \n\tcode\tline\n \n"
    assert normalize_whitespace(text) == "Title here\n\n    indented verse line\n\tcode line"


@given(st.text(alphabet=st.sampled_from(list("ab. \t\n\r\x0b\x1f\u00a0")), max_size=40))
def test_the_fast_path_agrees_with_the_general_one(text):
    assert normalize_whitespace(text) == _normalize_lines(text)
    assert normalize_whitespace(normalize_whitespace(text)) == normalize_whitespace(text)


def test_clean_text_is_idempotent_on_real_text(bundled_corpus):
    text = (bundled_corpus / "children-books" / "alice_in_wonderland.txt").read_text()
    once = clean_text(text)
    assert clean_text(once) == once
    assert "Alice was beginning to get very tired" in once
    assert len(once) > 0.99 * len(text.strip())  # clean text loses almost nothing


def test_gutenberg_header_and_footer_are_removed():
    text = clean_text(GUTENBERG_BOOK)
    assert text.startswith("CHAPTER I.\nDown the Rabbit-Hole")
    assert text.endswith("sitting by her sister on the bank.")
    assert "Gutenberg" not in text


def test_text_without_gutenberg_markers_is_untouched():
    text = "A story that mentions Project Gutenberg in passing.\nAnd nothing else."
    assert strip_gutenberg(text) == text


def test_html_markup_is_removed_and_text_kept():
    html = """<!DOCTYPE html><html><head><title>My page</title><meta charset="utf-8">
    <style>body { color: red }</style><script>var x = "<p>not text</p>";</script></head>
    <body><h1>Heading</h1><p>First   paragraph with <b>bold</b> and
    <a href="#">a link</a> &amp; an entity&nbsp;here.</p><ul><li>one</li><li>two</li></ul>
    <pre>  keep
    this</pre></body></html>"""
    text = clean_text(html_to_text(html))
    assert text == (
        "My page\n\nHeading\n\nFirst paragraph with bold and a link & an entity here.\n\n"
        "one\ntwo\n\n  keep\n    this"
    )
