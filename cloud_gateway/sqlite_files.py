"""The gateway's SQLite files (tenants, experiments): one way to open, lock and migrate them.

Each file is opened in autocommit mode with WAL and a busy timeout, shared across threads
behind a lock; writes run in ``BEGIN IMMEDIATE`` transactions so writers queue on the
busy timeout instead of failing when they upgrade a read lock. Migrations are
append-only — version ``n`` is ``migrations[n - 1]``, applied once inside the
transaction that records it in ``schema_version`` — and a file newer than the code is
refused rather than misread. SQLite's errors become ours: a busy or unreadable file is
503, anything else a bug.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from edgeserve.wire.errors import InternalError, Unavailable

Migrations = Sequence[Sequence[str]]


def connect(path: Path, what: str, synchronous: Literal["NORMAL", "FULL"]) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    with translated(what):
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
    return conn


@contextmanager
def translated(what: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise Unavailable(f"{what} database unavailable: {exc}") from exc
    except sqlite3.Error as exc:
        raise InternalError(f"{what} database error: {exc}") from exc


@contextmanager
def transaction(
    conn: sqlite3.Connection, lock: threading.Lock, what: str
) -> Iterator[sqlite3.Connection]:
    """An immediate (write-locking) transaction, rolled back on any exception."""
    with lock, translated(what):
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def migrate(
    conn: sqlite3.Connection,
    lock: threading.Lock,
    path: Path,
    migrations: Migrations,
    what: str,
) -> None:
    with transaction(conn, lock, what):
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version"
            " (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        current = current_version(conn)
        if current > len(migrations):
            raise InternalError(
                f"{path} has {what} schema version {current} but this edgeserve knows"
                f" versions up to {len(migrations)}: upgrade edgeserve"
            )
        for version in range(current + 1, len(migrations) + 1):
            for statement in migrations[version - 1]:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (?, ?)", (version, time.time()))


def current_version(conn: sqlite3.Connection) -> int:
    version = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
    return int(version or 0)
