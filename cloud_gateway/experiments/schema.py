"""The experiments database's schema and connection settings.

Migrations are append-only (version ``n`` is ``MIGRATIONS[n - 1]``), applied inside one
immediate transaction, as for the tenants database. Counts are statistics: the file
runs with ``synchronous = NORMAL`` (WAL), so a power cut may lose the last flush but
never tears the file.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import AbstractContextManager
from pathlib import Path

from cloud_gateway import sqlite_files

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
DATABASE = "experiments"


def connect(path: Path) -> sqlite3.Connection:
    # NORMAL: counts are statistics; a power cut may lose the last flush, not the file.
    return sqlite_files.connect(path, DATABASE, synchronous="NORMAL")


def translated() -> AbstractContextManager[None]:
    return sqlite_files.translated(DATABASE)


def transaction(
    conn: sqlite3.Connection, lock: threading.Lock
) -> AbstractContextManager[sqlite3.Connection]:
    return sqlite_files.transaction(conn, lock, DATABASE)


def migrate(conn: sqlite3.Connection, lock: threading.Lock, path: Path) -> None:
    sqlite_files.migrate(conn, lock, path, MIGRATIONS, DATABASE)


current_version = sqlite_files.current_version
