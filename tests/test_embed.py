"""Our own embedder: pooling and loss, the pairs, `ownllm embed train` with the shared runner, the knowledge
base's vector and hybrid search and reindexing, and the guardrail's classifier on those vectors."""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil

import numpy as np
import pytest
import torch

from helpers.runs import ownllm_here, with_embedder
from ownllm.assistant.guardrails import Guardrail
from ownllm.assistant.safety import (
    SafetyClassifier,
    Tweet,
    clean,
    labelled_tweets,
    train_classifier,
)
from ownllm.core.errors import UserError
from ownllm.knowledge.base import RRF_K, KnowledgeBase
from ownllm.knowledge.embeddings import TextEmbedder
from ownllm.model import ModelConfig
from ownllm.model.embedder import Embedder
from ownllm.run import checkpoints
from ownllm.train.embedding import PairLoader, PairSource, passages

SMALL = ModelConfig(vocab_size=300, n_layers=2, d_model=32, n_heads=2, max_seq_len=64)


@pytest.fixture(scope="module")
def embedded_run(pretrained_run, tmp_path_factory):
    """The pretrained tiny run with a few steps of embedding training."""
    return with_embedder(pretrained_run, tmp_path_factory.mktemp("embedded"), steps=6)


def latest_embed_state(run) -> dict:
    path = checkpoints.latest_checkpoint(run / "checkpoints" / "embed")
    assert path is not None
    return checkpoints.read_state(path)


def ownllm_out(capsys, *args) -> tuple[int, str]:
    """`ownllm ARGS` in this process: (exit status, stdout and stderr together)."""
    capsys.readouterr()
    status, err = ownllm_here(None, *args)
    captured = capsys.readouterr()
    return status, captured.out + captured.err


class WordEmbedder:
    """A stand-in for TextEmbedder where the tests need vectors they can predict: hashed words, unit length."""

    def __init__(self, name: str = "words", dim: int = 64):
        self.id, self.dim, self.calls = name, dim, 0

    def embed(self, texts, progress=None):
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                word = word.strip(".,!?")
                out[row, int(hashlib.sha1(word.encode()).hexdigest(), 16) % self.dim] += 1
            out[row] /= max(float(np.linalg.norm(out[row])), 1e-9)
        if progress:
            progress(len(texts))
        return out


def test_embedding_ignores_padding_and_is_unit_length():
    torch.manual_seed(0)
    model = Embedder(SMALL, dim=16).eval()
    short = torch.randint(0, 300, (1, 5))
    padded = torch.cat([short, torch.full((1, 11), 7)], dim=1)
    with torch.no_grad():
        alone = model.encode(short, torch.tensor([5]))
        in_batch = model.encode(torch.cat([padded, torch.randint(0, 300, (1, 16))]), torch.tensor([5, 16]))
    assert torch.allclose(alone[0], in_batch[0], atol=1e-5)  # the pad tokens after the text change nothing
    assert torch.allclose(in_batch.norm(dim=1), torch.ones(2), atol=1e-5)


def test_the_contrastive_loss_is_in_batch_cross_entropy_both_ways():
    torch.manual_seed(0)
    model = Embedder(SMALL, dim=16).eval()
    tokens = torch.randint(0, 300, (8, 10))
    lengths = torch.tensor([10, 7, 9, 10, 10, 6, 8, 10])
    with torch.no_grad():
        loss = model(tokens, lengths)
        first = model.encode(tokens[:4, :10], lengths[:4])
        second = model.encode(tokens[4:, :10], lengths[4:])
    logits = first @ second.T / 0.05
    expected = (
        torch.nn.functional.cross_entropy(logits, torch.arange(4))
        + torch.nn.functional.cross_entropy(logits.T, torch.arange(4))
    ) / 2
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-4)


def test_training_on_pairs_teaches_it_to_find_the_partner():
    torch.manual_seed(0)
    model = Embedder(SMALL, dim=16)
    tokens = torch.randint(0, 300, (16, 12))
    lengths = torch.full((16,), 12)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model(tokens, lengths).item()
    for _ in range(40):
        loss = model(tokens, lengths)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 4


def test_passages_are_whole_sentences_up_to_the_size():
    text = " ".join(f"Sentence number {i} is here." for i in range(40)) + "\n\nA new paragraph. And more."
    found = passages(text, size=100)
    assert all(len(" ".join(p)) <= 100 for p in found)
    assert [s for p in found for s in p][:2] == ["Sentence number 0 is here.", "Sentence number 1 is here."]
    assert " ".join(" ".join(p) for p in found) == " ".join(text.split())


def test_pairs_are_of_each_kind_and_batches_replay_after_a_resume(pretrained_run):
    from ownllm.run import RunDir
    from ownllm.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(pretrained_run / "tokenizer")  # this run has token shards and no corpus
    source = PairSource.from_run(RunDir.open(pretrained_run, create=False), "train", tokenizer, limit=400)
    assert sum(len(d) for d in source.documents) >= 400
    rng = random.Random(0)
    question, passage = source.pair("question", rng)
    name = passage.split()[0]  # the made-up person the passage is about, whom the question names
    assert question.endswith("?") and name in question
    sentence, rest = source.pair("sentence", rng)
    assert sentence and rest
    same = source.pair("same", rng)
    assert same[0] == same[1]
    first_text, second_text = source.pair("neighbour", rng)
    assert first_text != second_text
    from ownllm.train.config import TrainConfig

    config = TrainConfig(micro_batch=4, seq_len=32)
    loader = PairLoader(source, tokenizer, config, "cpu")
    loader.next_batch()
    saved = loader.state_dict()
    expected = loader.next_batch()
    again = PairLoader(source, tokenizer, config, "cpu")
    again.load_state_dict(saved)
    tokens, lengths = again.next_batch()
    assert torch.equal(tokens, expected[0]) and torch.equal(lengths, expected[1])
    assert tokens.shape[0] == 8 and int(lengths.max()) <= 32


def test_embed_train_writes_a_checkpoint_that_embeds_texts(embedded_run, capsys):
    state = latest_embed_state(embedded_run)
    assert state["embed_dim"] == 256 and state["stage"] == "embed" and state["base_id"]
    evals = [json.loads(line) for line in (embedded_run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_recall_at_1" in e for e in evals if e.get("stage") == "embed")
    embedder = TextEmbedder.for_run(embedded_run)
    assert embedder is not None
    texts = ["The cat sat on the mat.", "A dog ran in the park.", "The cat sat on the mat."]
    vectors = embedder.embed(texts)
    assert vectors.shape == (3, 256) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert np.allclose(vectors[0], vectors[2], atol=1e-5) and not np.allclose(vectors[0], vectors[1])
    one_by_one = np.stack([embedder.embed([t])[0] for t in texts])  # batching and sorting change nothing
    assert np.allclose(one_by_one, vectors, atol=1e-4)
    status, out = ownllm_out(capsys, "embed", "encode", "--run", embedded_run, "one", "two")
    assert status == 0 and "+1.000" in out


def test_embed_train_refuses_without_a_pretrained_model(tokenizer_run, capsys):
    status, err = ownllm_here(capsys, "embed", "train", "--run", tokenizer_run, "--preset", "tiny")
    assert status != 0 and "ownllm pretrain" in err


def test_embed_train_resumes_with_the_command_it_names(embedded_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(embedded_run, run)
    status, err = ownllm_here(capsys, "embed", "train", "--run", run, "--preset", "tiny")
    assert status != 0 and "--resume" in err  # checkpoints exist: no silent overwrite
    status, err = ownllm_here(capsys, "embed", "train", "--run", run, "--resume", "--set", "steps=8")
    assert status == 0, err
    assert latest_embed_state(run)["step"] == 8


DOCS = {
    "kites.txt": "Tom flies a red kite in the park every Sunday. The wind carries it high.",
    "boats.txt": "Mia sails a small boat on the lake. The water is cold in winter.",
    "bakery.txt": "Bert bakes bread at the bakery before sunrise. He feeds the ducks with crumbs.",
}


def _kb(tmp_path, embedder):
    for name, text in DOCS.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    kb = KnowledgeBase(tmp_path / "knowledge.db", embedder)
    for name in DOCS:
        kb.add(tmp_path / name)
    return kb


def test_vector_search_ranks_by_cosine_and_hybrid_fuses_ranks(tmp_path):
    embedder = WordEmbedder()
    kb = _kb(tmp_path, embedder)
    query = "who bakes bread for the ducks"
    hits = kb.search(query, k=3, retriever="vector")
    vectors = embedder.embed([DOCS[h.path.rsplit("/", 1)[-1]] for h in hits])
    cosines = vectors @ embedder.embed([query])[0]
    assert [round(h.score, 3) for h in hits] == [round(float(c), 3) for c in cosines]  # float16 storage
    assert hits[0].path.endswith("bakery.txt") and list(cosines) == sorted(cosines, reverse=True)
    bm25 = [h.path for h in kb.search(query, k=50, retriever="bm25")]
    vector = [h.path for h in kb.search(query, k=50, retriever="vector")]
    fused = {p: sum(1 / (RRF_K + r.index(p) + 1) for r in (bm25, vector) if p in r) for p in set(bm25) | set(vector)}
    hybrid = kb.search(query, k=3, retriever="hybrid")
    assert [h.path for h in hybrid] == sorted(fused, key=lambda p: -fused[p])[:3]
    assert [h.path for h in kb.search(query, k=3)] == bm25[:3]  # the default: the best measured
    kb.retriever = "hybrid"
    assert [h.path for h in kb.search(query, k=3)] == [h.path for h in hybrid]
    with pytest.raises(UserError, match="retriever"):
        kb.search(query, retriever="magic")
    kb.close()


def test_vectors_of_another_embedder_are_not_mixed_and_reindex_replaces_them(tmp_path):
    kb = _kb(tmp_path, WordEmbedder("old"))
    kb.close()
    newer = WordEmbedder("new")
    kb = KnowledgeBase(tmp_path / "knowledge.db", newer)
    assert not kb.vectors_usable() and kb.without_vectors() == 3
    assert kb.search("bread", k=1)[0].path.endswith("bakery.txt")  # BM25 until reindexed
    with pytest.raises(UserError, match="reindex"):
        kb.search("bread", retriever="vector")
    (tmp_path / "new.txt").write_text("Zoe paints the fence green.", encoding="utf-8")
    kb.add(tmp_path / "new.txt")  # not embedded with the new embedder while the old vectors are in place
    assert kb.reindex() == 4 and kb.without_vectors() == 0 and kb.vectors_usable()
    assert kb.search("paints fence", k=1, retriever="vector")[0].path.endswith("new.txt")
    kb.close()


def test_an_interrupted_reindex_keeps_what_it_embedded(tmp_path, monkeypatch):
    kb = _kb(tmp_path, None)
    monkeypatch.setattr("ownllm.knowledge.base.EMBED_BATCH_CHUNKS", 2)
    embedder = WordEmbedder()
    calls = {"n": 0}
    real = embedder.embed

    def fails_second_time(texts, progress=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(texts, progress)

    embedder.embed = fails_second_time  # type: ignore[method-assign]
    kb.embedder = embedder
    with pytest.raises(KeyboardInterrupt):
        kb.reindex()
    assert kb.without_vectors() == 1  # the first batch of two stayed
    embedder.embed = real  # type: ignore[method-assign]
    assert kb.reindex() == 1 and kb.without_vectors() == 0
    kb.close()


def test_the_vector_matrix_is_read_again_after_another_connection_changes_the_base(tmp_path):
    embedder = WordEmbedder()
    kb = _kb(tmp_path, embedder)
    assert kb.search("kite", k=1, retriever="vector")[0].path.endswith("kites.txt")
    other = KnowledgeBase(tmp_path / "knowledge.db", embedder)  # e.g. `ownllm kb add` while serving
    (tmp_path / "zebra.txt").write_text("A zebra grazes by the river.", encoding="utf-8")
    other.add(tmp_path / "zebra.txt")
    other.close()
    assert kb.search("zebra grazes", k=1, retriever="vector")[0].path.endswith("zebra.txt")
    kb.close()


def test_a_version_1_knowledge_base_is_migrated(tmp_path):
    import sqlite3

    from ownllm.knowledge import base

    db = sqlite3.connect(tmp_path / "knowledge.db")
    db.executescript(base.SCHEMA + "PRAGMA user_version = 1;")
    db.close()
    kb = KnowledgeBase(tmp_path / "knowledge.db", WordEmbedder())
    (tmp_path / "a.txt").write_text("Apples grow on trees in the orchard.", encoding="utf-8")
    kb.add(tmp_path / "a.txt")
    assert kb.search("orchard apples", k=1, retriever="hybrid")[0].path.endswith("a.txt")
    kb.close()


def test_kb_reindex_and_search_with_the_runs_embedder(embedded_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(embedded_run, run)
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    status, out = ownllm_out(capsys, "kb", "add", "--run", run, str(docs))
    assert status == 0, out
    status, out = ownllm_out(capsys, "kb", "search", "--run", run, "bread bakery", "--retriever", "vector")
    assert status == 0 and "passage" in out
    status, out = ownllm_out(capsys, "kb", "list", "--run", run)
    assert status == 0 and "without vectors" not in out
    status, out = ownllm_out(capsys, "kb", "reindex", "--run", run)
    assert status == 0 and "0 passages" in out
    status, out = ownllm_out(
        capsys,
        "chat",
        "--run",
        run,
        "--retriever",
        "hybrid",
        "--max-tokens",
        "4",
        "-p",
        "Who bakes bread at the bakery?",
    )
    assert status == 0 and "bakery.txt" in out  # answered from the passage that hybrid search found


def test_chat_refuses_a_vector_retriever_without_an_embedder(pretrained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(pretrained_run, run)
    (tmp_path / "a.txt").write_text("Bert bakes bread at the bakery.", encoding="utf-8")
    assert ownllm_out(capsys, "kb", "add", "--run", run, tmp_path / "a.txt")[0] == 0
    status, out = ownllm_out(capsys, "chat", "--run", run, "--retriever", "vector", "-p", "Who bakes bread?")
    assert status != 0 and "ownllm embed train" in out


def test_tweets_are_cleaned_and_split_the_same_way_every_time():
    assert clean("RT @bob: I &amp; you @amy http://t.co/x") == "I & you @user http"
    tweets = labelled_tweets()
    assert len(tweets) == 24_783
    splits = {s: sum(t.split == s for t in tweets) for s in ("train", "val", "test")}
    assert splits == {"train": 19_826, "val": 2_473, "test": 2_484}
    assert 0.8 < sum(t.offensive for t in tweets) / len(tweets) < 0.86  # 20,620 hate or offensive of 24,783


def test_the_classifier_learns_the_direction_and_is_kept_with_its_embedder(tmp_path):
    rng = random.Random(0)
    bad, fine = ["awful", "nasty", "vile", "rotten"], ["sunny", "garden", "lunch", "friends"]
    tweets = [
        Tweet(" ".join(rng.choices(bad if offensive else fine, k=3) + rng.choices(fine, k=2)), offensive, split)
        for i in range(600)
        for offensive in [i % 3 != 0]
        for split in ["test" if i % 10 == 0 else "val" if i % 10 == 1 else "train"]
    ]
    embedder = WordEmbedder()
    classifier = train_classifier(embedder, tweets)
    assert classifier.metrics["precision"] > 0.95 and classifier.metrics["recall"] > 0.9
    assert classifier.flags("awful vile sunny") is not None and classifier.flags("sunny garden lunch") is None
    classifier.save(tmp_path / "guardrail" / "classifier.json")
    again = SafetyClassifier.for_run(tmp_path, embedder)
    assert again is not None and again.threshold == classifier.threshold
    with pytest.raises(UserError, match="guardrail train"):
        SafetyClassifier.for_run(tmp_path, WordEmbedder("another"))
    guard = Guardrail.bundled("flag", again)
    assert guard.findings("awful vile sunny")[-1].startswith("offensive (")
    assert guard.findings("sunny garden lunch") == []


def test_guardrail_train_and_check_on_the_run(embedded_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(embedded_run, run)
    status, out = ownllm_out(capsys, "guardrail", "train", "--run", run)
    assert status == 0, out
    assert "precision" in out and "blocklist precision" in out
    record = json.loads((run / "guardrail" / "classifier.json").read_text())
    assert record["metrics"]["test_tweets"] == 2_484 and 0 <= record["metrics"]["recall"] <= 1
    status, out = ownllm_out(capsys, "guardrail", "check", "--run", run, "what a lovely day")
    assert status == 0 and "<- what a lovely day" in out


def test_a_second_training_of_the_same_stage_on_a_run_is_refused(embedded_run, tmp_path, capsys):
    import fcntl
    import os

    run = tmp_path / "run"
    shutil.copytree(embedded_run, run)
    held = os.open(run, os.O_RDONLY)  # as a training in another process holds the run
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        status, err = ownllm_here(capsys, "embed", "train", "--run", run, "--resume", "--set", "steps=7")
    finally:
        os.close(held)
    assert status != 0 and "another ownllm training is running" in err
    assert latest_embed_state(run)["step"] == 6  # nothing written
    status, err = ownllm_here(capsys, "embed", "train", "--run", run, "--resume", "--set", "steps=7")
    assert status == 0, err
