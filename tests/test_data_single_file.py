"""A first run on one's own text, often one file: it is cut into documents and both splits get some.

The auto boundary (data/autosplit.py) on hand-made text, a shipped book through data, tokenizer,
tokenize and pretrain, and the train/val fallback of the data stage (pipeline._OneSplitSoFar).
"""

from __future__ import annotations

import gzip
import json
import random
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import CORPUS
from helpers.runs import ownllm_here
from ownllm.data.autosplit import AutoSplitter, SplitSizes, is_heading
from ownllm.data.fingerprints import exact_key, key_fraction
from ownllm.run import RunDir, corpus_shards

BOOK = CORPUS / "children-books" / "alice_in_wonderland.txt"  # 144 KB, 12 chapters, shipped with the package
SMALL = SplitSizes(split_above=2000, paragraphs_target=1000, chapter_limit=3000, min_document=200, heading_scan=50_000)
NO_LIMIT = 1 << 30  # the reader's document size limit, out of the way


def split(text: str | bytes, sizes: SplitSizes = SMALL, chunk: int = 1 << 20) -> tuple[list[bytes], AutoSplitter]:
    data = text.encode() if isinstance(text, str) else text
    splitter = AutoSplitter(NO_LIMIT, sizes)
    documents = list(splitter.split(data[i : i + chunk] for i in range(0, len(data), chunk)))
    return documents, splitter


WORDS = ["the", "a", "cat", "dog", "sat", "ran", "over", "under", "big", "small", "red", "blue", "tree", "house"]
WORDS += ["river", "hill", "saw", "found", "little", "old"]


def paragraph(n: int, words: int = 12) -> str:
    """A paragraph of about 5 * words bytes, different for each n, wrapped in lines, ending with a full stop."""
    rng = random.Random(n)
    text = " ".join(rng.choice(WORDS) for _ in range(words)) + "."
    return re.sub(r"((?:\S+ ){8})", "\\1\n", text).replace(" \n", "\n")


def chapter(title: str, n: int, paragraphs: int = 8) -> str:
    return title + "\n\n" + "\n\n".join(paragraph(100 * n + i) for i in range(paragraphs))


def texts(run, split_name: str) -> list[str]:
    return list(corpus_shards.iter_documents(RunDir(run).corpus, split_name))


def manifest(run) -> dict:
    return corpus_shards.read_manifest(RunDir(run).corpus)


# --- the splitter on hand-made text -------------------------------------------------------


def test_chapter_headings_start_documents():
    front = "MY BOOK\n\nBy Someone\n\nCONTENTS\n\n    I. The Start\n    II. The Middle"
    titles = ["CHAPTER I. The Start", "Chapter 2.", "III. THE END OF IT", "# Chapter Four: more", "V"]
    text = front + "\n\n" + "\n\n\n".join(chapter(t, n) for n, t in enumerate(titles)) + "\n"
    documents, splitter = split(text)
    assert b"".join(documents) == text.encode()  # exact slices: nothing added, lost or reordered
    assert len(documents) == 5
    assert documents[0].startswith(b"MY BOOK") and b"CHAPTER I. The Start" in documents[0]  # front matter joins
    for document, title in zip(documents[1:], titles[1:]):
        assert document.startswith(title.encode() + b"\n\n")
    report = splitter.report
    assert report is not None and report.at == "chapter headings"
    assert (report.chapter_headings, report.paragraph_breaks, report.inside_paragraphs) == (4, 0, 0)


def test_a_long_chapter_is_cut_at_paragraph_breaks_and_close_headings_merge():
    text = "\n\n".join([chapter("CHAPTER I", 1, paragraphs=100), "CHAPTER II", "CHAPTER III", chapter("", 3)])
    documents, splitter = split(text)
    assert b"".join(documents) == text.encode()
    assert all(len(d) <= SMALL.chapter_limit + SMALL.min_document for d in documents)
    assert all(d.endswith(b".\n\n") for d in documents[:-1])  # cut between paragraphs
    assert sum(d.startswith(b"CHAPTER II\n\nCHAPTER III\n\n") for d in documents) == 1  # the empty chapter joins
    assert splitter.report is not None and splitter.report.paragraph_breaks >= 1


def test_without_headings_whole_paragraphs_are_packed_up_to_the_target():
    paragraphs = [paragraph(i, words=5 + 7 * (i % 5)) for i in range(80)]
    text = "\n\n".join(paragraphs)
    documents, splitter = split(text)
    assert b"".join(documents) == text.encode()
    assert len(documents) > 5
    assert all(SMALL.paragraphs_target // 2 < len(d) <= SMALL.paragraphs_target for d in documents[:-1])
    cut_after = [d.rstrip().decode().split("\n\n")[-1] for d in documents]
    assert all(p in paragraphs for p in cut_after)  # every cut falls between paragraphs
    assert splitter.report is not None and splitter.report.at == "paragraphs"
    assert splitter.report.paragraph_breaks == len(documents) - 1


def test_an_enormous_paragraph_is_cut_at_sentence_ends_then_lines_then_spaces():
    sentences = " ".join(f"Sentence {i} is here." for i in range(400))  # one 8 KB line
    lines = "\n".join(f"line {i} without an end" for i in range(300))  # 7 KB of lines, no full stop
    words = " ".join(f"word{i}" for i in range(1000))
    glyphs = "é" * 3000  # nowhere to cut but between characters
    text = "\n\n".join([sentences, lines, words, glyphs])
    documents, splitter = split(text)
    assert b"".join(documents) == text.encode()
    assert all(len(d) < SMALL.paragraphs_target + SMALL.min_document for d in documents)
    decoded = [d.decode("utf-8") for d in documents]  # never inside a character
    in_sentences = [d for d in decoded if d.startswith("Sentence")]
    assert len(in_sentences) > 5 and all(d.endswith("here. ") for d in in_sentences[:-1])
    assert any(d.startswith("line ") and d.endswith("end\n") for d in decoded)
    assert any(d.startswith("word") and d.endswith(" ") for d in decoded)
    assert splitter.report is not None and splitter.report.inside_paragraphs > 10


def test_a_short_tail_joins_the_document_before_it():
    text = "\n\n".join(paragraph(i, words=30) for i in range(30)) + "\n\nTHE END"
    documents, _ = split(text)
    assert documents[-1].endswith(b"THE END") and len(documents[-1]) > SMALL.min_document


def test_a_small_file_stays_one_document_as_before():
    text = "\n\n".join(chapter(f"CHAPTER {n}", n, paragraphs=2) for n in range(1, 4))
    assert len(text) <= SMALL.split_above
    documents, splitter = split(text)
    assert documents == [text.encode()] and splitter.report is None


def test_a_gutenberg_header_and_licence_are_dropped_before_cutting():
    header = "The Project Gutenberg eBook of My Book\n\n*** START OF THE PROJECT GUTENBERG EBOOK MY BOOK ***\n\n"
    body = "\n\n".join(paragraph(i) for i in range(60))
    licence = "\n\n".join(
        ["*** END OF THE PROJECT GUTENBERG EBOOK MY BOOK ***"] + [paragraph(900 + i) for i in range(60)]
    )
    documents, splitter = split(header + body + "\n\n" + licence)
    assert b"".join(documents).strip() == body.encode()
    assert splitter.report is not None and splitter.report.gutenberg_dropped


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([1, 7, 300, 1100, 5000]), st.integers(0, 3))
def test_the_cuts_depend_only_on_the_text(chunk, variant):
    """Deterministic: the same documents however the stream is chunked, run after run."""
    parts = [chapter(f"CHAPTER {n}", n, paragraphs=3 + 5 * ((n + variant) % 3)) for n in range(1, 6)]
    parts.insert(variant, " ".join(f"Long {i}." for i in range(700)))  # an enormous paragraph somewhere
    text = ("\r\n\r\n\r\n" if variant == 2 else "\n\n").join(parts)
    whole, _ = split(text)
    assert split(text, chunk=chunk)[0] == whole
    assert b"".join(whole) == text.encode()


@pytest.mark.parametrize(
    "line, heading",
    [
        ("CHAPTER I. Down the Rabbit-Hole", True),
        ("Chapter 1 PETER BREAKS THROUGH", True),
        ("  CHAPTER XLII", True),
        ("BOOK THREE", True),
        ("Part Two", True),
        ("XII.", True),
        ("IV. MR. BADGER", True),
        ("## Chapter 3", True),
        ("I am here, said the cat.", False),
        ("I WANT IT!", False),
        ("IV. Mr. Badger was at home", False),
        ("CIVIL", False),
        ("Chapter Ivy was a lovely place to be", False),
        ("CHAPTER", False),
        ("Chapter 3 " + "x" * 80, False),
    ],
)
def test_what_counts_as_a_chapter_heading(line, heading):
    assert is_heading(line.encode() + b"\nThe text goes on.") is heading


# --- ownllm data on one file ----------------------------------------------------------------


def test_a_single_book_is_cut_into_chapters_and_pretrains(tmp_path, capsys):
    """The issue: one book given to data, then tokenizer, tokenize and a tiny pretraining run."""
    run = tmp_path / "run"
    status, err = ownllm_here(capsys, "data", "--run", run, "--input", BOOK, "--workers", 1)
    assert status == 0, err
    assert re.search(r"alice_in_wonderland.txt: one 144 KB text cut into 12 documents at chapter headings", err)
    m = manifest(run)
    train, val = texts(run, "train"), texts(run, "val")
    assert len(train) >= 8 and len(val) >= 1
    assert m["inputs"][0]["boundary"] == "auto" and m["inputs"][0]["auto_split"]["chapter_headings"] == 11
    chapters = sorted(t.split(".", 1)[0] for t in train + val if t.startswith("CHAPTER"))
    assert len(chapters) == 11 and "CHAPTER XII" in chapters
    if m["split_moved"] is not None:  # the hash rule sent no chapter to val: one moved there, and it was said
        assert m["split_moved"]["from"] == "train" and m["split_moved"]["document"] in err
    for args in (
        ["tokenizer", "--vocab-size", 300],
        ["tokenize"],
        ["pretrain", "--preset", "tiny", "--set", "steps=2", "--set", "threads=1"]
        + ["--set", "sample_every=0", "--set", "eval_every=0"],
    ):
        status, err = ownllm_here(capsys, args[0], "--run", run, *args[1:])
        assert status == 0, err


def test_a_compressed_gutenberg_download_gives_the_same_documents_as_the_plain_book(tmp_path, capsys):
    header = "The Project Gutenberg eBook of Alice\r\n\r\n*** START OF THE PROJECT GUTENBERG EBOOK ALICE ***\r\n\r\n"
    licence = "\r\n\r\n*** END OF THE PROJECT GUTENBERG EBOOK ALICE ***\r\n\r\n" + "Section 1. Terms of use.\r\n" * 900
    download = header.encode() + BOOK.read_bytes().replace(b"\n", b"\r\n") + licence.encode()  # Windows line ends
    (tmp_path / "alice.txt.gz").write_bytes(gzip.compress(download))
    for name, path in (("plain", BOOK), ("download", tmp_path / "alice.txt.gz")):
        status, err = ownllm_here(capsys, "data", "--run", tmp_path / name, "--input", path, "--workers", 1)
        assert status == 0, err
    assert "cut into 12 documents at chapter headings; Project Gutenberg header and licence dropped" in err
    for split_name in corpus_shards.SPLITS:
        assert texts(tmp_path / "download", split_name) == texts(tmp_path / "plain", split_name)


def test_boundary_file_still_keeps_a_book_whole(tmp_path, capsys):
    status, err = ownllm_here(capsys, "data", "--run", tmp_path / "run", "--input", BOOK, "--boundary", "file")
    assert status == 0, err
    m = manifest(tmp_path / "run")
    assert m["counts"]["documents_out"] == 1 and m["inputs"][0]["auto_split"] is None
    assert "warning: the validation split is empty, because all the text is one document" in err


def test_records_and_html_are_never_cut(tmp_path, capsys):
    """JSONL and Parquet records, and HTML, are documents as before, however large the file."""
    stories = [paragraph(i, words=40) for i in range(300)]  # 300 documents, 90 KB a file
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in stories))
    pq.write_table(pa.table({"text": stories}), src / "b.parquet")
    (src / "c.html").write_text("<html><body>" + "".join(f"<p>{s}</p>\n\n" for s in stories) + "</body></html>")
    status, err = ownllm_here(capsys, "data", "--run", tmp_path / "run", "--input", src, "--dedup", "off")
    assert status == 0, err
    inputs = manifest(tmp_path / "run")["inputs"]
    assert [i["documents"] for i in inputs] == [300, 300, 1]
    assert [i["auto_split"] for i in inputs] == [None, None, None] and "cut into" not in err


# --- neither split left empty ---------------------------------------------------------------


def story_files(folder, count: int) -> list[str]:
    """`count` small text files, one document each; returns their texts in input order."""
    folder.mkdir()
    stories = [paragraph(i, words=30).replace("\n", " ") for i in range(count)]
    for i, story in enumerate(stories):
        (folder / f"story{i:02d}.txt").write_text(story)
    return stories


def fraction(text: str) -> float:
    return key_fraction(exact_key(text))


def test_when_the_hash_rule_leaves_val_empty_the_nearest_document_moves_there(tmp_path, capsys):
    stories = story_files(tmp_path / "in", 6)
    lowest = min(stories, key=fraction)
    val_fraction = fraction(lowest) / 2  # below every document's hash: the rule puts all of them in train
    args = ["--run", tmp_path / "run", "--input", tmp_path / "in", "--val-fraction", val_fraction]
    status, err = ownllm_here(capsys, "data", *args)
    assert status == 0, err
    assert texts(tmp_path / "run", "val") == [lowest]
    assert texts(tmp_path / "run", "train") == [s for s in stories if s != lowest]  # in input order
    moved = manifest(tmp_path / "run")["split_moved"]
    name = f"story{stories.index(lowest):02d}.txt#1"
    assert moved["document"].endswith(name) and (moved["from"], moved["to"]) == ("train", "val")
    assert re.search(rf"val would be empty .* moved \S*{re.escape(name)}, the nearest .* from train to val", err)


def test_when_the_hash_rule_leaves_train_empty_the_nearest_document_moves_there(tmp_path, capsys):
    stories = story_files(tmp_path / "in", 4)
    highest = max(stories, key=fraction)
    val_fraction = (fraction(highest) + 1) / 2  # above every document's hash: the rule puts all of them in val
    status, err = ownllm_here(
        capsys, "data", "--run", tmp_path / "run", "--input", tmp_path / "in", "--val-fraction", val_fraction
    )
    assert status == 0, err
    assert texts(tmp_path / "run", "train") == [highest]
    assert texts(tmp_path / "run", "val") == [s for s in stories if s != highest]
    assert "train would be empty" in err


def test_nothing_moves_when_both_splits_have_documents_or_val_is_not_wanted(tmp_path, capsys):
    stories = story_files(tmp_path / "in", 12)
    ordered = sorted(stories, key=fraction)
    val_fraction = (fraction(ordered[0]) + fraction(ordered[1])) / 2  # exactly one document below: val
    for run, fraction_arg in (("one", val_fraction), ("none", 0)):
        args = ["--run", tmp_path / run, "--input", tmp_path / "in", "--val-fraction", fraction_arg]
        status, err = ownllm_here(capsys, "data", *args)
        assert status == 0, err
        assert manifest(tmp_path / run)["split_moved"] is None and "would be empty" not in err
    assert texts(tmp_path / "one", "val") == [ordered[0]]
    assert texts(tmp_path / "one", "train") == [s for s in stories if s != ordered[0]]
    assert texts(tmp_path / "none", "train") == stories and texts(tmp_path / "none", "val") == []


def test_a_single_small_document_goes_to_train_with_a_warning_that_says_what_to_do(tmp_path, capsys):
    stories = story_files(tmp_path / "in", 1)
    val_fraction = (fraction(stories[0]) + 1) / 2  # the rule alone would put it in val, leaving train empty
    status, err = ownllm_here(
        capsys, "data", "--run", tmp_path / "run", "--input", tmp_path / "in", "--val-fraction", val_fraction
    )
    assert status == 0, err
    assert texts(tmp_path / "run", "train") == stories
    assert "warning: the validation split is empty, because all the text is one document" in err
    assert "--boundary blank-line" in err
