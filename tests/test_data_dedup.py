"""Exact and near-duplicate detection, and the fingerprints the workers compute for it."""

from __future__ import annotations

import re

import numpy as np
import pytest
from datasketch import MinHash

from ownllm.data.dedup import SEED, Deduplicator, RowStore, minhash_permutations
from ownllm.data.fingerprints import MinHashSigner, exact_key, key_fraction, shingle_hashes

STORY_SPLIT = re.compile(r"(?<=\S)[ \t]*\n(?=[ \t]*\S)")


@pytest.fixture(scope="module")
def stories(bundled_corpus) -> list[str]:
    text = (bundled_corpus / "tinystories-train-prefix.txt").read_text()[:1_500_000]
    return [s.strip() for s in STORY_SPLIT.split(text) if len(s) > 400]


def signer(num_perm=128, words=5) -> MinHashSigner:
    return MinHashSigner(minhash_permutations(num_perm), words)


def edit_words(text: str, every: int) -> str:
    """Replace every `every`-th word: a near duplicate whose similarity falls as `every` shrinks."""
    words = text.split(" ")
    return " ".join("CHANGED" if i % every == every - 1 else w for i, w in enumerate(words))


def jaccard(a: str, b: str, n: int = 5) -> float:
    sa, sb = set(shingle_hashes(a, n).tolist()), set(shingle_hashes(b, n).tolist())
    return len(sa & sb) / len(sa | sb)


def test_signatures_are_identical_to_datasketch(stories, bundled_corpus):
    long_text = (bundled_corpus / "children-books" / "peter_pan.txt").read_text()  # many blocks of shingles
    texts = [stories[0], stories[1], "three words only", "", long_text]
    ours = signer(128)
    for text in texts:
        reference = MinHash(num_perm=128, seed=SEED, hashfunc=int)
        reference.update_batch(shingle_hashes(text, 5).tolist())
        assert np.array_equal(ours.signature(text), reference.hashvalues)


def test_exact_key_ignores_case_and_whitespace_only(stories):
    story = stories[0]
    assert exact_key(story) == exact_key("  " + story.upper().replace(" ", "\n\t "))
    assert exact_key(story) != exact_key(story + "!")


def test_split_fraction_is_uniform(stories):
    fractions = np.array([key_fraction(exact_key(s)) for s in stories])
    assert 0 <= fractions.min() and fractions.max() < 1
    assert abs(np.mean(fractions < 0.05) - 0.05) < 0.02
    assert abs(np.mean(fractions < 0.5) - 0.5) < 0.05


def test_exact_and_near_duplicates_are_found_and_the_first_is_kept(stories):
    sign = signer()
    dedup = Deduplicator(0.8, 128)
    near = edit_words(stories[0], every=60)  # one word in 60 changed
    assert 0.8 < jaccard(stories[0], near) < 1
    docs = [stories[0], stories[1], stories[0].lower(), near, stories[2]]
    results = [dedup.check(exact_key(d), sign.signature(d)) for d in docs]
    assert results[0] is None and results[1] is None and results[4] is None
    assert results[2].reason == "exact_duplicate" and results[2].kept_id == 0
    assert results[3].reason == "near_duplicate" and results[3].kept_id == 0
    assert results[3].similarity >= 0.8
    assert dedup.kept == 3


def test_distinct_stories_are_never_merged(stories):
    sign = signer()
    dedup = Deduplicator(0.8, 128)
    kept = [dedup.check(exact_key(s), sign.signature(s)) is None for s in stories[:800]]
    assert all(kept)


def test_the_threshold_is_a_similarity_not_just_an_lsh_collision(stories):
    original = stories[3]
    edited = edit_words(original, every=25)  # about 0.6-0.7 Jaccard
    similarity = jaccard(original, edited)
    assert 0.5 < similarity < 0.8
    sign = signer()
    strict = Deduplicator(0.8, 128)
    loose = Deduplicator(0.5, 128)
    for dedup, expect_duplicate in ((strict, False), (loose, True)):
        assert dedup.check(exact_key(original), sign.signature(original)) is None
        match = dedup.check(exact_key(edited), sign.signature(edited))
        assert (match is not None) == expect_duplicate


def test_exact_mode_keeps_near_duplicates(stories):
    dedup = Deduplicator(None)
    near = edit_words(stories[0], every=60)
    assert dedup.check(exact_key(stories[0]), None) is None
    assert dedup.check(exact_key(near), None) is None
    assert dedup.check(exact_key(stories[0]), None).reason == "exact_duplicate"
    assert dedup.lsh_bands is None


def test_row_store_spans_blocks():
    store = RowStore(3, np.uint32)
    n = RowStore.BLOCK_ROWS + 5
    for i in range(n):
        assert store.append((i, i + 1, i + 2)) == i
    assert len(store) == n
    assert store[n - 1].tolist() == [n - 1, n, n + 1]
    last_of_first_block = RowStore.BLOCK_ROWS - 1
    assert store[last_of_first_block].tolist() == [last_of_first_block + k for k in range(3)]
    with pytest.raises(IndexError):
        store[n]
