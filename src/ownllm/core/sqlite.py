"""SQLite helpers shared by the stores (server/store.py, knowledge/base.py)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


def use_wal(db: sqlite3.Connection, seconds: float = 10.0) -> None:
    """Switch to the WAL journal. While another connection opens the same new file this can answer
    "database is locked" at once (SQLite's busy timeout does not cover it; seen 7 times in 150 with
    four threads opening one new file): try again for up to `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@contextmanager
def immediate_transaction(db: sqlite3.Connection, lock: threading.RLock) -> Iterator[sqlite3.Connection]:
    """One transaction holding SQLite's write lock from the start (no upgrade deadlocks), committed at the
    end or rolled back on any exception (KeyboardInterrupt included); `lock` serialises the process's threads."""
    with lock:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
