"""The fleet's memory: models, versions, devices, desired states, rollouts and telemetry.

One SQLite file (WAL) behind ``sqlite-utils``, so a restarted sync service knows every
device's last report, republishes every desired state, resumes running rollouts and keeps
the telemetry cursors it acknowledged. The connection belongs to the thread that opened
it: open one ``Registry`` per thread or event loop. Everything handed out is a frozen row
from ``views``; JSON columns are parsed in ``schema`` and nowhere else. Rollout and telemetry
*logic* lives in ``rollout`` and ``ingest``; this module only stores and loads.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from sqlite_utils import Database
from sqlite_utils.db import Table

from edgeserve.wire.manifest import version_key
from edgeserve.wire.model_card import ModelCard
from edgeserve.wire.sync_messages import MAX_REVISION, DesiredState, DeviceStatus, ReportedState
from sync.schema import INDEXES, TABLES, device_row, rollout_row, version_row
from sync.views import (
    CohortCounts,
    DeviceRolloutState,
    DeviceRow,
    IssueRow,
    RolloutDeviceRow,
    RolloutRow,
    RolloutState,
    VersionRow,
)


class Registry:
    """The registry database; ``clock`` stamps rows (injectable for tests)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.clock = clock
        self.db = Database(path)
        self.db.conn.execute("PRAGMA journal_mode=WAL")
        # FULL: an acknowledged telemetry batch must survive a power cut, since the
        # device deletes it on our ack.
        self.db.execute("PRAGMA synchronous=FULL")
        for name, (columns, pk, defaults) in TABLES.items():
            self._table(name).create(
                columns,
                pk=pk[0] if len(pk) == 1 else pk,
                defaults=defaults or None,
                not_null=set(pk),
                if_not_exists=True,
            )
            self._add_missing_columns(name, columns, defaults)
        for name, indexes in INDEXES.items():
            for indexed in indexes:
                self._table(name).create_index(indexed, if_not_exists=True)

    @property
    def conn(self) -> sqlite3.Connection:
        return cast(sqlite3.Connection, self.db.conn)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; ``BEGIN IMMEDIATE`` so reads inside it are consistent."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- models & versions ------------------------------------------------------------
    def add_version(self, card: ModelCard, artifact_sha256: str) -> None:
        """Register a version; adding the same one again keeps the first row."""
        version_key(card.version)  # refuses (InvalidInput) a version that cannot be ordered
        self._table("versions").insert(
            {
                "model": card.name,
                "version": card.version,
                "sha256": artifact_sha256,
                "size": card.size_bytes,
                "format": card.format,
                "card": card.model_dump_json(exclude_none=True),
                "created": self.clock(),
            },
            ignore=True,
        )

    def version(self, model: str, version: str) -> VersionRow | None:
        rows = self._where("versions", "model = ? AND version = ?", [model, version])
        return version_row(rows[0]) if rows else None

    def versions(self, model: str | None = None) -> list[VersionRow]:
        if model is None:
            rows = self._where("versions", None, [])
        else:
            rows = self._where("versions", "model = ?", [model])
        found = [version_row(row) for row in rows]
        return sorted(found, key=lambda row: (row.model, version_key(row.version)))

    # -- devices ----------------------------------------------------------------------
    def record_status(self, status: DeviceStatus) -> None:
        record: dict[str, Any] = {"device_id": status.device_id, "online": int(status.online)}
        if status.agent_version:
            record["agent_version"] = status.agent_version
        self._upsert_device(record, status.ts)

    def record_reported(self, reported: ReportedState) -> None:
        running = {name: model.model_dump() for name, model in reported.models.items()}
        self._upsert_device(
            {
                "device_id": reported.device_id,
                "device_group": reported.group,
                "labels": json.dumps(reported.labels, sort_keys=True),
                "agent_version": reported.agent_version,
                "running": json.dumps(running, sort_keys=True),
                "desired_revision": reported.desired_revision,
            },
            reported.ts,
        )

    def device(self, device_id: str) -> DeviceRow | None:
        rows = self._where("devices", "device_id = ?", [device_id])
        return device_row(rows[0]) if rows else None

    def devices(self, group: str | None = None) -> list[DeviceRow]:
        if group is None:
            rows = self._where("devices", None, [], order="device_id")
        else:
            rows = self._where("devices", "device_group = ?", [group], order="device_id")
        return [device_row(row) for row in rows]

    def count_online(self) -> int:
        row = self.conn.execute("SELECT count(*) FROM devices WHERE online = 1").fetchone()
        return int(row[0])

    # -- desired state ----------------------------------------------------------------
    def next_desired_revision(self, device_id: str) -> int:
        """Past our last revision for the device, and no smaller than the clock in ms.

        The sequence is ours alone: what a device reports is never an input, so no device
        can push it out of range. The clock floor keeps revisions growing even when this
        database is restored from an older backup, without asking the devices.
        """
        saved = self.desired(device_id)
        ours = saved.revision if saved is not None else 0
        return min(max(ours + 1, int(self.clock() * 1000)), MAX_REVISION)

    def save_desired(self, state: DesiredState) -> None:
        self._table("desired").upsert(
            {
                "device_id": state.device_id,
                "revision": state.revision,
                "state": state.model_dump_json(by_alias=True),
            },
            pk="device_id",
        )

    def desired(self, device_id: str) -> DesiredState | None:
        rows = self._where("desired", "device_id = ?", [device_id])
        return DesiredState.model_validate_json(rows[0]["state"]) if rows else None

    def all_desired(self) -> list[DesiredState]:
        rows = self._where("desired", None, [], order="device_id")
        return [DesiredState.model_validate_json(row["state"]) for row in rows]

    # -- issued payloads --------------------------------------------------------------
    def record_issue(
        self,
        device_id: str,
        model: str,
        version: str,
        update_id: str,
        payload_sha256: str,
        chunk_count: int,
    ) -> None:
        self._table("issues").upsert(
            {
                "device_id": device_id,
                "update_id": update_id,
                "model": model,
                "version": version,
                "payload_sha256": payload_sha256,
                "chunk_count": chunk_count,
                "created": self.clock(),
            },
            pk=("device_id", "update_id"),
        )

    def issue(self, device_id: str, update_id: str) -> IssueRow | None:
        rows = self._where("issues", "device_id = ? AND update_id = ?", [device_id, update_id])
        return IssueRow(**rows[0]) if rows else None

    # -- rollouts (the controller's storage; see rollout.py for the logic) --------------
    def create_rollout(
        self,
        model: str,
        version: str,
        group: str | None,
        spec: dict[str, Any],
        devices: Iterable[tuple[str, int, str | None, DeviceRolloutState]],
        now: float | None = None,
    ) -> int:
        """Store a rollout and its planned devices ``(device_id, stage, from_version, state)``.

        ``now`` (here and below) lets the rollout controller stamp rows with its own clock.
        """
        now = self.clock() if now is None else now
        with self.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO rollouts (model, version, target_group, spec, state, stage,"
                " stage_started, created, updated, reason) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (model, version, group, json.dumps(spec), "running", 0, now, now, now, ""),
            )
            rollout_id = cast(int, cursor.lastrowid)
            conn.executemany(
                "INSERT INTO rollout_devices (rollout_id, device_id, stage, from_version,"
                " state, reason, updated) VALUES (?,?,?,?,?,?,?)",
                [(rollout_id, d, stage, old, state, "", now) for d, stage, old, state in devices],
            )
        return rollout_id

    def rollout(self, rollout_id: int) -> RolloutRow | None:
        rows = self._where("rollouts", "id = ?", [rollout_id])
        return rollout_row(rows[0]) if rows else None

    def rollouts(self, state: RolloutState | None = None) -> list[RolloutRow]:
        if state is None:
            rows = self._where("rollouts", None, [], order="id")
        else:
            rows = self._where("rollouts", "state = ?", [state], order="id")
        return [rollout_row(row) for row in rows]

    def update_rollout(
        self,
        rollout_id: int,
        *,
        state: RolloutState | None = None,
        stage: int | None = None,
        reason: str | None = None,
        gate: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> None:
        """Change a rollout; a new ``stage`` restarts its soak timer; ``gate`` is the
        sequential gate's latest look."""
        now = self.clock() if now is None else now
        changes: dict[str, Any] = {"updated": now}
        if state is not None:
            changes["state"] = state
        if stage is not None:
            changes.update(stage=stage, stage_started=now)
        if reason is not None:
            changes["reason"] = reason
        if gate is not None:
            changes["gate"] = json.dumps(gate)
        self._table("rollouts").update(rollout_id, changes)

    def rollout_devices(self, rollout_id: int) -> list[RolloutDeviceRow]:
        rows = self._where("rollout_devices", "rollout_id = ?", [rollout_id], order="device_id")
        return [RolloutDeviceRow(**row) for row in rows]

    def set_rollout_device(
        self,
        rollout_id: int,
        device_id: str,
        state: DeviceRolloutState,
        reason: str = "",
        from_version: str | None = None,
        now: float | None = None,
    ) -> None:
        """Move one device of a rollout; ``from_version`` is refreshed when given."""
        now = self.clock() if now is None else now
        changes: dict[str, Any] = {"state": state, "reason": reason, "updated": now}
        if from_version is not None:
            changes["from_version"] = from_version
        self._table("rollout_devices").update((rollout_id, device_id), changes)

    # -- telemetry reads (ingest.py writes) -------------------------------------------
    def telemetry_cursor(self, device_id: str) -> tuple[int, int]:
        """``(acked_seq, dropped)`` of one device; ``(0, 0)`` before its first batch."""
        row = self.conn.execute(
            "SELECT acked_seq, dropped FROM telemetry_cursor WHERE device_id = ?", (device_id,)
        ).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def request_errors(self, model: str, version: str) -> dict[str, tuple[int, int]]:
        """Per device: ``(requests, failed requests)`` recorded for one model version."""
        rows = self.conn.execute(
            "SELECT device_id, COUNT(*), SUM(error IS NOT NULL) FROM telemetry_requests"
            " WHERE model = ? AND version = ? GROUP BY device_id",
            (model, version),
        ).fetchall()
        return {device: (int(total), int(errors)) for device, total, errors in rows}

    def cohort_counts(
        self, model: str, version: str, devices: Iterable[str], since: float, threshold: float
    ) -> CohortCounts:
        """What ``devices`` recorded on ``model@version`` since ``since`` (device clock),
        with router scores counted below ``threshold`` (see ``sync.gate``)."""
        chosen = sorted(devices)
        if not chosen:
            return CohortCounts()
        marks = ",".join("?" * len(chosen))
        row = self.conn.execute(
            "SELECT COUNT(*), TOTAL(error IS NOT NULL), TOTAL(confidence IS NOT NULL),"
            " TOTAL(confidence < ?), TOTAL(agreement IS NOT NULL), TOTAL(agreement)"
            " FROM telemetry_requests WHERE model = ? AND version = ? AND ts >= ?"
            f" AND device_id IN ({marks})",
            (threshold, model, version, since, *chosen),
        ).fetchone()
        requests, errors, scored, below, measured, agreed = row
        return CohortCounts(
            int(requests), int(errors), int(scored), int(below), int(measured), float(agreed)
        )

    # -- helpers ------------------------------------------------------------------------
    def _add_missing_columns(
        self, name: str, columns: dict[str, Any], defaults: dict[str, Any]
    ) -> None:
        """Columns a newer schema added to a table an older service created."""
        table = self._table(name)
        existing = set(table.columns_dict)
        for column, kind in columns.items():
            if column not in existing:
                table.add_column(column, kind, not_null_default=defaults.get(column))

    def _table(self, name: str) -> Table:
        return cast(Table, self.db[name])

    def _where(
        self, table: str, where: str | None, args: list[Any], order: str | None = None
    ) -> list[dict[str, Any]]:
        return list(self._table(table).rows_where(where, args, order_by=order))

    def _upsert_device(self, record: dict[str, Any], ts: float) -> None:
        seen = ts if ts > 0 else self.clock()
        existing = self.device(record["device_id"])
        record["last_seen"] = max(seen, existing.last_seen) if existing else seen
        self._table("devices").upsert(record, pk="device_id")
