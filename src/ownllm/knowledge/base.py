"""The knowledge base: a person's documents as passages in SQLite (`DIR/knowledge.db`), searched by BM25.

    kb = KnowledgeBase.for_run("runs/demo")
    kb.add(Path("notes/meeting.md"))        # "added" | "replaced" (its text changed) | "unchanged"
    kb.search("when is the meeting", k=5)   # [Hit(path, position, text, score, start, end), ...]

    documents  id, path (absolute, unique), sha256 of its text, chars, chunks, added
    chunks     id, document_id, position, start, end (character span in the document), text, embedding
    chunks_fts FTS5 over the chunks' text (Porter stemming, Unicode words); rowid = chunks.id

Adding a document is one transaction: its old chunks go and its new ones come together, so an
interrupted `ownllm kb add` leaves every document either as it was or wholly replaced, and
running it again finishes the rest (unchanged documents are skipped by their hash). Search is
FTS5's BM25 over the query's words but the commonest (any of them may match; rarer words weigh
more). The
`embedding` column is where the retrieval issue's own embeddings go; it is empty today.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ownllm.core.errors import UserError
from ownllm.core.sqlite import immediate_transaction, use_wal
from ownllm.knowledge.chunking import chunk_text
from ownllm.knowledge.documents import read_document

DB_NAME = "knowledge.db"
SCHEMA_VERSION = 1
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
"""
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
    score: float  # BM25, higher is better
    start: int
    end: int


class KnowledgeBase:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        try:
            use_wal(self._db)
            self._db.execute("PRAGMA foreign_keys = ON")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise UserError(f"{self.path} was written by a newer ownllm (schema {version}); upgrade ownllm")
            if version == 0:
                with self._transaction() as db:  # statement by statement: executescript would commit
                    for statement in SCHEMA.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise UserError(f"cannot open {self.path} ({e}); move the file away to start an empty one") from None

    @classmethod
    def for_run(cls, run_dir: str | Path) -> KnowledgeBase:
        return cls(Path(run_dir) / DB_NAME)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _transaction(self):
        return immediate_transaction(self._db, self._lock)

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
        with self._transaction() as db:
            if row is not None:
                self._delete(db, row[0])
            document_id = db.execute(
                "INSERT INTO documents (path, sha256, chars, chunks, added) VALUES (?, ?, ?, ?, ?)",
                (name, digest, len(text), len(chunks), time.time()),
            ).lastrowid
            for position, chunk in enumerate(chunks):
                chunk_id = db.execute(
                    "INSERT INTO chunks (document_id, position, start, end, text) VALUES (?, ?, ?, ?, ?)",
                    (document_id, position, chunk.start, chunk.end, chunk.text),
                ).lastrowid
                db.execute("INSERT INTO chunks_fts (rowid, text) VALUES (?, ?)", (chunk_id, chunk.text))
        return ("replaced" if row is not None else "added"), len(chunks)

    def remove(self, path: Path | str) -> bool:
        name = str(Path(path).resolve())
        with self._transaction() as db:
            row = db.execute("SELECT id FROM documents WHERE path = ?", (name,)).fetchone()
            if row is None:
                return False
            self._delete(db, row[0])
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

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """The k passages that match the query's words best (BM25); [] when none matches."""
        words = dict.fromkeys(w.lower() for w in _WORD.findall(query))
        words = {w: None for w in words if w not in STOPWORDS} or words
        if not words or k < 1:
            return []
        match = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
        with self._lock:
            rows = self._db.execute(
                "SELECT d.path, c.position, c.text, -bm25(chunks_fts) AS score, c.start, c.end "
                "FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.rowid JOIN documents d ON d.id = c.document_id "
                "WHERE chunks_fts MATCH ? ORDER BY bm25(chunks_fts) LIMIT ?",
                (match, k),
            ).fetchall()
        return [Hit(*row) for row in rows]
