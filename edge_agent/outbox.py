"""The agent's on-disk outbox: records waiting to go home, within a disk budget.

One SQLite file (WAL, synchronous=FULL) survives ``kill -9`` and reboots. Rows are
appended by kind (``request``, ``escalation``, ``hard_example``), numbered by a sequence
that never repeats, and deleted only when the fleet side has acknowledged them. Past the
byte budget the oldest rows go first and a persistent counter says how many were
dropped, so loss is bounded and visible, never silent. A persisted watermark
(``acked_seq``) says that every row at or below it is gone — acknowledged or dropped —
which is what a telemetry batch sends as its ``from_seq``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
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
WATERMARK = "acked_seq"
DROPPED_PREFIX = "dropped:"


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

    # -- writing -----------------------------------------------------------------------

    def append(self, kind: str, payload: bytes) -> int:
        """Store one record; the oldest go first if the budget would be exceeded."""
        return self.append_rows([(kind, payload)])[0]

    def append_many(self, kind: str, payloads: Iterable[bytes]) -> list[int]:
        """Store several records of one kind in one transaction (one fsync)."""
        return self.append_rows([(kind, payload) for payload in payloads])

    def append_rows(self, rows: Iterable[tuple[str, bytes]]) -> list[int]:
        """Store ``(kind, payload)`` rows in order, in one transaction; their seqs."""
        now = time.time()
        seqs: list[int] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for kind, payload in rows:
                    cursor = self._db.execute(
                        "INSERT INTO records (kind, created, payload) VALUES (?, ?, ?)",
                        (kind, now, payload),
                    )
                    assert cursor.lastrowid is not None
                    seqs.append(cursor.lastrowid)
                    self._bytes += len(payload)
                self._enforce_budget()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._bytes = self._stored_bytes()
                raise
        return seqs

    # -- reading -----------------------------------------------------------------------

    def pending(
        self, kind: str | None = None, limit: int = 1000, after_seq: int = 0
    ) -> list[OutboxRecord]:
        """The oldest rows (of ``kind`` if given) with a seq above ``after_seq``."""
        query = "SELECT seq, kind, created, payload FROM records WHERE seq > ?"
        args: tuple[object, ...] = (after_seq,)
        if kind is not None:
            query += " AND kind = ?"
            args = (after_seq, kind)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq LIMIT ?", (*args, limit)).fetchall()
        return [OutboxRecord(*row) for row in rows]

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
            return self._counter(f"{DROPPED_PREFIX}{kind}")

    def dropped_total(self) -> int:
        """Records of every kind dropped under the budget, all time."""
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(value), 0) FROM counters WHERE name LIKE ?",
                (f"{DROPPED_PREFIX}%",),
            ).fetchone()
        return int(row[0])

    @property
    def acked_seq(self) -> int:
        """Every row with a seq at or below this was acknowledged or dropped."""
        with self._lock:
            return self._counter(WATERMARK)

    # -- acknowledging -----------------------------------------------------------------

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

    def acknowledge_through(self, seq: int) -> int:
        """Delete every row (any kind) up to ``seq`` and raise the watermark; how many went."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                freed = self._db.execute(
                    "SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM records WHERE seq <= ?", (seq,)
                ).fetchone()[0]
                cursor = self._db.execute("DELETE FROM records WHERE seq <= ?", (seq,))
                self._raise_watermark(seq)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._bytes -= freed
            return int(cursor.rowcount)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- internals (caller holds the lock) -----------------------------------------------

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _stored_bytes(self) -> int:
        row = self._db.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM records").fetchone()
        return int(row[0])

    def _raise_watermark(self, seq: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = MAX(value, excluded.value)",
            (WATERMARK, seq),
        )

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
                (f"{DROPPED_PREFIX}{kind}",),
            )
            # The oldest row is gone, so is everything below it: the fleet may skip past.
            self._raise_watermark(seq)
            self._bytes -= size
