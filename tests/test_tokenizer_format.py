"""The saved tokenizer: it loads back identical, and another version or a damaged file is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ownllm.core.errors import UserError
from ownllm.tokenizer import ENDOFTEXT, Tokenizer, train_bpe
from ownllm.tokenizer.tokenizer import FILE_NAME, VERSION

CORPUS = Path(__file__).resolve().parents[1] / "src" / "ownllm" / "resources" / "corpus"
SAMPLE = "Once upon a time, 日本語 😀 and <|endoftext|>\n\n  12345 don't"


@pytest.fixture(scope="module")
def tokenizer():
    text = (CORPUS / "children-books" / "peter_pan.txt").read_text(encoding="utf-8")[:40_000]
    return train_bpe([text], 500, workers=1)


@pytest.fixture
def saved(tokenizer, tmp_path) -> Path:
    tokenizer.save(tmp_path)
    return tmp_path / FILE_NAME


def test_load_gives_back_the_same_tokenizer(tokenizer, saved):
    loaded = Tokenizer.load(saved.parent)
    assert loaded.merges == tokenizer.merges
    assert loaded.special_tokens == tokenizer.special_tokens
    assert loaded.pattern == tokenizer.pattern and loaded.pattern_name == "gpt4"
    assert loaded.vocab == tokenizer.vocab
    assert loaded.encode(SAMPLE) == tokenizer.encode(SAMPLE)
    assert loaded.encode(SAMPLE, allowed_special={ENDOFTEXT}) == tokenizer.encode(SAMPLE, allowed_special={ENDOFTEXT})


def test_saving_is_deterministic(tokenizer, saved, tmp_path):
    Tokenizer.load(saved.parent).save(tmp_path / "again")
    assert (tmp_path / "again" / FILE_NAME).read_bytes() == saved.read_bytes()


def test_file_is_readable_json_with_version_and_one_merge_per_line(tokenizer, saved):
    text = saved.read_text(encoding="utf-8")
    obj = json.loads(text)
    assert obj["format"] == "ownllm.tokenizer" and obj["version"] == VERSION
    assert obj["vocab_size"] == 500 and obj["special_tokens"][0] == ENDOFTEXT
    assert len(obj["merges"]) == len(tokenizer.merges)
    first = tokenizer.merges[0]
    assert f"    [{first[0][0]}, {first[1][0]}]," in text.splitlines()
    assert (saved.parent / "vocab.txt").read_text(encoding="utf-8").splitlines()[256].startswith("256\t")


def rewrite(path: Path, edit) -> None:
    obj = json.loads(path.read_text(encoding="utf-8"))
    edit(obj)
    path.write_text(json.dumps(obj), encoding="utf-8")


def test_another_format_version_is_refused(saved):
    rewrite(saved, lambda obj: obj.update(version=VERSION + 1))
    with pytest.raises(UserError, match=rf"format version {VERSION + 1}.*reads version {VERSION}.*ownllm tokenizer"):
        Tokenizer.load(saved.parent)


def test_another_kind_of_artifact_is_refused(saved):
    rewrite(saved, lambda obj: obj.update(format="ownllm.tokens"))
    with pytest.raises(UserError, match="not an ownllm.tokenizer artifact"):
        Tokenizer.load(saved.parent)


def test_a_changed_merge_is_caught_by_the_checksum(saved):
    rewrite(saved, lambda obj: obj["merges"].__setitem__(5, [obj["merges"][5][1], obj["merges"][5][0]]))
    with pytest.raises(UserError, match="corrupted.*checksum"):
        Tokenizer.load(saved.parent)


def test_a_truncated_file_is_refused(saved):
    saved.write_bytes(saved.read_bytes()[:1000])
    with pytest.raises(UserError, match="corrupted"):
        Tokenizer.load(saved.parent)


def test_a_structurally_broken_file_with_a_valid_checksum_is_refused(saved):
    from ownllm.tokenizer.tokenizer import _checksum

    def break_merges(obj):
        obj["merges"][3] = [9999, 1]
        del obj["checksum"]
        obj["checksum"] = _checksum(obj)

    rewrite(saved, break_merges)
    with pytest.raises(UserError, match="corrupted.*does not exist"):
        Tokenizer.load(saved.parent)


def test_a_missing_tokenizer_says_which_command_to_run(tmp_path):
    with pytest.raises(UserError, match="run `ownllm tokenizer"):
        Tokenizer.load(tmp_path / "nowhere")


def test_merges_must_join_existing_tokens_into_a_new_one():
    with pytest.raises(ValueError, match="not both earlier tokens"):
        Tokenizer([(b"ab", b"c")])
    with pytest.raises(ValueError, match="already token"):
        Tokenizer([(b"a", b"b"), (b"b", b"c"), (b"ab", b"c"), (b"a", b"bc")])  # "abc" twice
