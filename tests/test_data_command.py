"""`ownllm data` end to end: the bundled corpus, every input format, the manifest, bad input."""

from __future__ import annotations

import gzip
import hashlib
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ownllm.cli import main
from ownllm.run import RunDir, corpus_shards

STORY_SPLIT = re.compile(r"(?<=\S)[ \t]*\n(?=[ \t]*\S)")


@pytest.fixture(scope="module")
def stories(bundled_corpus) -> list[str]:
    text = (bundled_corpus / "tinystories-train-prefix.txt").read_text()[:600_000]
    return [s.strip() for s in STORY_SPLIT.split(text) if len(s) > 300]


@pytest.fixture
def data(capsys):
    """Run `ownllm data ARGS` in this process; return (exit status, stderr)."""

    def run(*args) -> tuple[int, str]:
        with pytest.raises(SystemExit) as exit_info:
            main(["data", *map(str, args)])
        return exit_info.value.code, capsys.readouterr().err

    return run


def manifest_of(run_dir) -> dict:
    return corpus_shards.read_manifest(RunDir(run_dir).corpus)


def all_texts(run_dir) -> list[str]:
    corpus = RunDir(run_dir).corpus
    return [t for split in corpus_shards.SPLITS for t in corpus_shards.iter_documents(corpus, split)]


def snapshot(directory) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.rglob("*")) if p.is_file()}


def write_story_folder(folder, stories, copies=()):
    """One story per file in a few formats; `copies` repeats some stories (exact duplicates)."""
    folder.mkdir()
    for i, story in enumerate(stories):
        if i % 3 == 0:
            (folder / f"story{i:04d}.txt.gz").write_bytes(gzip.compress(story.encode()))
        else:
            (folder / f"story{i:04d}.txt").write_text(story)
    for i in copies:
        (folder / f"copy{i:04d}.md").write_text(stories[i].upper())


def test_default_corpus_end_to_end(ownllm, tmp_path):
    """The real command on the bundled corpus: seconds, sensible counts, a TinyStories val split."""
    result = ownllm("data", "--run", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert re.search(r"took \d+\.\d s", result.stderr)
    m = manifest_of(tmp_path / "run")
    counts, splits = m["counts"], m["splits"]
    assert m["format"] == corpus_shards.FORMAT and m["version"] == corpus_shards.VERSION
    assert counts["documents_in"] == counts["documents_out"] + sum(m["removed"].values())
    assert set(m["removed"]) <= {"too_short", "exact_duplicate", "near_duplicate"}
    assert counts["documents_out"] > 0.95 * counts["documents_in"]  # the filters do not wipe real text
    assert counts["bytes_out"] > 0.99 * counts["bytes_in"]
    assert 200 <= splits["val"]["documents"] <= 400  # a few hundred held-out stories
    assert m["seconds"] < 60
    texts = all_texts(tmp_path / "run")
    books = [t for t in texts if len(t) > 100_000]
    assert len(books) == 9  # 7 children's books, Tiny Shakespeare and the TinyStories valid prefix, whole
    assert any(t.startswith("THE TALE OF\n\nPETER RABBIT") for t in texts)  # the 8th book is short
    val = list(corpus_shards.iter_documents(RunDir(tmp_path / "run").corpus, "val"))
    assert all(len(t) < 10_000 for t in val)  # val is TinyStories stories
    inputs = {i["path"]: i for i in m["inputs"]}
    assert inputs["ownllm/resources/corpus/tinystories-train-prefix.txt"]["documents"] > 5000
    config = RunDir(tmp_path / "run").read_config()["data"]
    assert config["val_fraction"] == 0.05 and config["dedup"] == "near"


def test_output_is_identical_for_any_number_of_workers(tmp_path, stories, data):
    near = [s.replace(" the ", " a ", 1) for s in stories[:5]]
    folder = tmp_path / "in"
    write_story_folder(folder, stories[:150] + near, copies=(3, 7))
    hashes = []
    for workers in (1, 2):
        status, err = data("--run", tmp_path / f"run{workers}", "--input", folder, "--workers", workers)
        assert status == 0, err
        m = manifest_of(tmp_path / f"run{workers}")
        hashes.append(m["corpus_hash"])
        assert m["duplicates"]["exact"]["removed"] == 2
        assert m["duplicates"]["near"]["removed"] == 5
        assert m["duplicates"]["clusters"] == 6  # stories 0-4 (story 3 also copied) and story 7
        assert m["splits"]["val"]["documents"] > 0
        corpus = tmp_path / f"run{workers}" / "corpus"  # the on-disk duplicate index is gone
        assert {p.name for p in corpus.iterdir()} == {"manifest.json", "train-00000.jsonl", "val-00000.jsonl"}
    assert hashes[0] == hashes[1]
    for split in ("train", "val"):
        one = (tmp_path / "run1" / "corpus" / f"{split}-00000.jsonl").read_bytes()
        two = (tmp_path / "run2" / "corpus" / f"{split}-00000.jsonl").read_bytes()
        assert one == two


def test_every_format_and_the_manifest(tmp_path, stories, data):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text(f"{stories[0]}\n<|endoftext|>\n{stories[1]}")  # two documents
    (src / "b.html").write_text(f"<html><body><p>{stories[2]}</p><script>x()</script></body></html>")
    (src / "c.jsonl").write_text(json.dumps({"body": stories[3]}) + "\n" + json.dumps({"body": stories[0]}) + "\n")
    pq.write_table(pa.table({"body": [stories[4], stories[5]]}), src / "d.parquet")
    (src / "e.txt.gz").write_bytes(gzip.compress(b"caf\xe9 " + stories[6].encode()))  # latin-1 byte
    status, err = data(
        "--run",
        tmp_path / "run",
        "--input",
        src,
        "--boundary",
        "delimiter:<|endoftext|>",
        "--jsonl-field",
        "body",
        "--parquet-column",
        "body",
        "--val-fraction",
        0,
        "--workers",
        1,
    )
    assert status == 0, err
    m = manifest_of(tmp_path / "run")
    texts = all_texts(tmp_path / "run")
    assert len(texts) == 7
    assert texts[:2] == stories[:2] and texts[3:6] == stories[3:6]
    assert texts[2] == " ".join(stories[2].split())  # in HTML, line breaks in the source are only wrapping
    assert texts[6] == "caf\ufffd " + stories[6]
    assert m["invalid_utf8"] == {"sequences_replaced": 1, "documents": 1}
    assert m["removed"] == {"exact_duplicate": 1}  # stories[0] again, from the JSONL file
    example = m["duplicates"]["examples"][0]
    assert example["kept"].endswith("a.txt#1") and example["removed"][0]["document"].endswith("c.jsonl#2")
    inputs = m["inputs"]
    assert [i["format"] for i in inputs] == ["text", "html", "jsonl", "parquet", "text"]
    assert inputs[4]["compression"] == "gzip"
    for entry in inputs:
        assert entry["sha256"] == hashlib.sha256(open(entry["path"], "rb").read()).hexdigest()
    assert m["settings"]["jsonl_field"] == "body"
    assert RunDir(tmp_path / "run").read_config()["data"]["limits"]["min_chars"] == 100


def test_dedup_modes(tmp_path, stories, data):
    folder = tmp_path / "in"
    write_story_folder(folder, stories[:20] + [stories[0].replace(" the ", " a ", 1)], copies=(1,))
    removed = {}
    for mode in ("near", "exact", "off"):
        status, err = data("--run", tmp_path / mode, "--input", folder, "--dedup", mode, "--workers", 1)
        assert status == 0, err
        removed[mode] = manifest_of(tmp_path / mode)["removed"]
    assert removed == {
        "near": {"exact_duplicate": 1, "near_duplicate": 1},
        "exact": {"exact_duplicate": 1},
        "off": {},
    }


def test_a_binary_file_among_text_is_skipped_with_a_warning(tmp_path, stories, data):
    folder = tmp_path / "in"
    write_story_folder(folder, stories[:3])
    (folder / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4)
    status, err = data("--run", tmp_path / "run", "--input", folder, "--workers", 1)
    assert status == 0
    assert "warning: skipped" in err and "photo.jpg" in err
    m = manifest_of(tmp_path / "run")
    assert m["removed"] == {"binary": 1} and m["counts"]["files_skipped"] == 1
    assert m["counts"]["documents_out"] == 3


@pytest.mark.parametrize(
    "make_input, extra, message",
    [
        (lambda d: d / "missing", [], "does not exist"),
        (lambda d: (d / "empty").mkdir() or d / "empty", [], "directory with no files"),
        (lambda d: (d / "x.bin").write_bytes(bytes(range(256))) and d / "x.bin", [], "no text"),
        (lambda d: (d / "empty.txt").write_text(" \n") and d / "empty.txt", [], "hold no text"),
        (lambda d: d / "good", ["--min-chars", "100000"], r"all \d+ documents were removed \(too_short \d+\)"),
        (lambda d: d / "good", ["--jsonl-field", "x", "--boundary", "regex:("], "invalid regular expression"),
        (lambda d: d / "good", ["--val-fraction", "1.5"], r"--val-fraction must be in \[0, 1\)"),
        (lambda d: d / "good", ["--max-chars", "0"], "--max-chars"),
        (lambda d: (d / "bad.jsonl").write_text('{"body": "x"}\n') and d / "bad.jsonl", [], r"invalid_record 1"),
    ],
)
def test_bad_input_is_one_line_error_and_leaves_the_corpus_intact(tmp_path, stories, data, make_input, extra, message):
    write_story_folder(tmp_path / "good", stories[:4])
    assert data("--run", tmp_path / "run", "--input", tmp_path / "good", "--workers", 1)[0] == 0
    before = snapshot(tmp_path / "run")
    status, err = data("--run", tmp_path / "run", "--input", make_input(tmp_path), "--workers", 1, *extra)
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert snapshot(tmp_path / "run") == before
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]  # no temporary left over


def test_a_corrupt_file_midway_leaves_the_previous_corpus_intact(tmp_path, stories, data):
    folder = tmp_path / "in"
    write_story_folder(folder, stories[:40])
    assert data("--run", tmp_path / "run", "--input", folder, "--workers", 2)[0] == 0
    before = snapshot(tmp_path / "run")
    (folder / "zzz-truncated.txt.gz").write_bytes(gzip.compress(stories[0].encode() * 50)[:200])
    status, err = data("--run", tmp_path / "run", "--input", folder, "--workers", 2)
    assert status == 2 and "cannot read" in err and "zzz-truncated.txt.gz" in err
    assert snapshot(tmp_path / "run") == before
