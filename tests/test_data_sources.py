"""Finding inputs, reading compressed files and cutting them into documents."""

from __future__ import annotations

import bz2
import gzip
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from ownllm.core.errors import UserError
from ownllm.data.sources import (
    BUNDLED_CORPUS,
    Boundary,
    InputSpec,
    SourceReader,
    bundled_corpus,
    looks_binary,
    resolve_inputs,
    split_documents,
)

FILE = Boundary.parse("file")


def read_all(paths, boundary="file", max_bytes=1 << 20, column="text"):
    sources = resolve_inputs([InputSpec(str(p), Boundary.parse(boundary)) for p in paths])
    reader = SourceReader(sources, max_bytes, column)
    return reader, list(reader)


def chunked(data: bytes, size: int):
    return [data[i : i + size] for i in range(0, len(data), size)]


# --- boundaries -------------------------------------------------------------------------


def test_blank_line_line_delimiter_and_regex_boundaries():
    text = b"one\ntwo\n\n\nthree\n \nfour<|endoftext|>five"
    cut = lambda spec: list(split_documents([text], Boundary.parse(spec).separator, 1 << 20))  # noqa: E731
    assert cut("file") == [text]
    assert cut("blank-line") == [b"one\ntwo", b"three", b"four<|endoftext|>five"]
    assert cut("line") == [b"one", b"two", b"three", b"four<|endoftext|>five"]
    assert cut("delimiter:<|endoftext|>") == [b"one\ntwo\n\n\nthree\n \nfour", b"five"]
    assert cut(r"regex:\d|<\|endoftext\|>") == [b"one\ntwo\n\n\nthree\n \nfour", b"five"]


def test_a_zero_width_regex_splits_before_each_match():
    text = b"Once upon a time, a cat. Once upon a time, a dog."
    pieces = list(split_documents([text], Boundary.parse("regex:(?=Once upon)").separator, 1 << 20))
    assert pieces == [b"Once upon a time, a cat. ", b"Once upon a time, a dog."]


def test_bad_boundary_specs_are_user_errors():
    for spec in ("paragraphs", "regex:(", "delimiter:", "regex:"):
        with pytest.raises(UserError, match="--boundary"):
            Boundary.parse(spec)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from([b"a", b"b ", b"\n", b"\n\n", b"<sep>", b"\xc3\xa9", b"  "]), max_size=80),
    st.sampled_from([1, 7, 100, 1500, 4000]),
    st.sampled_from(["blank-line", "line", "delimiter:<sep>", r"regex:\n(?=b)", "file"]),
)
def test_documents_do_not_depend_on_how_the_stream_is_chunked(parts, chunk_size, spec):
    # Large chunks get up to 10 KB, so separators fall both before and within the lookahead margin.
    data = b"".join(parts) * (25 if chunk_size >= 100 else 1)
    separator = Boundary.parse(spec).separator
    whole = list(split_documents([data], separator, 1 << 20))
    assert list(split_documents(chunked(data, chunk_size), separator, 1 << 20)) == whole
    if separator is not None:  # and the same as a plain re.split, blank pieces dropped
        assert whole == [p for p in separator.split(data) if p.strip()]


def test_tinystories_recipe_cuts_stories_not_paragraphs(bundled_corpus):
    spec = dict(BUNDLED_CORPUS)["tinystories-train-prefix.txt"]
    data = (bundled_corpus / "tinystories-train-prefix.txt").read_bytes()[:200_000]
    stories = list(split_documents(chunked(data, 4096), Boundary.parse(spec).separator, 1 << 20))
    assert stories[0].startswith(b"One day, a little girl named Lily found a needle")
    assert stories[0].endswith(b"They both felt happy because they had shared and worked together.")
    assert b"\n\n" in stories[0]  # paragraphs stay inside their story
    assert stories[1].startswith(b"Once upon a time, there was a little car named Beep.")
    assert len(stories) > 150


def test_a_document_over_the_size_limit_is_dropped_without_holding_it():
    big = b"x" * 5000
    data = b"small one\n\n" + big + b"\n\nsmall two"
    separator = Boundary.parse("blank-line").separator
    assert list(split_documents(chunked(data, 100), separator, 1000)) == [b"small one", None, b"small two"]
    assert list(split_documents(chunked(big, 100), None, 1000)) == [None]


# --- inputs -----------------------------------------------------------------------------


def test_directories_are_walked_in_sorted_order_skipping_hidden_entries(tmp_path):
    for name in ("b.txt", "a.md", "sub/c.txt", ".hidden.txt", ".git/d.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    sources = resolve_inputs([InputSpec(str(tmp_path), FILE)])
    assert [s.path.relative_to(tmp_path).as_posix() for s in sources] == ["a.md", "b.txt", "sub/c.txt"]


def test_globs_expand_and_the_same_file_is_read_once(tmp_path):
    for name in ("x1.txt", "x2.txt", "y.txt"):
        (tmp_path / name).write_text(name)
    specs = [InputSpec(str(tmp_path / "x*.txt"), FILE), InputSpec(str(tmp_path / "x1.txt"), FILE)]
    assert [s.path.name for s in resolve_inputs(specs)] == ["x1.txt", "x2.txt"]


@pytest.mark.parametrize("pattern, message", [("missing.txt", "does not exist"), ("nothing*.txt", "matches no files")])
def test_missing_inputs_are_user_errors(tmp_path, pattern, message):
    with pytest.raises(UserError, match=message):
        resolve_inputs([InputSpec(str(tmp_path / pattern), FILE)])


def test_an_empty_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no files"):
        resolve_inputs([InputSpec(str(tmp_path), FILE)])


def test_compressed_files_read_like_plain_ones(tmp_path):
    text = "Paragraph one.\n\nParagraph two, café.\n".encode()
    (tmp_path / "a.txt").write_bytes(text)
    (tmp_path / "b.txt.gz").write_bytes(gzip.compress(text))
    (tmp_path / "c.txt.bz2").write_bytes(bz2.compress(text))
    # Two zstd frames back to back: both must be read.
    zc = zstandard.ZstdCompressor()
    (tmp_path / "d.txt.zst").write_bytes(zc.compress(text[:10]) + zc.compress(text[10:]))
    reader, docs = read_all([tmp_path], "blank-line")
    assert [s.compression for s in reader.sources] == [None, "gzip", "bz2", "zstd"]
    by_source = [[d.payload for d in docs if d.source == i] for i in range(4)]
    assert by_source == [[b"Paragraph one.", "Paragraph two, café.\n".encode()]] * 4  # cleaning strips later
    assert reader.disk_bytes_read == sum(s.size for s in reader.sources)


def test_jsonl_records_and_parquet_rows_are_documents(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "first"}\n\n{"text": "second"}\n')
    pq.write_table(pa.table({"body": ["row one", None, "row three"]}), tmp_path / "b.parquet")
    (tmp_path / "c.parquet.gz").write_bytes(gzip.compress((tmp_path / "b.parquet").read_bytes()))
    reader, docs = read_all([tmp_path / "a.jsonl", tmp_path / "b.parquet", tmp_path / "c.parquet.gz"], column="body")
    assert [d.payload for d in docs[5:]] == [d.payload for d in docs[2:5]]  # compressed Parquet reads the same
    docs = docs[:5]
    assert [(d.kind, d.payload) for d in docs] == [
        ("jsonl", b'{"text": "first"}'),
        ("jsonl", b'{"text": "second"}'),
        ("text", b"row one"),
        ("text", b""),  # a null row is an (empty) document, counted as such later
        ("text", b"row three"),
    ]
    assert reader.documents == [2, 3, 3]
    assert json.loads(docs[0].payload) == {"text": "first"}


def test_parquet_without_the_column_names_the_flag(tmp_path):
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "b.parquet")
    with pytest.raises(UserError, match=re.escape("no column 'text' (it has: body); pass --parquet-column")):
        read_all([tmp_path / "b.parquet"])


def test_corrupt_compressed_files_are_user_errors(tmp_path):
    (tmp_path / "bad.txt.gz").write_bytes(gzip.compress(b"hello world " * 100)[:-20])
    with pytest.raises(UserError, match="cannot read .*bad.txt.gz"):
        read_all([tmp_path])


def test_binary_files_are_skipped_and_recorded(tmp_path):
    (tmp_path / "a.txt").write_text("real text")
    (tmp_path / "b.bin").write_bytes(bytes(range(256)) * 10)
    (tmp_path / "c.txt").write_bytes(b"PK\x03\x04\x00\x00 zip pretending to be text")
    reader, docs = read_all([tmp_path])
    assert [d.payload for d in docs] == [b"real text"]
    assert reader.skipped == {1: "binary", 2: "binary"}


def test_binary_detection_spares_text_in_any_language(bundled_corpus):
    text = (bundled_corpus / "tinyshakespeare.txt").read_bytes()[:65536]
    assert not looks_binary(text)
    assert not looks_binary("Grüße, 你好, привет, \t tabs and\r\nCRLF".encode() * 100)
    assert looks_binary(b"\x01\x02\x03\x04 text with many control bytes" * 10)


def test_bundled_corpus_is_found_and_named_relative_to_the_package():
    sources = resolve_inputs(bundled_corpus())
    names = [s.name for s in sources]
    assert names[0] == "ownllm/resources/corpus/tinystories-train-prefix.txt"
    assert len([n for n in names if "/children-books/" in n]) == 8
    assert not any(n.endswith("LICENSES.md") for n in names)
