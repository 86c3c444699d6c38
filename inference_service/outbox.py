"""A small durable outbox for Commits the authority could not take.

If the authority stays down after a successful LLM call, the Commit is written
here (SQLite, synchronous=FULL: on disk before the client gets its answer) and
replayed until the authority gives its final answer for that reservation.
Commit is idempotent per reservation, so a replay after a Commit that did land
is harmless. A Commit the authority refuses for good (the reservation is
unknown, or was finalized otherwise) is never silently dropped: it moves to
`refused_commits`, kept for an operator, and counted in the metrics.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PendingCommit:
    reservation_id: str
    amount_mc: int
    metadata: dict[str, Any]
    attempts: int
    tokens: int | None = None  # the call's real token count, for the tokens-per-minute windows


class CommitOutbox:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            """CREATE TABLE IF NOT EXISTS pending_commits (
                   reservation_id TEXT PRIMARY KEY, amount_mc INTEGER NOT NULL, metadata TEXT NOT NULL,
                   attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL)""")
        self._db.execute(
            """CREATE TABLE IF NOT EXISTS refused_commits (
                   reservation_id TEXT PRIMARY KEY, amount_mc INTEGER NOT NULL, metadata TEXT NOT NULL,
                   status TEXT NOT NULL, message TEXT NOT NULL, refused_at REAL NOT NULL)""")
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(pending_commits)")}
        if "tokens" not in columns:  # an outbox written before Commits carried the token count
            self._db.execute("ALTER TABLE pending_commits ADD COLUMN tokens INTEGER")

    def add(self, reservation_id: str, amount_mc: int, metadata: dict[str, Any], tokens: int | None = None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO pending_commits (reservation_id, amount_mc, metadata, tokens, created_at) "
                "VALUES (?, ?, ?, ?, ?)", (reservation_id, amount_mc, json.dumps(metadata), tokens, time.time()))

    def pending(self, limit: int = 100) -> list[PendingCommit]:
        with self._lock:
            rows = self._db.execute(
                "SELECT reservation_id, amount_mc, metadata, attempts, tokens FROM pending_commits "
                "ORDER BY created_at LIMIT ?", (limit,)).fetchall()
        return [PendingCommit(r[0], r[1], json.loads(r[2]), r[3], r[4]) for r in rows]

    def done(self, reservation_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM pending_commits WHERE reservation_id = ?", (reservation_id,))

    def refused(self, reservation_id: str, amount_mc: int, metadata: dict[str, Any], status: str,
                message: str) -> None:
        """Keeps a Commit the authority refused for good (and takes it out of the pending ones)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO refused_commits (reservation_id, amount_mc, metadata, status, message, "
                "refused_at) VALUES (?, ?, ?, ?, ?, ?)",
                (reservation_id, amount_mc, json.dumps(metadata), status, message, time.time()))
            self._db.execute("DELETE FROM pending_commits WHERE reservation_id = ?", (reservation_id,))

    def refused_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM refused_commits").fetchone()[0]

    def replace_metadata(self, reservation_id: str, metadata: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("UPDATE pending_commits SET metadata = ? WHERE reservation_id = ?",
                             (json.dumps(metadata), reservation_id))

    def attempted(self, reservation_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE pending_commits SET attempts = attempts + 1 WHERE reservation_id = ?",
                             (reservation_id,))

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM pending_commits").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
