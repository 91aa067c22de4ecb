"""Conversations, messages and feedback kept in SQLite (`run/assistant.db`), safe to kill at any time.

    conversations  id (unguessable), owner, title, system_prompt, settings (JSON), created, updated
    messages       id, conversation_id, parent_id, position, role, content, tool_call (JSON),
                   status (complete | streaming | interrupted), active, created,
                   citations (JSON: the knowledge-base passages a reply was given, or NULL)
    feedback       message_id, rating (+1 | -1), comment, created
    memories       id, owner, text, created: what a user asked the assistant to remember
    guardrail_log  id, owner, route, direction (input | output), findings, action, created

Messages form a tree: each one points at the message it follows (`parent_id`). Regenerating
a reply or editing the last user message does not delete anything; it marks the replaced
messages inactive and adds new ones beside them, so a thumbs-down on the first answer and a
thumbs-up on the second become a preference pair (`ownllm feedback export`). What a
conversation shows is its active messages, in position order.

Durability: WAL journal, `synchronous=FULL`, one transaction per change. A reply is saved
when it starts (status "streaming") and its text is flushed while it is written; a server
killed mid-reply leaves the finished messages intact, and the next `Store` opened with
`recover=True` (the server's) marks the cut-off reply "interrupted".

Schema versions live in `PRAGMA user_version`; `MIGRATIONS[i]` takes a database from
version i to i + 1, so an old file is brought up to date when it is opened, and a file
from a newer ownllm is refused instead of being misread.

One connection per Store, shared by the server's threads under a lock: every operation is
a few milliseconds, and a single writer is what SQLite wants anyway.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ownllm.core.errors import UserError
from ownllm.core.sqlite import immediate_transaction, use_wal

STATUSES = ("complete", "streaming", "interrupted")
RATINGS = {"up": 1, "down": -1}
_RATING_NAMES = {v: k for k, v in RATINGS.items()}
TURN_KINDS = ("send", "regenerate", "edit")

MIGRATIONS: list[str] = [
    # 1: conversations and their messages, one line of them per conversation.
    """
    CREATE TABLE conversations (
        id            TEXT PRIMARY KEY,
        owner         TEXT NOT NULL,
        title         TEXT NOT NULL DEFAULT '',
        system_prompt TEXT NOT NULL DEFAULT '',
        settings      TEXT NOT NULL DEFAULT '{}',
        created       REAL NOT NULL,
        updated       REAL NOT NULL
    );
    CREATE INDEX conversations_by_owner ON conversations (owner, updated);
    CREATE TABLE messages (
        id              TEXT PRIMARY KEY,
        conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
        position        INTEGER NOT NULL,
        role            TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
        content         TEXT NOT NULL,
        tool_call       TEXT,
        status          TEXT NOT NULL DEFAULT 'complete' CHECK (status IN ('complete', 'streaming', 'interrupted')),
        created         REAL NOT NULL
    );
    CREATE INDEX messages_by_conversation ON messages (conversation_id, position);
    """,
    # 2: replaced messages are kept beside their successors (regenerate, edit), and feedback.
    """
    ALTER TABLE messages ADD COLUMN parent_id TEXT REFERENCES messages (id) ON DELETE CASCADE;
    ALTER TABLE messages ADD COLUMN active INTEGER NOT NULL DEFAULT 1;
    UPDATE messages SET parent_id = (
        SELECT p.id FROM messages AS p
        WHERE p.conversation_id = messages.conversation_id AND p.position = messages.position - 1
    );
    CREATE INDEX messages_by_parent ON messages (parent_id);
    CREATE TABLE feedback (
        message_id TEXT PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
        rating     INTEGER NOT NULL CHECK (rating IN (1, -1)),
        comment    TEXT NOT NULL DEFAULT '',
        created    REAL NOT NULL
    );
    """,
    # 3: facts a user asked the assistant to remember (assistant/memory.py), per owner.
    """
    CREATE TABLE memories (
        id      TEXT PRIMARY KEY,
        owner   TEXT NOT NULL,
        text    TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE INDEX memories_by_owner ON memories (owner, created);
    """,
    # 4: what the guardrail found (assistant/guardrails.py), for review.
    """
    CREATE TABLE guardrail_log (
        id        INTEGER PRIMARY KEY,
        owner     TEXT NOT NULL,
        route     TEXT NOT NULL,
        direction TEXT NOT NULL CHECK (direction IN ('input', 'output')),
        findings  TEXT NOT NULL,
        action    TEXT NOT NULL,
        created   REAL NOT NULL
    );
    """,
    # 5: the passages of the knowledge base a reply was given (assistant/knowledge.py), for the page's sources.
    """
    ALTER TABLE messages ADD COLUMN citations TEXT;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
DB_NAME = "assistant.db"  # in the run directory


class ConversationBusy(UserError):
    """A reply to this conversation is still being written (HTTP 409)."""


class NothingToReplace(UserError):
    """Regenerate or edit on a conversation without a user message (HTTP 400)."""


def new_id() -> str:
    """128 random bits, URL-safe: ids cannot be guessed or enumerated."""
    return secrets.token_urlsafe(16)


@dataclass
class Turn:
    """The messages one request adds (a user message and a streaming reply) and those it replaced.

    `history` is the conversation the reply answers: the active messages, oldest first,
    ending with the user message.
    """

    conversation_id: str
    history: list[dict]
    reply_id: str
    user_id: str | None = None
    replaced: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    position: int = 0  # the position of the message being streamed (reply_id)


class Store:
    def __init__(self, path: str | Path, recover: bool = True):
        """Open (creating or migrating) the database; `recover`: mark replies cut off by a crash "interrupted".

        Only the server recovers: a reader such as `ownllm feedback export` may run while a
        server is writing a reply, and must not mark that live reply interrupted.
        """
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Conversations are private: a new file is readable by its owner only (SQLite gives its
        # -wal and -shm files the same permissions).
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        try:
            self._db.row_factory = sqlite3.Row
            use_wal(self._db)
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise UserError(f"cannot open {self.path} ({e}); move the file away to start an empty one") from None
        except BaseException:
            self._db.close()
            raise
        if recover:
            with self._write() as db:
                db.execute("UPDATE messages SET status = 'interrupted' WHERE status = 'streaming'")

    @classmethod
    def for_run(cls, run_dir: str | Path, recover: bool = True) -> Store:
        return cls(Path(run_dir) / DB_NAME, recover=recover)

    def secret(self) -> bytes:
        """The server's secret for keyed hashes (security.owner_id), in a file of its own beside the database.

        Made on first use (32 random bytes, readable by this user only), so that a copy of the
        database alone does not let anyone test guesses of an API key against its owner ids.
        """
        path = self.path.with_suffix(".secret")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            secret = path.read_bytes()
            if len(secret) < 32:
                raise UserError(f"{path} is damaged (shorter than 32 bytes); delete it to make a new one") from None
            return secret
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
            f.flush()
            os.fsync(f.fileno())
        return path.read_bytes()

    def rename_owner(self, old: str, new: str) -> int:
        """Move everything of owner `old` to `new` (a changed way of naming owners); how many conversations moved."""
        with self._write() as db:
            db.execute("UPDATE memories SET owner = ? WHERE owner = ?", (new, old))
            return db.execute("UPDATE conversations SET owner = ? WHERE owner = ?", (new, old)).rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction, holding SQLite's write lock from the start (no upgrade deadlocks)."""
        with immediate_transaction(self._db, self._lock) as db:
            yield db

    def _read(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _migrate(self) -> None:
        """Bring the file to SCHEMA_VERSION in one transaction (all or nothing; one process at a time)."""
        with self._write() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise UserError(
                    f"{self.path} has schema version {version}, newer than this ownllm's "
                    f"{SCHEMA_VERSION}; upgrade ownllm"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target - 1].split(";"):  # plain DDL: no ";" inside statements
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {target}")

    @property
    def schema_version(self) -> int:
        return self._read("PRAGMA user_version")[0][0]

    # Conversations. Every operation takes the owner: another owner's conversation is "not found".

    def create_conversation(
        self, owner: str, title: str = "", system_prompt: str = "", settings: dict | None = None
    ) -> dict:
        now = time.time()
        conversation_id = new_id()
        with self._write() as db:
            db.execute(
                "INSERT INTO conversations (id, owner, title, system_prompt, settings, created, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, owner, title, system_prompt, json.dumps(settings or {}), now, now),
            )
        conversation = self.get_conversation(owner, conversation_id, with_messages=False)
        assert conversation is not None  # inserted just above
        return conversation

    def list_conversations(self, owner: str) -> list[dict]:
        """The owner's conversations, the most recently active first (no messages)."""
        rows = self._read("SELECT * FROM conversations WHERE owner = ? ORDER BY updated DESC, rowid DESC", (owner,))
        return [_conversation(row) for row in rows]

    def get_conversation(self, owner: str, conversation_id: str, with_messages: bool = True) -> dict | None:
        """The conversation with its active messages (and their ratings), or None."""
        rows = self._read("SELECT * FROM conversations WHERE id = ? AND owner = ?", (conversation_id, owner))
        if not rows:
            return None
        conversation = _conversation(rows[0])
        if with_messages:
            conversation["messages"] = [
                _message(r)
                for r in self._read(
                    "SELECT m.*, f.rating, f.comment AS feedback_comment FROM messages AS m "
                    "LEFT JOIN feedback AS f ON f.message_id = m.id "
                    "WHERE m.conversation_id = ? AND m.active = 1 ORDER BY m.position",
                    (conversation_id,),
                )
            ]
        return conversation

    def update_conversation(
        self,
        owner: str,
        conversation_id: str,
        *,
        title: str | None = None,
        system_prompt: str | None = None,
        settings: dict | None = None,
    ) -> dict | None:
        """Rename, or change the system prompt or settings; None if there is no such conversation."""
        changes = {
            "title": title,
            "system_prompt": system_prompt,
            "settings": None if settings is None else json.dumps(settings),
        }
        changes = {k: v for k, v in changes.items() if v is not None}
        with self._write() as db:
            sets = ", ".join(f"{k} = ?" for k in changes)
            cursor = db.execute(
                f"UPDATE conversations SET {sets + ', ' if sets else ''}updated = ? WHERE id = ? AND owner = ?",
                (*changes.values(), time.time(), conversation_id, owner),
            )
            if cursor.rowcount == 0:
                return None
        return self.get_conversation(owner, conversation_id, with_messages=False)

    def delete_conversation(self, owner: str, conversation_id: str) -> bool:
        """Delete it with its messages and their feedback (foreign keys cascade)."""
        with self._write() as db:
            return (
                db.execute("DELETE FROM conversations WHERE id = ? AND owner = ?", (conversation_id, owner)).rowcount
                > 0
            )

    def export_conversation(self, owner: str, conversation_id: str) -> dict | None:
        """Everything about one conversation as JSON: replaced messages and feedback included."""
        conversation = self.get_conversation(owner, conversation_id, with_messages=False)
        if conversation is None:
            return None
        rows = self._read(
            "SELECT m.*, f.rating, f.comment AS feedback_comment FROM messages AS m "
            "LEFT JOIN feedback AS f ON f.message_id = m.id "
            "WHERE m.conversation_id = ? ORDER BY m.position, m.created, m.rowid",
            (conversation_id,),
        )
        return {
            "format": "ownllm.conversation",
            "version": 1,
            **conversation,
            "messages": [_message(r, full=True) for r in rows],
        }

    # Messages.

    def begin_turn(self, owner: str, conversation_id: str, kind: str, content: str | None = None) -> Turn | None:
        """Save what a request adds before the reply is generated; None if there is no such conversation.

        kind "send": a new user message `content` after the last active message.
        kind "regenerate": a new reply to the last user message (the old reply is kept, inactive).
        kind "edit": the last user message replaced by `content`, and a new reply to it.
        Each saves the user message (if any) and an empty "streaming" reply in one transaction.
        Raises ConversationBusy while another reply to the conversation is streaming.
        """
        if kind not in TURN_KINDS:
            raise ValueError(f"unknown turn kind {kind!r}")
        now = time.time()
        with self._write() as db:
            if not db.execute(
                "SELECT 1 FROM conversations WHERE id = ? AND owner = ?", (conversation_id, owner)
            ).fetchone():
                return None
            active = [
                dict(r)
                for r in db.execute(
                    "SELECT * FROM messages WHERE conversation_id = ? AND active = 1 ORDER BY position",
                    (conversation_id,),
                )
            ]
            if any(m["status"] == "streaming" for m in active):
                raise ConversationBusy("a reply to this conversation is still being written; stop it or wait")
            if kind == "send":
                if active and active[-1]["role"] == "user":
                    raise ConversationBusy("the last message has no reply yet; regenerate it or edit it")
                keep = len(active)
            else:
                users = [i for i, m in enumerate(active) if m["role"] == "user"]
                if not users:
                    raise NothingToReplace(f"the conversation has no user message to {kind}")
                keep = users[-1] + (1 if kind == "regenerate" else 0)
            kept, replaced = active[:keep], active[keep:]
            if replaced:
                db.executemany("UPDATE messages SET active = 0 WHERE id = ?", [(m["id"],) for m in replaced])
            turn = Turn(
                conversation_id, history=[_plain(m) for m in kept], reply_id="", replaced=[m["id"] for m in replaced]
            )
            parent = kept[-1]["id"] if kept else None
            if kind != "regenerate":
                assert content is not None, f"a {kind} turn needs content"  # the column is NOT NULL
                turn.user_id = parent = self._insert(db, conversation_id, parent, len(kept), "user", content, now)
                turn.history.append({"role": "user", "content": content})
                turn.added.append(parent)
            turn.position = len(turn.history)
            turn.reply_id = self._insert(
                db, conversation_id, parent, turn.position, "assistant", "", now, status="streaming"
            )
            turn.added.append(turn.reply_id)
            title = content.strip().splitlines()[0][:60] if content and content.strip() else None
            db.execute(
                "UPDATE conversations SET updated = ?, title = CASE WHEN title = '' AND ? IS NOT NULL "
                "THEN ? ELSE title END WHERE id = ?",
                (now, title, title, conversation_id),
            )
        return turn

    def save_text(self, message_id: str, content: str) -> None:
        """Flush the text of a reply being streamed."""
        with self._write() as db:
            db.execute("UPDATE messages SET content = ? WHERE id = ?", (content, message_id))

    def finish_message(
        self, message_id: str, content: str, status: str = "complete", citations: list[dict] | None = None
    ) -> None:
        """The reply's final text; status "interrupted" when it was stopped or failed midway.

        `citations`: the knowledge-base passages the reply was given ({"path", "position", "start",
        "end", "text"} each), kept with it; none (or an empty list) keeps none.
        """
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        cited = json.dumps(citations, ensure_ascii=False) if citations else None
        with self._write() as db:
            db.execute(
                "UPDATE messages SET content = ?, status = ?, citations = ? WHERE id = ?",
                (content, status, cited, message_id),
            )

    def tool_step(self, turn: Turn, content: str, tool_call: dict, result: str) -> str:
        """The streaming reply ends in a tool call: save it, the tool's result, and start the reply that follows.

        One transaction, so a crash never leaves a tool call without its result.
        Returns the id of the new streaming reply (also set as `turn.reply_id`).
        """
        now = time.time()
        with self._write() as db:
            db.execute(
                "UPDATE messages SET content = ?, tool_call = ?, status = 'complete' WHERE id = ?",
                (content, json.dumps(tool_call), turn.reply_id),
            )
            tool_id = self._insert(db, turn.conversation_id, turn.reply_id, turn.position + 1, "tool", result, now)
            turn.reply_id = self._insert(
                db, turn.conversation_id, tool_id, turn.position + 2, "assistant", "", now, status="streaming"
            )
        turn.added += [tool_id, turn.reply_id]
        turn.position += 2
        return turn.reply_id

    def abandon_turn(self, turn: Turn) -> None:
        """Undo a turn that produced nothing (e.g. the prompt did not fit): the conversation is as before."""
        with self._write() as db:
            db.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in reversed(turn.added)])
            db.executemany("UPDATE messages SET active = 1 WHERE id = ?", [(i,) for i in turn.replaced])

    def get_messages(self, ids: list[str]) -> list[dict]:
        marks = ",".join("?" * len(ids))
        rows = self._read(
            f"SELECT m.*, f.rating, f.comment AS feedback_comment FROM messages AS m "
            f"LEFT JOIN feedback AS f ON f.message_id = m.id WHERE m.id IN ({marks}) "
            f"ORDER BY m.position",
            tuple(ids),
        )
        return [_message(r) for r in rows]

    @staticmethod
    def _insert(
        db: sqlite3.Connection,
        conversation_id: str,
        parent_id: str | None,
        position: int,
        role: str,
        content: str,
        now: float,
        status: str = "complete",
    ) -> str:
        message_id = new_id()
        db.execute(
            "INSERT INTO messages (id, conversation_id, parent_id, position, role, content, status, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (message_id, conversation_id, parent_id, position, role, content, status, now),
        )
        return message_id

    # Feedback.

    def log_guardrail(self, owner: str, route: str, direction: str, findings: str, action: str) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO guardrail_log (owner, route, direction, findings, action, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (owner, route, direction, findings, action, time.time()),
            )

    def guardrail_log(self, owner: str) -> list[dict]:
        rows = self._read("SELECT * FROM guardrail_log WHERE owner = ? ORDER BY id", (owner,))
        return [dict(r) for r in rows]

    # Memories: what a user asked to be remembered, theirs alone.

    def remember(self, owner: str, text: str) -> dict:
        """Keep a fact for `owner` (the same text twice is kept once); the memory."""
        text = " ".join(text.split())
        with self._write() as db:
            row = db.execute("SELECT id, created FROM memories WHERE owner = ? AND text = ?", (owner, text)).fetchone()
            if row is None:
                row = (new_id(), time.time())
                db.execute("INSERT INTO memories VALUES (?, ?, ?, ?)", (row[0], owner, text, row[1]))
        return {"id": row[0], "text": text, "created": row[1]}

    def memories(self, owner: str) -> list[dict]:
        rows = self._read("SELECT id, text, created FROM memories WHERE owner = ? ORDER BY created, rowid", (owner,))
        return [{"id": r["id"], "text": r["text"], "created": r["created"]} for r in rows]

    def forget(self, owner: str, memory_id: str) -> bool:
        with self._write() as db:
            return db.execute("DELETE FROM memories WHERE id = ? AND owner = ?", (memory_id, owner)).rowcount > 0

    def rate(self, owner: str, message_id: str, rating: str | None, comment: str = "") -> dict | None:
        """Thumbs "up" or "down" on an assistant message, or None to take the rating back.

        Returns the message with its rating, or None if the owner has no such assistant message.
        """
        if rating is not None and rating not in RATINGS:
            raise ValueError(f"a rating is 'up' or 'down', not {rating!r}")
        with self._write() as db:
            found = db.execute(
                "SELECT 1 FROM messages AS m JOIN conversations AS c ON c.id = m.conversation_id "
                "WHERE m.id = ? AND c.owner = ? AND m.role = 'assistant'",
                (message_id, owner),
            ).fetchone()
            if not found:
                return None
            if rating is None:
                db.execute("DELETE FROM feedback WHERE message_id = ?", (message_id,))
            else:
                db.execute(
                    "INSERT INTO feedback (message_id, rating, comment, created) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (message_id) DO UPDATE SET rating = excluded.rating, "
                    "comment = excluded.comment, created = excluded.created",
                    (message_id, RATINGS[rating], comment, time.time()),
                )
        return self.get_messages([message_id])[0]

    def rated_replies(self) -> list[dict]:
        """Every rated assistant message, with what led to it: for `ownllm feedback export`.

        Each item: {"message_id", "rating", "comment", "status", "system_prompt", "path"}, where
        `path` is the branch from the first message to the rated one (plain message dicts),
        following parent links, so a replaced reply keeps the prompt it answered.
        """
        rated = self._read(
            "SELECT m.id, m.conversation_id, m.status, f.rating, f.comment, c.system_prompt "
            "FROM feedback AS f JOIN messages AS m ON m.id = f.message_id "
            "JOIN conversations AS c ON c.id = m.conversation_id "
            "ORDER BY c.created, m.position, f.rowid"
        )
        messages: dict[str, dict[str, Any]] = {}
        for conversation_id in dict.fromkeys(r["conversation_id"] for r in rated):
            for row in self._read("SELECT * FROM messages WHERE conversation_id = ?", (conversation_id,)):
                messages[row["id"]] = dict(row)
        out = []
        for r in rated:
            path, node = [], messages.get(r["id"])
            while node is not None:
                path.append(_plain(node))
                node = messages.get(node["parent_id"])
            out.append(
                {
                    "message_id": r["id"],
                    "rating": _RATING_NAMES[r["rating"]],
                    "comment": r["comment"],
                    "status": r["status"],
                    "system_prompt": r["system_prompt"],
                    "path": path[::-1],
                }
            )
        return out


def _conversation(row: sqlite3.Row) -> dict:
    return {
        "id": row["id"],
        "title": row["title"],
        "system_prompt": row["system_prompt"],
        "settings": json.loads(row["settings"]),
        "created": row["created"],
        "updated": row["updated"],
    }


def _message(row: sqlite3.Row, full: bool = False) -> dict:
    message = {
        "id": row["id"],
        "role": row["role"],
        "content": row["content"],
        "status": row["status"],
        "created": row["created"],
        "rating": _RATING_NAMES.get(row["rating"]),
        "comment": row["feedback_comment"],
    }
    if row["tool_call"] is not None:
        message["tool_call"] = json.loads(row["tool_call"])
    if row["citations"] is not None:
        message["citations"] = json.loads(row["citations"])
    if full:
        message.update(parent_id=row["parent_id"], position=row["position"], active=bool(row["active"]))
    return message


def _plain(row: dict) -> dict:
    """A stored message as a conversation message (ownllm.chatformat.conversation)."""
    message = {"role": row["role"], "content": row["content"]}
    if row.get("tool_call"):
        message["tool_call"] = json.loads(row["tool_call"])
    return message
