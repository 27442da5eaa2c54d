"""The tenant database's schema, its migrations and the connection settings they rely on.

Migrations are append-only: version ``n`` is ``MIGRATIONS[n - 1]``, applied once, inside
the same immediate transaction that records it in ``schema_version``, so two processes
opening a fresh file at once cannot both apply it. A file newer than this code is refused
rather than misread.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import AbstractContextManager
from pathlib import Path

from cloud_gateway import sqlite_files

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
DATABASE = "tenant"


def connect(path: Path) -> sqlite3.Connection:
    # FULL: a revocation must survive a power cut, and admin writes are rare.
    return sqlite_files.connect(path, DATABASE, synchronous="FULL")


def translated() -> AbstractContextManager[None]:
    return sqlite_files.translated(DATABASE)


def transaction(
    conn: sqlite3.Connection, lock: threading.Lock
) -> AbstractContextManager[sqlite3.Connection]:
    return sqlite_files.transaction(conn, lock, DATABASE)


def migrate(conn: sqlite3.Connection, lock: threading.Lock, path: Path) -> None:
    sqlite_files.migrate(conn, lock, path, MIGRATIONS, DATABASE)


current_version = sqlite_files.current_version
