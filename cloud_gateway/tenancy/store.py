"""Tenants, their hashed API keys and their devices, in one SQLite file.

The file is in WAL mode, so one writer (the admin CLI) and many readers (gateway
processes on the same host) work at once; the schema is created and migrated on open
(see ``schema``). One connection is shared across threads behind a lock because the
gateway calls in from its event loop and from worker threads. Plaintext keys are
returned once by ``add_tenant`` and ``rotate_key`` and never written anywhere.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cloud_gateway.tenancy.keys import (
    ApiKey,
    LegacyGate,
    hash_key,
    is_legacy,
    verify_key_hash,
)
from cloud_gateway.tenancy.models import DEVICE_ID, Tenant, TenantKind
from cloud_gateway.tenancy.schema import (
    connect,
    current_version,
    migrate,
    transaction,
    translated,
)
from edgeserve.wire.errors import (
    EdgeServeError,
    ErrorCode,
    InvalidInput,
    Unauthenticated,
)

# The tenants table has one column per Tenant field, in the model's order; adding a field
# to Tenant therefore needs a migration that adds its column.
_TENANT_FIELDS = tuple(Tenant.model_fields)
_TENANT_COLUMNS = ", ".join(_TENANT_FIELDS)
UNKNOWN_KEY = "unknown API key"
REVOKED_KEY = "API key was revoked"


class TenantNotFound(EdgeServeError):
    code = ErrorCode.NOT_FOUND


class TenantExists(InvalidInput):
    pass


class SlowCheckNeeded(Exception):
    """The key's row predates the SHA-256 upgrade: checking it runs the slow legacy hash."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """An API key's public facts: never its secret, never its hash."""

    key_id: str
    tenant: str
    created_at: float
    revoked_at: float | None


class TenantStore:
    """The tenant database; ``legacy_gate`` paces checks of pre-SHA-256 key rows."""

    def __init__(self, path: Path, *, legacy_gate: LegacyGate | None = None) -> None:
        self.path = path
        self.legacy_gate = legacy_gate or LegacyGate()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[str], None]] = []
        self._key_columns = ", ".join(f"t.{field}" for field in _TENANT_FIELDS)
        self._conn = connect(path)
        try:
            migrate(self._conn, self._lock, path)
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> TenantStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def on_change(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(tenant)`` after a tenant's keys, limits or existence change."""
        self._listeners.append(listener)

    @property
    def schema_version(self) -> int:
        with self._lock, translated():
            return current_version(self._conn)

    # -- tenants -------------------------------------------------------------------------

    def add_tenant(
        self,
        name: str,
        allowed_models: Sequence[str],
        *,
        rate_per_s: float = 10.0,
        burst: float = 20.0,
        max_in_flight: int = 16,
        weight: float = 1.0,
        priority_tier: int = 1,
        kind: TenantKind = "app",
    ) -> tuple[Tenant, str]:
        """Create a tenant and its first API key; the plaintext key is returned only here."""
        tenant = _validated(
            name=name,
            allowed_models=list(allowed_models),
            rate_per_s=rate_per_s,
            burst=burst,
            max_in_flight=max_in_flight,
            weight=weight,
            priority_tier=priority_tier,
            kind=kind,
        )
        key = ApiKey.generate()
        key_hash = hash_key(key)
        with self._transaction() as conn:
            if _tenant_row(conn, name) is not None:
                raise TenantExists(f"tenant '{name}' already exists")
            conn.execute(
                f"INSERT INTO tenants ({_TENANT_COLUMNS}, created_at)"
                f" VALUES ({', '.join('?' * (len(_TENANT_FIELDS) + 1))})",
                (*_tenant_values(tenant), time.time()),
            )
            _insert_key(conn, key, name, key_hash)
        return tenant, key.plaintext

    def get_tenant(self, name: str) -> Tenant:
        rows = self._rows(f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE name = ?", name)
        if not rows:
            raise TenantNotFound(f"tenant '{name}' does not exist")
        return _tenant_from_row(rows[0])

    def list_tenants(self) -> list[Tenant]:
        rows = self._rows(f"SELECT {_TENANT_COLUMNS} FROM tenants ORDER BY name")
        return [_tenant_from_row(row) for row in rows]

    def update_tenant(self, name: str, /, **fields: Any) -> Tenant:
        """Change a tenant's allowance (any ``Tenant`` field but its name)."""
        if "name" in fields:
            raise InvalidInput("a tenant cannot be renamed; add a new one instead")
        with self._transaction() as conn:
            row = _tenant_row(conn, name)
            if row is None:
                raise TenantNotFound(f"tenant '{name}' does not exist")
            tenant = _validated(**{**_tenant_from_row(row).model_dump(), **fields})
            conn.execute(
                f"UPDATE tenants SET {', '.join(f'{f} = ?' for f in _TENANT_FIELDS[1:])}"
                " WHERE name = ?",
                (*_tenant_values(tenant)[1:], name),
            )
        self._notify(name)
        return tenant

    def remove_tenant(self, name: str) -> None:
        """Delete a tenant with its keys and devices (they become unknown at once)."""
        with self._transaction() as conn:
            if conn.execute("DELETE FROM tenants WHERE name = ?", (name,)).rowcount == 0:
                raise TenantNotFound(f"tenant '{name}' does not exist")
        self._notify(name)

    # -- API keys ------------------------------------------------------------------------

    def rotate_key(self, name: str) -> str:
        """Revoke every live key of the tenant and return a new one, in one transaction."""
        key = ApiKey.generate()
        key_hash = hash_key(key)
        with self._transaction() as conn:
            if _tenant_row(conn, name) is None:
                raise TenantNotFound(f"tenant '{name}' does not exist")
            conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE tenant = ? AND revoked_at IS NULL",
                (time.time(), name),
            )
            _insert_key(conn, key, name, key_hash)
        self._notify(name)
        return key.plaintext

    def list_keys(self, name: str) -> list[KeyInfo]:
        rows = self._rows(
            "SELECT key_id, tenant, created_at, revoked_at FROM api_keys"
            " WHERE tenant = ? ORDER BY created_at, rowid",
            name,
        )
        return [KeyInfo(*row) for row in rows]

    def verify_key(self, plaintext: str, *, slow_ok: bool = True) -> Tenant:
        """The key's tenant, or ``Unauthenticated`` saying malformed, unknown or revoked.

        A wrong secret reads as an unknown key, and no message names a tenant. Revocation
        is reported only to a caller who holds the real (old) key. A row from before the
        SHA-256 upgrade is checked through the legacy gate (slow, paced) and, when the
        key matches, re-hashed so that the next check is fast; with ``slow_ok=False``
        such a row raises ``SlowCheckNeeded`` instead, for a caller on an event loop to
        retry in a thread.
        """
        key = ApiKey.parse(plaintext)
        rows = self._rows(
            f"SELECT k.key_hash, k.revoked_at, {self._key_columns} FROM api_keys k"
            " JOIN tenants t ON t.name = k.tenant WHERE k.key_id = ?",
            key.key_id,
        )
        if not rows:
            raise Unauthenticated(UNKNOWN_KEY)
        stored, revoked_at = rows[0][0], rows[0][1]
        if is_legacy(stored):
            if not slow_ok:
                raise SlowCheckNeeded(key.key_id)
            if not self.legacy_gate.check(key, stored):
                raise Unauthenticated(UNKNOWN_KEY)
            self._upgrade_hash(key, stored)
        elif not verify_key_hash(key, stored):
            raise Unauthenticated(UNKNOWN_KEY)
        if revoked_at is not None:
            raise Unauthenticated(REVOKED_KEY)
        return _tenant_from_row(rows[0][2:])

    def _upgrade_hash(self, key: ApiKey, legacy: str) -> None:
        with self._transaction() as conn:
            conn.execute(
                "UPDATE api_keys SET key_hash = ? WHERE key_id = ? AND key_hash = ?",
                (hash_key(key), key.key_id, legacy),
            )

    # -- devices (mTLS identities) -------------------------------------------------------

    def register_device(self, device_id: str, tenant: str) -> None:
        """Map a client certificate's common name to a tenant (idempotent)."""
        if not DEVICE_ID.fullmatch(device_id):
            raise InvalidInput(f"device id {device_id!r} must match {DEVICE_ID.pattern}")
        with self._transaction() as conn:
            if _tenant_row(conn, tenant) is None:
                raise TenantNotFound(f"tenant '{tenant}' does not exist")
            owner = conn.execute(
                "SELECT tenant FROM devices WHERE device_id = ?", (device_id,)
            ).fetchone()
            if owner is not None and owner[0] != tenant:
                raise InvalidInput(f"device '{device_id}' belongs to tenant '{owner[0]}'")
            conn.execute(
                "INSERT OR IGNORE INTO devices (device_id, tenant, created_at) VALUES (?,?,?)",
                (device_id, tenant, time.time()),
            )

    def unregister_device(self, device_id: str) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM devices WHERE device_id = ?", (device_id,))

    def list_devices(self, tenant: str) -> list[str]:
        rows = self._rows("SELECT device_id FROM devices WHERE tenant = ? ORDER BY 1", tenant)
        return [row[0] for row in rows]

    def tenant_for_device(self, device_id: str) -> Tenant | None:
        rows = self._rows(
            f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE name ="
            " (SELECT tenant FROM devices WHERE device_id = ?)",
            device_id,
        )
        return _tenant_from_row(rows[0]) if rows else None

    # -- plumbing ------------------------------------------------------------------------

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._conn, self._lock)

    def _rows(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        with self._lock, translated():
            rows: list[tuple[Any, ...]] = self._conn.execute(sql, params).fetchall()
        return rows

    def _notify(self, tenant: str) -> None:
        for listener in self._listeners:
            listener(tenant)


def _validated(**fields: Any) -> Tenant:
    try:
        return Tenant(**fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or 'tenant'}: {error['msg']}"
            for error in exc.errors()
        )
        raise InvalidInput(f"invalid tenant: {problems}") from exc


def _tenant_row(conn: sqlite3.Connection, name: str) -> tuple[Any, ...] | None:
    row: tuple[Any, ...] | None = conn.execute(
        f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE name = ?", (name,)
    ).fetchone()
    return row


def _tenant_values(tenant: Tenant) -> tuple[Any, ...]:
    fields = tenant.model_dump()
    fields["allowed_models"] = json.dumps(tenant.allowed_models)
    return tuple(fields[name] for name in _TENANT_FIELDS)


def _tenant_from_row(row: Sequence[Any]) -> Tenant:
    fields = dict(zip(_TENANT_FIELDS, row, strict=True))
    fields["allowed_models"] = json.loads(fields["allowed_models"])
    return Tenant(**fields)


def _insert_key(conn: sqlite3.Connection, key: ApiKey, tenant: str, key_hash: str) -> None:
    conn.execute(
        "INSERT INTO api_keys (key_id, tenant, key_hash, created_at) VALUES (?,?,?,?)",
        (key.key_id, tenant, key_hash, time.time()),
    )
