"""The BPE trainer: which merges it learns, in which order, and what it refuses."""

from __future__ import annotations

import heapq
import random
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ownllm.core.errors import UserError
from ownllm.tokenizer import ENDOFTEXT, SPECIAL_TOKENS, pretokenize, train_bpe
from ownllm.tokenizer.patterns import GPT4_PATTERN
from ownllm.tokenizer.pretokenize import count_pieces
from ownllm.tokenizer.reference import encode_piece
from ownllm.tokenizer.train import _heap_entry, _reverse_key, learn_merges

CORPUS = Path(__file__).resolve().parents[1] / "src" / "ownllm" / "resources" / "corpus"
N_SPECIAL = len(SPECIAL_TOKENS)


def shakespeare(chars: int) -> str:
    return (CORPUS / "tinyshakespeare.txt").read_text(encoding="utf-8")[:chars]


def naive_merges(word_counts: Counter, n_merges: int) -> list[tuple[bytes, bytes]]:
    """The definition, with nothing incremental: encode every word afresh, count every pair, take the max."""
    ranks = {bytes([b]): b for b in range(256)}
    vocab = {b: token for token, b in ranks.items()}
    merges = []
    for _ in range(n_merges):
        pair_counts: Counter = Counter()
        for word, count in word_counts.items():
            tokens = [vocab[i] for i in encode_piece(word, ranks)]
            for pair in zip(tokens, tokens[1:]):
                pair_counts[pair] += count
        if not pair_counts:
            break
        best = max(pair_counts, key=lambda pair: (pair_counts[pair], pair))
        vocab[len(ranks)] = best[0] + best[1]
        ranks[best[0] + best[1]] = len(ranks)
        merges.append(best)
    return merges


def unicode_mix(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    alphabet = [
        "aab",
        "ab",
        "abc",
        "bc",
        "c",
        " ",
        "  ",
        "\n\n",
        "123",
        "4567",
        "é",
        "e\u0301",
        "日本語",
        "😀",
        "👍🏽",
        "'s",
    ]
    return "".join(rng.choice(alphabet) for _ in range(n))


@pytest.mark.parametrize(
    "text",
    [shakespeare(6000), unicode_mix(1500), "aaaaaaaaaaaaaaaaa aaaa aaa aa a " * 10],
    ids=["english", "unicode-mix", "runs-of-one-byte"],
)
def test_incremental_trainer_learns_exactly_the_merges_of_the_naive_definition(text):
    word_counts = count_pieces([text], GPT4_PATTERN, [], workers=1)
    assert learn_merges(word_counts, 120) == naive_merges(word_counts, 120)


def test_most_frequent_pair_is_merged_first():
    tok = train_bpe(["ab ab ab cd"], 256 + N_SPECIAL + 1, workers=1)
    assert tok.merges == [(b"a", b"b")]


def test_ties_go_to_the_lexicographically_greatest_pair():
    # Pieces "ab", " ab", " cd": after (a,b) every pair occurs once; greatest pair of byte strings wins.
    tok = train_bpe(["ab ab cd"], 256 + N_SPECIAL + 4, workers=1)
    assert tok.merges == [(b"a", b"b"), (b"c", b"d"), (b" ", b"cd"), (b" ", b"ab")]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=3), min_size=1, max_size=6, unique=True),
    st.lists(st.tuples(st.integers(1, 3), st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=12),
)
def test_heap_order_is_count_then_greatest_bytes(tokens, candidates):
    candidates = [(count, a % len(tokens), b % len(tokens)) for count, a, b in candidates]
    heap_keys = [_reverse_key(token) for token in tokens]
    heap = [_heap_entry((a, b), count, heap_keys) for count, a, b in candidates]
    heapq.heapify(heap)
    top = heap[0]
    assert (-top[0], tokens[top[3]], tokens[top[4]]) == max((c, tokens[a], tokens[b]) for c, a, b in candidates)


def test_training_is_deterministic_and_independent_of_worker_count(monkeypatch):
    monkeypatch.setattr(pretokenize, "CHUNK_CHARS", 20_000)  # several chunks, spread over the workers
    documents = [shakespeare(200_000)[i : i + 5000] for i in range(0, 200_000, 5000)]
    one = train_bpe(documents, 600, workers=1)
    two = train_bpe(documents, 600, workers=2)
    again = train_bpe(documents, 600, workers=1)
    assert one.merges == two.merges == again.merges
    assert one.to_json() == two.to_json()


def test_paths_are_read_as_texts(tmp_path):
    text = shakespeare(20_000)
    path = tmp_path / "book.txt"
    path.write_text(text, encoding="utf-8")
    assert train_bpe([path], 400, workers=1).merges == train_bpe([text], 400, workers=1).merges


def test_special_tokens_are_never_merged_with_text():
    text = ("hello world" + ENDOFTEXT) * 100
    tok = train_bpe([text], 256 + N_SPECIAL + 50, workers=1)
    learned = [left + right for left, right in tok.merges]
    assert b"hello" in learned and b" world" in learned
    assert not any(b"|" in token or b"<" in token for token in learned)


def test_special_tokens_take_the_last_ids():
    tok = train_bpe([shakespeare(20_000)], 500, workers=1)
    assert tok.vocab_size == 500
    assert list(tok.special_tokens) == list(SPECIAL_TOKENS)
    assert list(tok.special_tokens.values()) == list(range(500 - N_SPECIAL, 500))
    assert tok.eot_id == 500 - N_SPECIAL
    assert len(tok.merges) == 500 - N_SPECIAL - 256


def test_vocabulary_must_hold_bytes_specials_and_one_merge():
    with pytest.raises(UserError, match=rf"use {256 + N_SPECIAL + 1} or more"):
        train_bpe(["some text"], 256 + N_SPECIAL, workers=1)
    assert len(train_bpe(["some text"], 256 + N_SPECIAL + 1, workers=1).merges) == 1


def test_training_stops_early_when_the_text_runs_out_of_pairs(capsys):
    tok = train_bpe(["abab"], 1000, workers=1)  # piece "abab": merges "ab", then "abab"
    assert tok.merges == [(b"a", b"b"), (b"ab", b"ab")]
    assert tok.vocab_size == 256 + 2 + N_SPECIAL
    assert tok.eot_id == 258
    assert "instead of 1000" in capsys.readouterr().err


def test_every_token_is_a_distinct_byte_string():
    tok = train_bpe([unicode_mix(20_000, seed=1)], 800, workers=1)
    tokens = [token for i, token in tok.vocab.items() if i not in tok.special_tokens.values()]
    assert len(set(tokens)) == len(tokens) == 800 - N_SPECIAL


def test_gpt2_preset_and_custom_patterns_train():
    text = shakespeare(20_000)
    gpt2 = train_bpe([text], 400, pattern="gpt2", workers=1)
    custom = train_bpe([text], 400, pattern=r"\w+|\s+|[^\w\s]+", workers=1)
    assert gpt2.pattern_name == "gpt2" and custom.pattern_name == "custom"
    assert gpt2.decode(gpt2.encode(text)) == text == custom.decode(custom.encode(text))
    # gpt2 keeps a newline apart from the next word's space; the custom pattern joins all whitespace.
    assert custom.merges != gpt2.merges


@pytest.mark.parametrize(
    "pattern, message",
    [
        (r"[a-z+", "neither a preset"),
        (r"\X", "not understood by tiktoken"),
        (r"[a-z]+", "unmatched"),
    ],
)
def test_bad_patterns_are_refused(pattern, message):
    with pytest.raises(UserError, match=message):
        train_bpe(["some text, with punctuation."], 300, pattern=pattern, workers=1)
