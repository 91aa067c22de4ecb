"""Small corpora for the tokenizer and tokenize commands, and their one-line error checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import CORPUS
from ownllm.cli import main
from ownllm.core.fsutil import atomic_directory, atomic_write_json
from ownllm.run.corpus_shards import FORMAT, VERSION, CorpusWriter, read_manifest


def story_paragraphs() -> list[str]:
    """Real text: the paragraphs of the bundled TinyStories validation prefix."""
    text = (CORPUS / "tinystories-valid-prefix.txt").read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def write_corpus(corpus_dir: Path, train: list[str], val: list[str]) -> dict:
    """A corpus artifact as `ownllm data` writes it; returns its manifest."""
    with atomic_directory(corpus_dir) as tmp:
        writer = CorpusWriter(tmp)
        for document in train:
            writer.add("train", document)
        for document in val:
            writer.add("val", document)
        atomic_write_json(tmp / "manifest.json", {"format": FORMAT, "version": VERSION, **writer.close()})
    return read_manifest(corpus_dir)


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run `ownllm ARGS` in this process; return (exit status, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0]
