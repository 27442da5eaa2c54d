"""Telemetry ingest: store each device's records exactly once and acknowledge safely.

The agent deletes every record at or below the sequence we acknowledge, so an ack is a
promise that those records are on our disk. Records are keyed by ``(device, seq)`` and
inserted with ``INSERT OR IGNORE``, so redelivered batches (QoS 1, resends after a
timeout or a reconnect) are stored once. The ack is the highest *contiguous* sequence:
a batch that starts at or below what we acknowledged extends it; a batch that starts
above it follows a batch we never got, so its records are stored but the ack stays and
the device resends from there — unless the device's drop counter shows it discarded
the missing records under its disk budget (they will never come, and waiting for them
would stall the device forever). One ``BEGIN IMMEDIATE`` transaction and ``executemany``
per batch keep the hot path at tens of thousands of records a second.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from pydantic import TypeAdapter, ValidationError

from edgeserve.wire.manifest import version_key
from edgeserve.wire.sync_messages import TelemetryAck
from edgeserve.wire.telemetry import OutboxEntry, RequestRecord, TelemetryBatch
from sync.registry import Registry
from sync.views import DeviceRow, VersionSummary

INVALID_REQUEST = "invalid_request"

_INSERT_REQUEST = (
    "INSERT OR IGNORE INTO telemetry_requests (device_id, seq, model, version, ts, latency_ms,"
    " rows, confidence, tier, escalated, degraded, cache_hit, agreement, error)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_INSERT_OTHER = (
    "INSERT OR IGNORE INTO telemetry_other (device_id, seq, kind, ts, data) VALUES (?,?,?,?,?)"
)
_SAVE_CURSOR = (
    "INSERT INTO telemetry_cursor (device_id, acked_seq, dropped, dropped_at_ack)"
    " VALUES (?,?,?,?) ON CONFLICT(device_id) DO UPDATE SET acked_seq = excluded.acked_seq,"
    " dropped = excluded.dropped, dropped_at_ack = excluded.dropped_at_ack"
)

RequestRow = tuple[Any, ...]
_REQUEST_LIST = TypeAdapter(list[RequestRecord])
OtherRow = tuple[str, int, str, float, str]


def ingest_batch(registry: Registry, batch: TelemetryBatch) -> TelemetryAck:
    """Store one decoded batch (idempotently) and say what the device may delete."""
    requests, other = _rows(batch)
    device = batch.device_id
    with registry.transaction() as conn:
        acked, dropped, dropped_at_ack = _cursor(conn, device)
        if requests:
            conn.executemany(_INSERT_REQUEST, requests)
        if other:
            conn.executemany(_INSERT_OTHER, other)
        if _contiguous(conn, batch, acked, dropped_at_ack):
            acked, dropped_at_ack = max(acked, batch.to_seq), max(dropped_at_ack, batch.dropped)
        conn.execute(_SAVE_CURSOR, (device, acked, max(dropped, batch.dropped), dropped_at_ack))
    return TelemetryAck(acked_seq=acked)


def fleet_summary(registry: Registry, model: str | None = None) -> list[VersionSummary]:
    """Per model version: traffic, quality rates and latency percentiles, oldest first."""
    where, args = ("WHERE model = ?", (model,)) if model is not None else ("", ())
    groups = registry.conn.execute(
        "SELECT model, version, COUNT(DISTINCT device_id), COUNT(*), SUM(rows),"
        " AVG(escalated), AVG(agreement), AVG(error IS NOT NULL), AVG(degraded),"
        f" AVG(cache_hit) FROM telemetry_requests {where} GROUP BY model, version",
        args,
    ).fetchall()
    devices = registry.devices()
    summaries = [_summary(registry, row, devices) for row in groups]
    return sorted(summaries, key=lambda s: (s.model, version_key(s.version)))


def fleet_dropped(registry: Registry) -> int:
    """Records the whole fleet reported dropping under its outbox budgets, all time."""
    row = registry.conn.execute("SELECT COALESCE(SUM(dropped), 0) FROM telemetry_cursor")
    return int(row.fetchone()[0])


@dataclass(frozen=True, slots=True)
class HardExamples:
    x: npt.NDArray[np.float32]  # [N, features]
    skipped: int  # records of this model that were malformed or of another width


def hard_examples(
    registry: Registry, model: str, input_name: str, version: str | None = None
) -> HardExamples:
    """The inputs of the fleet's ``hard_example`` records for ``model`` (one version, or
    all), oldest first.

    A record carries the input the edge was unsure of but not the cloud's answer (an agent
    queueing hard examples does not escalate them); the learning loop asks the cloud
    model, its teacher, for the label (``models.distill``). A malformed record, or one of
    another width than the first, is skipped and counted: one training batch, one width.
    """
    rows = registry.conn.execute(
        "SELECT data FROM telemetry_other WHERE kind = 'hard_example' ORDER BY ts, device_id, seq"
    ).fetchall()
    inputs: list[npt.NDArray[np.float32]] = []
    skipped = 0
    for (text,) in rows:
        data = orjson.loads(text)
        if data.get("model") != model or version not in (None, data.get("version")):
            continue
        try:
            flat = np.asarray(data["inputs"][input_name]["data"], dtype=np.float32).reshape(-1)
        except (KeyError, TypeError, ValueError):
            skipped += 1
            continue
        if (inputs and len(flat) != len(inputs[0])) or not np.all(np.isfinite(flat)):
            skipped += 1
            continue
        inputs.append(flat)
    width = len(inputs[0]) if inputs else 0
    x = np.stack(inputs) if inputs else np.zeros((0, width), dtype=np.float32)
    return HardExamples(x, skipped)


def _rows(batch: TelemetryBatch) -> tuple[list[RequestRow], list[OtherRow]]:
    device = batch.device_id
    entries = [entry for entry in batch.records if entry.kind == "request"]
    other = [_other(device, e, e.kind) for e in batch.records if e.kind != "request"]
    try:
        # One validation call for the whole batch: the per-record path costs 2x.
        records = _REQUEST_LIST.validate_python([entry.data for entry in entries])
    except ValidationError:
        records, entries = _valid_requests(device, entries, other)
    requests = [
        (
            device,
            e.seq,
            r.model,
            r.version,
            e.created,
            r.latency_ms,
            r.rows,
            r.confidence,
            r.tier,
            r.escalated,
            r.degraded,
            r.cache_hit,
            r.agreement,
            r.error,
        )
        for e, r in zip(entries, records, strict=True)
    ]
    return requests, other


def _valid_requests(
    device: str, entries: list[OutboxEntry], other: list[OtherRow]
) -> tuple[list[RequestRecord], list[OutboxEntry]]:
    """The batch's valid request records; the invalid ones go to ``other``.

    Stored apart rather than refused: refusing would make the device resend the batch
    forever and block every record behind it.
    """
    records, kept = [], []
    for entry in entries:
        try:
            records.append(RequestRecord.model_validate(entry.data))
        except ValidationError:
            other.append(_other(device, entry, INVALID_REQUEST))
            continue
        kept.append(entry)
    return records, kept


def _other(device: str, entry: OutboxEntry, kind: str) -> OtherRow:
    return (device, entry.seq, kind, entry.created, orjson.dumps(entry.data).decode())


def _cursor(conn: sqlite3.Connection, device: str) -> tuple[int, int, int]:
    row = conn.execute(
        "SELECT acked_seq, dropped, dropped_at_ack FROM telemetry_cursor WHERE device_id = ?",
        (device,),
    ).fetchone()
    return (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)


def _contiguous(
    conn: sqlite3.Connection, batch: TelemetryBatch, acked: int, dropped_at_ack: int
) -> bool:
    """Whether everything up to ``batch.from_seq`` is stored or was dropped by the device.

    Sequences are dense on the device, so the seqs in ``(acked, from_seq]`` we do not hold
    are the gap; drops the device reported since our last ack may account for all of it.
    """
    if batch.from_seq <= acked:
        return True
    stored = sum(
        conn.execute(
            f"SELECT COUNT(*) FROM {table} WHERE device_id = ? AND seq > ? AND seq <= ?",
            (batch.device_id, acked, batch.from_seq),
        ).fetchone()[0]
        for table in ("telemetry_requests", "telemetry_other")
    )
    missing = batch.from_seq - acked - stored
    return bool(missing <= 0 or batch.dropped - dropped_at_ack >= missing)


def _summary(registry: Registry, row: tuple[Any, ...], devices: list[DeviceRow]) -> VersionSummary:
    model, version, reporting, requests, rows, escalated, agreement, errors, degraded, hits = row
    measured = np.array(
        registry.conn.execute(
            "SELECT latency_ms, confidence FROM telemetry_requests WHERE model = ? AND version = ?",
            (model, version),
        ).fetchall(),
        dtype=np.float64,
    ).reshape(-1, 2)  # a NULL confidence (unscored) reads as nan
    latencies, scores = measured[:, 0], measured[:, 1]
    p50, p99 = np.percentile(latencies, [50, 99]) if latencies.size else (0.0, 0.0)
    scores = scores[~np.isnan(scores)]
    quantiles = None
    if scores.size:
        low, middle, high = np.percentile(scores, [10, 50, 90]).tolist()
        quantiles = (low, middle, high)
    dropped = registry.conn.execute(
        "SELECT COALESCE(SUM(dropped), 0) FROM telemetry_cursor WHERE device_id IN"
        " (SELECT DISTINCT device_id FROM telemetry_requests WHERE model = ? AND version = ?)",
        (model, version),
    ).fetchone()[0]
    return VersionSummary(
        model=model,
        version=version,
        devices=int(reporting),
        running=sum(1 for d in devices if d.running_version(model) == version),
        requests=int(requests),
        rows=int(rows),
        escalation_rate=float(escalated),
        agreement=None if agreement is None else float(agreement),
        p50_latency_ms=float(p50),
        p99_latency_ms=float(p99),
        error_rate=float(errors),
        degraded_rate=float(degraded),
        cache_hit_rate=float(hits),
        dropped=int(dropped),
        score_quantiles=quantiles,
    )
