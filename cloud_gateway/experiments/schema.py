"""The experiments database's schema and connection settings.

Migrations are append-only (version ``n`` is ``MIGRATIONS[n - 1]``), applied inside one
immediate transaction, as for the tenants database. Counts are statistics: the file
runs with ``synchronous = NORMAL`` (WAL), so a power cut may lose the last flush but
never tears the file.
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
        """CREATE TABLE experiments (
            name TEXT PRIMARY KEY, model TEXT NOT NULL, key_header TEXT, key_parameter TEXT,
            settings TEXT NOT NULL, status TEXT NOT NULL, reason TEXT,
            created_at REAL NOT NULL, stopped_at REAL)""",
        # One running experiment per model: it owns the model's unversioned name.
        "CREATE UNIQUE INDEX one_running_per_model ON experiments(model) WHERE status = 'running'",
        """CREATE TABLE arms (
            experiment TEXT NOT NULL REFERENCES experiments(name) ON DELETE CASCADE,
            version TEXT NOT NULL, role TEXT NOT NULL, weight REAL NOT NULL,
            position INTEGER NOT NULL, stopped TEXT, PRIMARY KEY (experiment, version))""",
        """CREATE TABLE counts (
            experiment TEXT NOT NULL REFERENCES experiments(name) ON DELETE CASCADE,
            version TEXT NOT NULL, requests INTEGER NOT NULL, errors INTEGER NOT NULL,
            compared INTEGER NOT NULL, agreed INTEGER NOT NULL, dropped INTEGER NOT NULL,
            labelled INTEGER NOT NULL, correct INTEGER NOT NULL, latency TEXT NOT NULL,
            PRIMARY KEY (experiment, version))""",
        """CREATE TABLE predictions (
            request_id TEXT NOT NULL, experiment TEXT NOT NULL, version TEXT NOT NULL,
            labels TEXT NOT NULL, at REAL NOT NULL,
            PRIMARY KEY (request_id, experiment, version))""",
        "CREATE INDEX predictions_by_age ON predictions(at)",
        """CREATE TABLE labels (
            request_id TEXT NOT NULL, experiment TEXT NOT NULL, labels TEXT NOT NULL,
            at REAL NOT NULL, PRIMARY KEY (request_id, experiment))""",
        "CREATE INDEX labels_by_age ON labels(at)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    with translated():
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
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
        raise Unavailable(f"experiments database unavailable: {exc}") from exc
    except sqlite3.Error as exc:
        raise InternalError(f"experiments database error: {exc}") from exc


@contextmanager
def transaction(conn: sqlite3.Connection, lock: threading.Lock) -> Iterator[sqlite3.Connection]:
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
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        current = int(row[0] or 0)
        if current > SCHEMA_VERSION:
            raise InternalError(
                f"{path} has experiments schema version {current} but this edgeserve knows"
                f" versions up to {SCHEMA_VERSION}: upgrade edgeserve"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version - 1]:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (?, ?)", (version, time.time()))
