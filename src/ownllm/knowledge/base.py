"""The knowledge base: a person's documents as passages in SQLite (`DIR/knowledge.db`), found by
BM25, by the run's own embeddings, or by both.

    kb = KnowledgeBase.for_run("runs/demo")  # with the run's embedder, when it has one
    kb.add(Path("notes/meeting.md"))         # "added" | "replaced" (its text changed) | "unchanged"
    kb.search("when is the meeting", k=5)    # [Hit(path, position, text, score, start, end), ...]
    kb.search(query, k, retriever="bm25")    # or "vector", "hybrid"; default DEFAULT_RETRIEVER

    documents  id, path (absolute, unique), sha256 of its text, chars, chunks, added
    chunks     id, document_id, position, start, end (character span in the document), text,
               embedding (float16 vector of the embedder named in meta, or NULL)
    chunks_fts FTS5 over the chunks' text (Porter stemming, Unicode words); rowid = chunks.id
    meta       embedder (the id of the embedder the vectors come from), version (+1 on every change)

Adding a document is one transaction: its old chunks go and its new ones come together, so an
interrupted `ownllm kb add` leaves every document either as it was or wholly replaced, and
running it again finishes the rest (unchanged documents are skipped by their hash). Passages
are embedded before the transaction, so the database is locked only while rows are written.

BM25 is FTS5's over the query's words but the commonest (any of them may match; rarer words
weigh more). Vector search is exact: every passage's vector times the query's, the vectors held
in memory as one float32 matrix and re-read when `version` changes (100,000 passages x 256
dimensions: 100 MB, a few milliseconds a query; sqlite-vec's vec0 tables also scan every vector,
see docs/benchmarks.md). Hybrid is reciprocal rank fusion of the two top-CANDIDATES lists:
sum of 1 / (RRF_K + rank), which needs no common scale between BM25 scores and cosines. The
default is DEFAULT_RETRIEVER, the one that measured best (BM25 today: the demo's embedder
knows children's stories, not an encyclopaedia); `retriever` chooses per base or per search.
Vectors from another embedder than the one in use (retrained since) are not mixed with its
own: until `ownllm kb reindex` re-embeds them, search is BM25 alone.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ownllm.core.errors import UserError
from ownllm.core.sqlite import immediate_transaction, use_wal
from ownllm.knowledge.chunking import chunk_text
from ownllm.knowledge.documents import read_document

if TYPE_CHECKING:
    from ownllm.knowledge.embeddings import TextEmbedder  # loads torch: only the caller that embeds pays for it

DB_NAME = "knowledge.db"
SCHEMA_VERSION = 2
RETRIEVERS = ("bm25", "vector", "hybrid")
# The best measured on SQuAD dev (docs/benchmarks.md, "Knowledge base"): with the demo's embedder (a 4.5M-parameter
# model trained on children's stories) BM25 finds the paragraph first 77% of the time, vectors 3%, hybrid 30%.
DEFAULT_RETRIEVER = "bm25"
CANDIDATES = 50  # from each retriever, for hybrid fusion
RRF_K = 60  # the constant of reciprocal rank fusion (Cormack et al. 2009)
EMBED_BATCH_CHUNKS = 256  # reindexing commits this many passages at a time
MIGRATIONS = {
    2: """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta (key, value) VALUES ('version', '0');
""",
}
SCHEMA = """
CREATE TABLE documents (
    id      INTEGER PRIMARY KEY,
    path    TEXT NOT NULL UNIQUE,
    sha256  TEXT NOT NULL,
    chars   INTEGER NOT NULL,
    chunks  INTEGER NOT NULL,
    added   REAL NOT NULL
);
CREATE TABLE chunks (
    id          INTEGER PRIMARY KEY,
    document_id INTEGER NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    start       INTEGER NOT NULL,
    end         INTEGER NOT NULL,
    text        TEXT NOT NULL,
    embedding   BLOB
);
CREATE INDEX chunks_by_document ON chunks (document_id, position);
CREATE VIRTUAL TABLE chunks_fts USING fts5 (text, tokenize = 'porter unicode61');
"""  # version 1; MIGRATIONS bring it up to SCHEMA_VERSION
_WORD = re.compile(r"\w+", re.UNICODE)
# The commonest English words: BM25 gives them almost no weight, but each matches most passages, and
# scoring every matched passage is what a search costs (100,000 passages: p95 157 ms with them, see
# docs/benchmarks.md). A query made only of them keeps them.
_COMMON = (
    "a an and are as at be but by did do does for from had has have he her his how i if in into is it its me "
    "my no not of on or our she so than that the their them then there these they this those to was we were "
    "what when where which who whom whose why will with would you your"
)
STOPWORDS = frozenset(_COMMON.split())


@dataclass(frozen=True)
class Hit:
    path: str
    position: int  # the chunk's number in its document, from 0
    text: str
    score: float  # higher is better: BM25, cosine similarity, or the fused rank score (hybrid)
    start: int
    end: int


class KnowledgeBase:
    def __init__(self, path: str | Path, embedder: TextEmbedder | None = None):
        self.path = Path(path)
        self.embedder = embedder
        self.retriever = DEFAULT_RETRIEVER  # what search() uses when not told
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._vectors: tuple[str, np.ndarray, np.ndarray] | None = None  # (version, chunk ids, matrix)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        try:
            use_wal(self._db)
            self._db.execute("PRAGMA foreign_keys = ON")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise UserError(f"{self.path} was written by a newer ownllm (schema {version}); upgrade ownllm")
            if version < SCHEMA_VERSION:
                with self._transaction() as db:  # statement by statement: executescript would commit
                    scripts = ([SCHEMA] if version == 0 else []) + [
                        MIGRATIONS[v] for v in range(max(version, 1) + 1, SCHEMA_VERSION + 1)
                    ]
                    for script in scripts:
                        for statement in script.split(";"):
                            if statement.strip():
                                db.execute(statement)
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise UserError(f"cannot open {self.path} ({e}); move the file away to start an empty one") from None

    @classmethod
    def for_run(cls, run_dir: str | Path, embedder: TextEmbedder | None = None) -> KnowledgeBase:
        return cls(Path(run_dir) / DB_NAME, embedder)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _transaction(self):
        return immediate_transaction(self._db, self._lock)

    def _meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    @staticmethod
    def _changed(db: sqlite3.Connection, embedder_id: str | None = None) -> None:
        """Inside a transaction: count a change (vector caches re-read), and name the vectors' embedder."""
        db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'version'")
        if embedder_id is not None:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('embedder', ?)", (embedder_id,))

    def vectors_usable(self) -> bool:
        """Whether the stored vectors come from the embedder in use (there may be none yet)."""
        return self.embedder is not None and self._meta("embedder") in (None, self.embedder.id)

    def add(self, path: Path, chunking: dict | None = None) -> tuple[str, int]:
        """Add or refresh one document; (what happened, its number of chunks)."""
        name = str(path.resolve())
        text = read_document(path)
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        with self._lock:
            row = self._db.execute("SELECT id, sha256, chunks FROM documents WHERE path = ?", (name,)).fetchone()
        if row is not None and row[1] == digest:
            return "unchanged", row[2]
        chunks = chunk_text(text, **(chunking or {}))
        embedder = self.embedder if self.vectors_usable() else None  # not while older vectors await a reindex
        vectors = None if embedder is None else embedder.embed([c.text for c in chunks])
        with self._transaction() as db:
            if row is not None:
                self._delete(db, row[0])
            document_id = db.execute(
                "INSERT INTO documents (path, sha256, chars, chunks, added) VALUES (?, ?, ?, ?, ?)",
                (name, digest, len(text), len(chunks), time.time()),
            ).lastrowid
            for position, chunk in enumerate(chunks):
                blob = None if vectors is None else vectors[position].astype(np.float16).tobytes()
                chunk_id = db.execute(
                    "INSERT INTO chunks (document_id, position, start, end, text, embedding) VALUES (?, ?, ?, ?, ?, ?)",
                    (document_id, position, chunk.start, chunk.end, chunk.text, blob),
                ).lastrowid
                db.execute("INSERT INTO chunks_fts (rowid, text) VALUES (?, ?)", (chunk_id, chunk.text))
            self._changed(db, None if embedder is None else embedder.id)
        return ("replaced" if row is not None else "added"), len(chunks)

    def remove(self, path: Path | str) -> bool:
        name = str(Path(path).resolve())
        with self._transaction() as db:
            row = db.execute("SELECT id FROM documents WHERE path = ?", (name,)).fetchone()
            if row is None:
                return False
            self._delete(db, row[0])
            self._changed(db)
        return True

    @staticmethod
    def _delete(db: sqlite3.Connection, document_id: int) -> None:
        db.execute(
            "DELETE FROM chunks_fts WHERE rowid IN (SELECT id FROM chunks WHERE document_id = ?)", (document_id,)
        )
        db.execute("DELETE FROM chunks WHERE document_id = ?", (document_id,))
        db.execute("DELETE FROM documents WHERE id = ?", (document_id,))

    def documents(self) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT path, chars, chunks, added FROM documents ORDER BY path").fetchall()
        return [{"path": p, "chars": c, "chunks": n, "added": a} for p, c, n, a in rows]

    def without_vectors(self) -> int:
        """Passages the embedder in use has not embedded (all of them after the embedder changed)."""
        with self._lock:
            if self.embedder is not None and not self.vectors_usable():
                return self._db.execute("SELECT count(*) FROM chunks").fetchone()[0]
            return self._db.execute("SELECT count(*) FROM chunks WHERE embedding IS NULL").fetchone()[0]

    def reindex(self, progress: Callable[[int], None] | None = None) -> int:
        """Embed every passage without a vector of the embedder in use; how many were embedded.
        Commits every EMBED_BATCH_CHUNKS passages: an interrupted reindex keeps what it did."""
        if self.embedder is None:
            raise UserError("the run has no embedder; train one with `ownllm embed train`")
        if not self.vectors_usable():  # vectors of another embedder: drop them all first
            with self._transaction() as db:
                db.execute("UPDATE chunks SET embedding = NULL")
                db.execute("DELETE FROM meta WHERE key = 'embedder'")
                self._changed(db)
        done = 0
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT id, text FROM chunks WHERE embedding IS NULL ORDER BY id LIMIT ?", (EMBED_BATCH_CHUNKS,)
                ).fetchall()
            if not rows:
                return done
            vectors = self.embedder.embed([text for _, text in rows], progress)
            with self._transaction() as db:
                for (chunk_id, _), vector in zip(rows, vectors, strict=True):
                    db.execute(
                        "UPDATE chunks SET embedding = ? WHERE id = ?", (vector.astype(np.float16).tobytes(), chunk_id)
                    )
                self._changed(db, self.embedder.id)
            done += len(rows)

    def search(self, query: str, k: int = 5, retriever: str | None = None) -> list[Hit]:
        """The k passages that best match the query; [] when none does. retriever: one of RETRIEVERS;
        None is self.retriever (DEFAULT_RETRIEVER unless set), BM25 while the vectors are not this embedder's."""
        if k < 1:
            return []
        if retriever is None:
            retriever = self.retriever if self.vectors_usable() else "bm25"
        if retriever not in RETRIEVERS:
            raise UserError(f"retriever {retriever!r} is not one of {', '.join(RETRIEVERS)}")
        if retriever == "bm25":
            return self._hits(self._bm25(query, k))
        if not self.vectors_usable():
            raise UserError("the knowledge base has no vectors from this run's embedder; run `ownllm kb reindex`")
        if retriever == "vector":
            return self._hits(self._nearest(query, k))
        fused: dict[int, float] = {}
        for ranking in (self._bm25(query, CANDIDATES), self._nearest(query, CANDIDATES)):
            for rank, (chunk_id, _) in enumerate(ranking, 1):
                fused[chunk_id] = fused.get(chunk_id, 0.0) + 1.0 / (RRF_K + rank)
        best = sorted(fused.items(), key=lambda item: -item[1])[:k]
        return self._hits(best)

    def _bm25(self, query: str, k: int) -> list[tuple[int, float]]:
        words = dict.fromkeys(w.lower() for w in _WORD.findall(query))
        words = {w: None for w in words if w not in STOPWORDS} or words
        if not words:
            return []
        match = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
        with self._lock:
            return self._db.execute(
                "SELECT rowid, -bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY bm25(chunks_fts) "
                "LIMIT ?",
                (match, k),
            ).fetchall()

    def _nearest(self, query: str, k: int) -> list[tuple[int, float]]:
        assert self.embedder is not None
        ids, matrix = self._matrix()
        if not len(ids) or not query.strip():
            return []
        scores = matrix @ self.embedder.embed([query])[0]
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(ids[i]), float(scores[i])) for i in top]

    def _matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """(chunk ids, their vectors as float32 rows), read again only after a change."""
        version = self._meta("version") or "0"
        with self._lock:
            if self._vectors is None or self._vectors[0] != version:
                rows = self._db.execute("SELECT id, embedding FROM chunks WHERE embedding IS NOT NULL").fetchall()
                dim = self.embedder.dim if self.embedder else 0
                ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float16).reshape(len(rows), dim)
                self._vectors = (version, ids, matrix.astype(np.float32))
            return self._vectors[1], self._vectors[2]

    def _hits(self, ranked: list[tuple[int, float]]) -> list[Hit]:
        if not ranked:
            return []
        marks = ",".join("?" * len(ranked))
        with self._lock:
            rows = self._db.execute(
                "SELECT c.id, d.path, c.position, c.text, c.start, c.end FROM chunks c "
                f"JOIN documents d ON d.id = c.document_id WHERE c.id IN ({marks})",
                [chunk_id for chunk_id, _ in ranked],
            ).fetchall()
        found = {row[0]: row[1:] for row in rows}
        return [
            Hit(path, position, text, score, start, end)
            for chunk_id, score in ranked
            if chunk_id in found
            for path, position, text, start, end in [found[chunk_id]]
        ]
