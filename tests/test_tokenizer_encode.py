"""Encoding: the reference encoder and the tiktoken fast path agree on every input, and decode inverts both."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ownllm.tokenizer import ENDOFTEXT, SPECIAL_TOKENS, USER, ReferenceEncoder, Tokenizer, train_bpe

CORPUS = Path(__file__).resolve().parents[1] / "src" / "ownllm" / "resources" / "corpus"

EMOJI = ["😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "❤️", "🦀"]
CJK = ["日本語", "中文字符", "한국어", "カタカナ", "漢字"]
COMBINING = ["e\u0301", "a\u0308\u0304", "\u0915\u094d\u0937", "n\u0303", "\u05d1\u05bc"]
SPACES = [" ", "  ", "\t", "\n", "\r\n", "\n\n\n", "\u3000", "\xa0", " \n ", "\u2028"]
# Letters and digits whose Unicode class differs between the `regex` module and tiktoken's tables.
DISPUTED = ["\u0558", "\u058b", "\u088f", "\u0c5c", "\U00011de0", "\U0001246f", "\ua7ce"]
WORDS = ["the", " The", "don't", "I'LL", "'s", "'ſ", "hello", "world", "naïve", "Ωmega", "x²", "3.14159"]


def fragments():
    digits = st.integers(0, 10**30).map(str)
    runs = st.tuples(st.sampled_from(SPACES + ["-", "=", "1", "a", "😀"]), st.integers(1, 60)).map(
        lambda t: t[0] * t[1]
    )
    return st.one_of(
        st.sampled_from(EMOJI + CJK + COMBINING + SPACES + DISPUTED + WORDS + list(SPECIAL_TOKENS)),
        digits,
        runs,
        st.text(max_size=8),
    )


tricky_text = st.lists(fragments(), max_size=25).map("".join)


@pytest.fixture(scope="module")
def tokenizer():
    """A small tokenizer whose merges include multi-byte characters, digits and whitespace runs."""
    rng = random.Random(0)
    unicode_text = "".join(rng.choice(EMOJI + CJK + COMBINING + SPACES + WORDS) for _ in range(3000))
    english = (CORPUS / "children-books" / "alice_in_wonderland.txt").read_text(encoding="utf-8")[:60_000]
    return train_bpe([english, unicode_text, "1234567890 " * 50], 700, workers=1)


@pytest.fixture(scope="module")
def reference(tokenizer):
    return ReferenceEncoder(tokenizer)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=80))
def test_arbitrary_unicode_round_trips_and_both_encoders_agree(tokenizer, reference, text):
    ids = tokenizer.encode(text)
    assert reference.encode(text) == ids
    assert tokenizer.decode(ids) == text


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=tricky_text)
def test_emoji_cjk_combining_marks_whitespace_and_digit_runs(tokenizer, reference, text):
    ids = tokenizer.encode(text)
    assert reference.encode(text) == ids
    assert tokenizer.decode(ids) == text
    assert all(0 <= i < tokenizer.eot_id for i in ids)  # no special ids unless allowed


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=tricky_text)
def test_encoders_agree_when_special_tokens_are_allowed(tokenizer, reference, text):
    ids = tokenizer.encode(text, allowed_special="all")
    assert reference.encode(text, allowed_special="all") == ids
    assert tokenizer.decode(ids) == text
    assert sum(i >= tokenizer.eot_id for i in ids) == sum(text.count(name) for name in SPECIAL_TOKENS)


def encode_with_merge_list(tokenizer, reference, text: str) -> list[int]:
    """Classic BPE as Hugging Face applies a merges file: the earliest learned merge first, pair by pair."""
    merge_rank = {pair: rank for rank, pair in enumerate(tokenizer.merges)}
    ids = []
    for piece in reference.split_pattern.findall(text):
        parts = [bytes([b]) for b in piece.encode("utf-8")]
        while len(parts) > 1:
            ranked = [(merge_rank.get(pair, len(merge_rank)), i) for i, pair in enumerate(zip(parts, parts[1:]))]
            rank, i = min(ranked)
            if rank == len(merge_rank):
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        ids += [reference.ranks[part] for part in parts]
    return ids


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=tricky_text)
def test_applying_the_merge_list_in_order_gives_the_same_tokens(tokenizer, reference, text):
    # What lets the merges be exported to a merges-file tokenizer (Hugging Face, llama.cpp) unchanged.
    assert encode_with_merge_list(tokenizer, reference, text) == tokenizer.encode(text)


def test_code_points_across_the_whole_unicode_range(tokenizer, reference):
    text = " ".join(chr(c) + chr(c) for c in range(32, 0x110000, 89) if not 0xD800 <= c < 0xE000)
    ids = tokenizer.encode(text)
    assert reference.encode(text) == ids
    assert tokenizer.decode(ids) == text


@pytest.mark.slow
def test_every_code_point(tokenizer, reference):
    text = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
    ids = tokenizer.encode(text)
    assert reference.encode(text) == ids
    assert tokenizer.decode(ids) == text


def test_classes_are_frozen_so_disputed_characters_split_the_same_way():
    # U+0558 (UTF-8 d5 98) is a letter for the regex module but unknown to tiktoken's own tables, so
    # with a plain \p{L} tiktoken would cut "ab\u0558cd" before U+0558 and could never apply these
    # merges across it. With the frozen pattern both engines see one piece.
    tok = Tokenizer([(b"b", b"\xd5"), (b"b\xd5", b"\x98")])
    ids = tok.encode("ab\u0558cd")
    assert ids == [ord("a"), 257, ord("c"), ord("d")]
    assert ReferenceEncoder(tok).encode("ab\u0558cd") == ids


def test_special_token_text_in_a_document_is_plain_text(tokenizer):
    text = f"a story{ENDOFTEXT}another{USER}"
    ids = tokenizer.encode(text)
    assert tokenizer.eot_id not in ids and tokenizer.special_tokens[USER] not in ids
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode(text) == tokenizer.encode_ordinary(text)


def test_allowed_special_tokens_become_single_ids(tokenizer, reference):
    text = f"a story{ENDOFTEXT}another{USER}"
    only_eot = tokenizer.encode(text, allowed_special={ENDOFTEXT})
    assert only_eot.count(tokenizer.eot_id) == 1 and tokenizer.special_tokens[USER] not in only_eot
    assert only_eot == reference.encode(text, allowed_special={ENDOFTEXT})
    every = tokenizer.encode(text, allowed_special="all")
    assert every[-1] == tokenizer.special_tokens[USER]
    assert tokenizer.encode(ENDOFTEXT, allowed_special=ENDOFTEXT) == [tokenizer.eot_id]
    with pytest.raises(ValueError, match="not special tokens"):
        tokenizer.encode(text, allowed_special={"<|nope|>"})


def test_lone_surrogates_are_replaced_like_tiktoken_does(tokenizer, reference):
    text = "a\ud800b"
    ids = tokenizer.encode(text)
    assert reference.encode(text) == ids
    assert tokenizer.decode(ids) == "a\ufffdb"


def test_decode_refuses_ids_outside_the_vocabulary(tokenizer):
    assert tokenizer.decode([tokenizer.eot_id]) == ENDOFTEXT
    with pytest.raises(ValueError, match="token ids must lie in"):
        tokenizer.decode([tokenizer.vocab_size])
    with pytest.raises(ValueError):
        tokenizer.decode([-1])


def test_batch_encoding_matches_single_encoding(tokenizer):
    texts = ["Once upon a time", "", "日本語 😀", f"x{ENDOFTEXT}y"]
    assert tokenizer.encode_batch(texts, num_threads=2) == [tokenizer.encode_ordinary(t) for t in texts]


def test_merges_compress_english(tokenizer):
    text = (CORPUS / "children-books" / "peter_rabbit.txt").read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) / len(tokenizer.encode(text)) > 1.8  # 428 merges; bytes alone give 1.0
