"""Where the sync service keeps each device's certificates: its own SQLite file.

``certs.db`` beside the registry, not a registry table, so the certificate lifecycle
changes nothing in the registry's schema. One row per certificate the fleet has seen
(reported by the device, or issued here), one pending request per device at most, and
the devices revoked. Used only from the core thread, like the registry.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edgeserve.security.revocation import CertFacts

_SCHEMA = """
CREATE TABLE IF NOT EXISTS certificates (
    device_id TEXT NOT NULL,
    serial TEXT NOT NULL,
    not_after REAL NOT NULL,
    issued_here INTEGER NOT NULL DEFAULT 0,
    pem TEXT NOT NULL DEFAULT '',
    seen_at REAL NOT NULL,
    PRIMARY KEY (device_id, serial)
);
CREATE TABLE IF NOT EXISTS current (
    device_id TEXT PRIMARY KEY,
    serial TEXT NOT NULL,
    not_after REAL NOT NULL,
    reported_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    device_id TEXT PRIMARY KEY,
    csr TEXT NOT NULL,
    requested_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS revoked (
    device_id TEXT PRIMARY KEY,
    revoked_at REAL NOT NULL,
    reason TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class CertStatus:
    """One device's certificate standing, as ``fleet certs`` and ``fleet devices`` show it."""

    device_id: str
    serial: str
    not_after: float
    pending_since: float | None
    revoked_at: float | None

    def as_dict(self) -> dict[str, object]:
        return {
            "device_id": self.device_id,
            "serial": self.serial,
            "not_after": self.not_after,
            "pending_since": self.pending_since,
            "revoked_at": self.revoked_at,
        }


class CertStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        self._conn.close()

    def record(self, device_id: str, facts: CertFacts, pem: str = "", issued: bool = False) -> None:
        """Remember a certificate of ``device_id`` (reported, or issued here)."""
        self._conn.execute(
            "INSERT INTO certificates VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE "
            "SET issued_here = max(issued_here, excluded.issued_here), "
            "pem = CASE WHEN excluded.pem != '' THEN excluded.pem ELSE pem END",
            (device_id, facts.serial_hex, facts.not_after.timestamp(), int(issued), pem, _now()),
        )

    def set_current(self, device_id: str, facts: CertFacts) -> None:
        """The certificate the device connects with now (what expiry is measured on)."""
        self.record(device_id, facts)
        self._conn.execute(
            "INSERT OR REPLACE INTO current VALUES (?, ?, ?, ?)",
            (device_id, facts.serial_hex, facts.not_after.timestamp(), _now()),
        )

    def serials(self, device_id: str) -> list[int]:
        rows = self._conn.execute(
            "SELECT serial FROM certificates WHERE device_id = ?", (device_id,)
        ).fetchall()
        return [int(row[0], 16) for row in rows]

    def latest_issued(self, device_id: str) -> tuple[str, float] | None:
        """The newest certificate issued here for ``device_id``: (PEM, not_after)."""
        row = self._conn.execute(
            "SELECT pem, not_after FROM certificates WHERE device_id = ? AND issued_here = 1 "
            "ORDER BY not_after DESC LIMIT 1",
            (device_id,),
        ).fetchone()
        return None if row is None else (str(row[0]), float(row[1]))

    def set_pending(self, device_id: str, csr: str) -> None:
        self._conn.execute(
            "INSERT INTO requests VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET csr = excluded.csr",
            (device_id, csr, _now()),
        )

    def pending(self, device_id: str) -> str | None:
        row = self._conn.execute(
            "SELECT csr FROM requests WHERE device_id = ?", (device_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    def clear_pending(self, device_id: str) -> None:
        self._conn.execute("DELETE FROM requests WHERE device_id = ?", (device_id,))

    def mark_revoked(self, device_id: str, reason: str) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO revoked VALUES (?, ?, ?)", (device_id, _now(), reason)
        )
        self.clear_pending(device_id)

    def is_revoked(self, device_id: str) -> bool:
        query = "SELECT 1 FROM revoked WHERE device_id = ?"
        return self._conn.execute(query, (device_id,)).fetchone() is not None

    def statuses(self, devices: Iterable[str] | None = None) -> list[CertStatus]:
        """Every device the store knows (or just ``devices``), by device id."""
        rows = self._conn.execute(
            "SELECT d.device_id, c.serial, c.not_after, r.requested_at, v.revoked_at FROM "
            "(SELECT device_id FROM current UNION SELECT device_id FROM requests "
            " UNION SELECT device_id FROM revoked) AS d "
            "LEFT JOIN current AS c USING (device_id) "
            "LEFT JOIN requests AS r USING (device_id) "
            "LEFT JOIN revoked AS v USING (device_id) ORDER BY d.device_id"
        ).fetchall()
        wanted = None if devices is None else set(devices)
        return [
            CertStatus(str(row[0]), row[1] or "", float(row[2] or 0.0), row[3], row[4])
            for row in rows
            if wanted is None or row[0] in wanted
        ]

    def expiries(self) -> list[float]:
        """``not_after`` of each device's current certificate, revoked devices left out."""
        rows = self._conn.execute(
            "SELECT not_after FROM current WHERE device_id NOT IN (SELECT device_id FROM revoked)"
        ).fetchall()
        return [float(row[0]) for row in rows]


def _now() -> float:
    return time.time()
