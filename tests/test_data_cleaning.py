"""Cleaning: decoding, mojibake, Unicode, control characters, whitespace, Gutenberg licences, HTML."""

from __future__ import annotations

import subprocess
import sys
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ownllm.cli import main
from ownllm.data.cleaning import (
    _normalize_lines,
    clean_text,
    decode_utf8,
    html_to_text,
    normalize_whitespace,
    repair_mojibake,
    strip_gutenberg,
)
from ownllm.data.processing import DocumentProcessor, ProcessingSettings
from ownllm.data.quality import QualityThresholds
from ownllm.run import RunDir, corpus_shards

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
        "My page\n\nHeading\n\nFirst paragraph with bold and a link & an entity here.\n\none\ntwo\n\n  keep\n    this"
    )


# --- mojibake ---------------------------------------------------------------------------------

MOJIBAKE_MARKS = ("â€", "Ã", "Â", "ð")


def mojibake(text: str, drop_undefined: bool = False) -> str:
    """What a Windows-1252 decoder makes of UTF-8. The five bytes it has no character for
    (81 8D 8F 90 9D) become C1 controls, as in Latin-1, or are dropped."""
    chars = []
    for byte in text.encode("utf-8"):
        try:
            chars.append(bytes([byte]).decode("cp1252"))
        except UnicodeDecodeError:
            chars.append("" if drop_undefined else chr(byte))
    return "".join(chars)


@pytest.fixture(scope="module")
def tinystories_mojibake_lines(bundled_corpus) -> list[str]:
    lines = []
    for name in ("tinystories-train-prefix.txt", "tinystories-valid-prefix.txt"):
        lines += [line for line in (bundled_corpus / name).read_text().splitlines() if "â€" in line]
    return lines


def test_real_tinystories_lines_are_repaired(bundled_corpus):
    lines = (bundled_corpus / "tinystories-train-prefix.txt").read_text().splitlines()
    broken = next(line for line in lines if "annie was nosy and wanted" in line)
    assert "â€œbe careful not to touch it!â€ annie" in broken
    assert "“be careful not to touch it!” annie jumped back" in repair_mojibake(broken)
    # A closing quote at the end of a line lost its last byte (9D) in the source: only "â€" is left.
    broken = next(line for line in lines if line.startswith("Jimmy shouted, â€œmom"))
    assert repair_mojibake(broken) == "Jimmy shouted, “mom, look, I made a new friend, a mouse!”"
    broken = next(line for line in lines if "thatâ€™s very wise" in line)
    assert "“that’s very wise young lady. Now why don’t we just run away" in repair_mojibake(broken)


def test_every_mojibake_line_of_the_bundled_stories_is_repaired(tinystories_mojibake_lines):
    assert len(tinystories_mojibake_lines) > 1000  # 1,084 in the train prefix, 112 in the validation one
    for line in tinystories_mojibake_lines:
        fixed = repair_mojibake(line)
        assert "â€" not in fixed and "†" not in fixed, (line, fixed)  # no dagger from "â€ " either
        assert not any("\x80" <= c <= "\x9f" for c in fixed), (line, fixed)
        assert repair_mojibake(fixed) is fixed  # idempotent: repaired text needs no more repair


def test_mojibake_of_many_characters_round_trips():
    for text in [
        "She said, “I’m here” – and left… Then ‘hi’ — ok.",
        "Il était une fois un château, à côté d’un lac; «très» joli. Ça coûte 5 €.",
        "¡Mira mi muñeca! Über Größe. Emoji: 😀 and 🌟.",
        "Σήμερα ο καιρός. Сегодня хорошая погода.",
    ]:
        assert repair_mojibake(mojibake(text)) == text
    # Dropping byte 9D loses the end of every closing double quote; that one is given back.
    text = "“Yes,” she said. “Go!”\n“No.”"
    assert "\x9d" not in mojibake(text, drop_undefined=True)
    assert repair_mojibake(mojibake(text, drop_undefined=True)) == text


def test_correct_text_is_left_unchanged(bundled_corpus):
    correct = [
        "Âge tendre et tête de bois. Le château, l’âme, il gâche, «âpre»; où ça? À côté.",
        "São Tomé, irmã», coração, não. Größe, Ärger, Übel. Ñandú, año.",
        "Tiếng Việt có dấu: ôi, ồ, ỗ. Ô¡ is odd but not mojibake.",
        "Привет, мир! Καλημέρα κόσμε. 東京は晴れ。 مرحبا بالعالم. 😀 “curly” ‘quotes’ – dash… ﬁ ＡＢ",
        "A † dagger, a ‰ sign, a ™ mark and a € price, each in its place.",
    ]
    for text in correct:
        assert repair_mojibake(text) is text
    for path in sorted((bundled_corpus / "children-books").glob("*.txt")) + [bundled_corpus / "tinyshakespeare.txt"]:
        text = path.read_text()
        assert repair_mojibake(text) is text, path.name


def test_the_processor_repairs_and_reports_mojibake():
    processor = DocumentProcessor(ProcessingSettings(limits=QualityThresholds(min_chars=10)))
    broken = "Tom said, â€œwe canâ€™t go.â€\nMom said, â€œyes we can!â€\n"
    kept = processor.process("text", broken.encode())
    assert kept.text == "Tom said, “we can’t go.”\nMom said, “yes we can!”"
    assert kept.mojibake_repaired
    kept = processor.process("text", "Tom said, “we can’t go.” Le château.".encode())
    assert not kept.mojibake_repaired
    removed = processor.process("text", "â€œhi!â€".encode())  # too short, but still counted
    assert removed.reason == "too_short" and removed.preview == "“hi!”" and removed.mojibake_repaired


def test_the_manifest_counts_repaired_documents(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.txt").write_text("Tom said, â€œwe canâ€™t go.â€ Then he sat down by the lake.\n")
    (inputs / "b.txt").write_text("Tom said, “we can go.” Then he sat down by the old château.\n")
    (inputs / "c.txt").write_text("Sue said, â€œlook!â€ and ran off to the meadow, laughing all the way.\n")
    args = ["data", "--run", tmp_path / "run", "--input", inputs, "--workers", "1", "--min-chars", "10"]
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    assert exit_info.value.code == 0, capsys.readouterr().err
    corpus = RunDir(tmp_path / "run").corpus
    assert corpus_shards.read_manifest(corpus)["mojibake_repaired"] == {"documents": 2}
    texts = [t for split in corpus_shards.SPLITS for t in corpus_shards.iter_documents(corpus, split)]
    assert len(texts) == 3 and not any(mark in t for t in texts for mark in MOJIBAKE_MARKS)


def test_ftfy_is_imported_only_when_a_document_needs_it():
    # The workers stay lean: ordinary text, even non-ASCII, never loads ftfy.
    code = (
        "import sys; from ownllm.data.cleaning import repair_mojibake as r; "
        "r('Le château, “quoted”, Привет.'); assert 'ftfy' not in sys.modules; "
        "assert r('donâ€™t') == 'don’t'; assert 'ftfy' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
