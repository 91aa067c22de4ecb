"""Exact and near-duplicate detection, and the fingerprints the workers compute for it."""

from __future__ import annotations

import re

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH

from ownllm.data.dedup import SEED, Deduplicator, RowFile, minhash_permutations
from ownllm.data.fingerprints import MinHashSigner, exact_key, key_fraction, shingle_hashes

STORY_SPLIT = re.compile(r"(?<=\S)[ \t]*\n(?=[ \t]*\S)")


@pytest.fixture(scope="module")
def stories(bundled_corpus) -> list[str]:
    text = (bundled_corpus / "tinystories-train-prefix.txt").read_text()[:1_500_000]
    return [s.strip() for s in STORY_SPLIT.split(text) if len(s) > 400]


@pytest.fixture
def new_dedup(tmp_path):
    """Deduplicator(threshold, num_perm) with its index under tmp_path, closed after the test."""
    made = []

    def make(near_threshold, num_perm=128):
        made.append(Deduplicator(near_threshold, num_perm, directory=tmp_path))
        return made[-1]

    yield make
    for dedup in made:
        dedup.close()


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
    assert fractions.min() >= 0 and fractions.max() < 1
    assert abs(np.mean(fractions < 0.05) - 0.05) < 0.02
    assert abs(np.mean(fractions < 0.5) - 0.5) < 0.05


def test_exact_and_near_duplicates_are_found_and_the_first_is_kept(stories, new_dedup):
    sign = signer()
    dedup = new_dedup(0.8, 128)
    near = edit_words(stories[0], every=60)  # one word in 60 changed
    assert 0.8 < jaccard(stories[0], near) < 1
    docs = [stories[0], stories[1], stories[0].lower(), near, stories[2]]
    results = [dedup.check(exact_key(d), sign.signature(d)) for d in docs]
    assert results[0] is None and results[1] is None and results[4] is None
    assert results[2].reason == "exact_duplicate" and results[2].kept_id == 0
    assert results[3].reason == "near_duplicate" and results[3].kept_id == 0
    assert results[3].similarity >= 0.8
    assert dedup.kept == 3


def test_distinct_stories_are_never_merged(stories, new_dedup):
    sign = signer()
    dedup = new_dedup(0.8, 128)
    kept = [dedup.check(exact_key(s), sign.signature(s)) is None for s in stories[:800]]
    assert all(kept)


def test_the_threshold_is_a_similarity_not_just_an_lsh_collision(stories, new_dedup):
    original = stories[3]
    edited = edit_words(original, every=25)  # about 0.6-0.7 Jaccard
    similarity = jaccard(original, edited)
    assert 0.5 < similarity < 0.8
    sign = signer()
    strict = new_dedup(0.8, 128)
    loose = new_dedup(0.5, 128)
    for dedup, expect_duplicate in ((strict, False), (loose, True)):
        assert dedup.check(exact_key(original), sign.signature(original)) is None
        match = dedup.check(exact_key(edited), sign.signature(edited))
        assert (match is not None) == expect_duplicate


def test_exact_mode_keeps_near_duplicates(stories, new_dedup):
    dedup = new_dedup(None)
    near = edit_words(stories[0], every=60)
    assert dedup.check(exact_key(stories[0]), None) is None
    assert dedup.check(exact_key(near), None) is None
    assert dedup.check(exact_key(stories[0]), None).reason == "exact_duplicate"
    assert dedup.lsh_bands is None


def test_row_file_reads_back_written_and_pending_rows(tmp_path):
    store = RowFile(tmp_path / "rows", 3, np.uint32)
    n = 2 * RowFile.BATCH_ROWS + 5  # two batches on disk, five rows still pending
    for i in range(n):
        assert store.append((i, i + 1, i + 2)) == i
    assert len(store) == n
    assert (tmp_path / "rows").stat().st_size == 2 * RowFile.BATCH_ROWS * 12
    for i in (0, RowFile.BATCH_ROWS - 1, RowFile.BATCH_ROWS, n - 1):
        assert store[i].tolist() == [i, i + 1, i + 2]
    with pytest.raises(IndexError):
        store[n]
    with pytest.raises(ValueError, match="3 values"):
        store.append((1, 2))
    store.close()
    assert not (tmp_path / "rows").exists()


def test_the_index_is_on_disk_in_the_given_directory_and_close_removes_it(stories, tmp_path):
    sign = signer()
    with Deduplicator(0.8, 128, directory=tmp_path) as dedup:
        for story in stories[:50]:
            dedup.check(exact_key(story), sign.signature(story))
        (scratch,) = tmp_path.iterdir()
        assert {p.name for p in scratch.iterdir()} == {"index.sqlite", "signatures.u32"}
        assert (scratch / "signatures.u32").stat().st_size == 0  # 50 rows: still in the pending batch
    assert list(tmp_path.iterdir()) == []


def reference_decisions(docs, signatures, threshold, num_perm):
    """What datasketch's in-memory MinHashLSH decides, with the same confirmation by similarity."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    exact, kept, decisions = {}, [], []
    for doc, signature in zip(docs, signatures):
        key = exact_key(doc)
        if key in exact:
            decisions.append(("exact_duplicate", exact[key]))
            continue
        probe = MinHash(num_perm=num_perm, seed=SEED)
        probe.hashvalues = signature
        best = None
        for candidate in sorted(lsh.query(probe)):
            similarity = np.count_nonzero(kept[candidate] == signature) / num_perm
            if similarity >= threshold and (best is None or similarity > best[1]):
                best = (candidate, similarity)
        if best is not None:
            decisions.append(("near_duplicate", best[0]))
            continue
        exact[key] = len(kept)
        lsh.insert(len(kept), probe)
        kept.append(signature)
        decisions.append(None)
    return decisions


@pytest.mark.parametrize("threshold", [0.5, 0.8])
def test_the_on_disk_index_decides_as_datasketchs_in_memory_lsh(stories, new_dedup, threshold):
    rng = np.random.default_rng(0)
    originals = stories[:300]
    variants = [edit_words(originals[i], every=int(rng.integers(4, 80))) for i in rng.integers(0, 300, 300)]
    copies = [originals[i].upper() for i in rng.integers(0, 300, 50)]
    docs = originals + variants + copies
    docs = [docs[i] for i in rng.permutation(len(docs))]
    sign = signer()
    signatures = [sign.signature(d) for d in docs]
    dedup = new_dedup(threshold)
    ours = [dedup.check(exact_key(d), s) for d, s in zip(docs, signatures)]
    ours = [None if m is None else (m.reason, m.kept_id) for m in ours]
    assert ours == reference_decisions(docs, signatures, threshold, 128)
    assert 100 < sum(m is not None for m in ours) < 350  # the edits span both sides of the threshold
    assert dedup.clusters == len({m[1] for m in ours if m is not None})
