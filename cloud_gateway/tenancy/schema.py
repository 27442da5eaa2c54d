"""The tenant database's schema, its migrations and the connection settings they rely on.

Migrations are append-only: version ``n`` is ``MIGRATIONS[n - 1]``, applied once, inside
the same immediate transaction that records it in ``schema_version``, so two processes
opening a fresh file at once cannot both apply it. A file newer than this code is refused
rather than misread.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgeserve.wire.errors import InternalError, Unavailable

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE tenants (
            name TEXT PRIMARY KEY, allowed_models TEXT NOT NULL, rate_per_s REAL NOT NULL,
            burst REAL NOT NULL, max_in_flight INTEGER NOT NULL, weight REAL NOT NULL,
            priority_tier INTEGER NOT NULL, kind TEXT NOT NULL, created_at REAL NOT NULL)""",
        """CREATE TABLE api_keys (
            key_id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL REFERENCES tenants(name) ON DELETE CASCADE,
            key_hash TEXT NOT NULL, created_at REAL NOT NULL, revoked_at REAL)""",
        "CREATE INDEX api_keys_by_tenant ON api_keys(tenant)",
        """CREATE TABLE devices (
            device_id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL REFERENCES tenants(name) ON DELETE CASCADE,
            created_at REAL NOT NULL)""",
        "CREATE INDEX devices_by_tenant ON devices(tenant)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating) the file in WAL mode, shareable across threads behind a lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE) so writers queue on
    # busy_timeout instead of failing when they try to upgrade a read lock.
    with translated():
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA journal_mode = WAL")
            # A revocation must survive a power cut, and admin writes are rare.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
    return conn


@contextmanager
def translated() -> Iterator[None]:
    """SQLite's errors as ours: a busy or unreadable file is 503, anything else a bug."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise Unavailable(f"tenant database unavailable: {exc}") from exc
    except sqlite3.Error as exc:
        raise InternalError(f"tenant database error: {exc}") from exc


@contextmanager
def transaction(conn: sqlite3.Connection, lock: threading.Lock) -> Iterator[sqlite3.Connection]:
    """An immediate (write-locking) transaction, rolled back on any exception."""
    with lock, translated():
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def migrate(conn: sqlite3.Connection, lock: threading.Lock, path: Path) -> None:
    with transaction(conn, lock):
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version"
            " (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        current = current_version(conn)
        if current > SCHEMA_VERSION:
            raise InternalError(
                f"{path} has tenant schema version {current} but this edgeserve knows"
                f" versions up to {SCHEMA_VERSION}: upgrade edgeserve"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version - 1]:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (?, ?)", (version, time.time()))


def current_version(conn: sqlite3.Connection) -> int:
    version = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
    return int(version or 0)
