"""The agent's on-disk outbox: records waiting to go home, within a disk budget.

One SQLite file (WAL, synchronous=FULL) survives ``kill -9`` and reboots. Rows are
appended by kind (``hard_example`` today; telemetry joins later) and deleted only when
the fleet side has acknowledged them. Past the byte budget the oldest rows go first and
a persistent counter says how many were dropped, so loss is bounded and visible, never
silent.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    created REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    seq: int
    kind: str
    created: float
    payload: bytes


class Outbox:
    def __init__(self, path: Path, max_bytes: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._bytes: int = int(
            self._db.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM records").fetchone()[0]
        )

    def append(self, kind: str, payload: bytes) -> int:
        """Store one record; the oldest go first if the budget would be exceeded."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._db.execute(
                    "INSERT INTO records (kind, created, payload) VALUES (?, ?, ?)",
                    (kind, time.time(), payload),
                ).lastrowid
                self._bytes += len(payload)
                self._enforce_budget()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        assert seq is not None
        return seq

    def pending(self, kind: str | None = None, limit: int = 1000) -> list[OutboxRecord]:
        query = "SELECT seq, kind, created, payload FROM records"
        args: tuple[object, ...] = ()
        if kind is not None:
            query += " WHERE kind = ?"
            args = (kind,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq LIMIT ?", (*args, limit)).fetchall()
        return [OutboxRecord(*row) for row in rows]

    def acknowledge(self, kind: str, up_to_seq: int) -> int:
        """Delete acknowledged rows of ``kind`` up to ``up_to_seq``; how many went."""
        with self._lock:
            freed = self._db.execute(
                "SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM records WHERE kind = ? AND seq <= ?",
                (kind, up_to_seq),
            ).fetchone()[0]
            cursor = self._db.execute(
                "DELETE FROM records WHERE kind = ? AND seq <= ?", (kind, up_to_seq)
            )
            self._bytes -= freed
            return int(cursor.rowcount)

    def count(self, kind: str | None = None) -> int:
        query, args = "SELECT COUNT(*) FROM records", ""
        if kind is not None:
            query, args = query + " WHERE kind = ?", kind
        with self._lock:
            return int(self._db.execute(query, (args,) if args else ()).fetchone()[0])

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def dropped(self, kind: str) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM counters WHERE name = ?", (f"dropped:{kind}",)
            ).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _enforce_budget(self) -> None:
        while self._bytes > self.max_bytes:
            oldest = self._db.execute(
                "SELECT seq, kind, LENGTH(payload) FROM records ORDER BY seq LIMIT 1"
            ).fetchone()
            if oldest is None:
                return
            seq, kind, size = oldest
            self._db.execute("DELETE FROM records WHERE seq = ?", (seq,))
            self._db.execute(
                "INSERT INTO counters (name, value) VALUES (?, 1) "
                "ON CONFLICT(name) DO UPDATE SET value = value + 1",
                (f"dropped:{kind}",),
            )
            self._bytes -= size
