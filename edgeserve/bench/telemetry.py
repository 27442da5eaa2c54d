"""``run_ingest_bench``: how many telemetry records a second the fleet side can take in.

A simulated fleet uploads its outboxes: every device cuts its records into batches, the
batches of all devices arrive interleaved (as they would from one broker), and about one
batch in twenty is redelivered, as QoS 1 and resends after a reconnect do. The timed part
is the heart of what the sync service does per telemetry message — ``decode_batch`` (zstd
+ validation) and ``ingest_batch`` (dedup insert + contiguous ack, one transaction) into a
real SQLite file with the service's durability settings — without the MQTT dispatch, the
device check and publishing the ack (``bench.fleet`` measures the whole path). Encoding
happens before the clock starts, since devices pay for it, not the service.
"""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from edgeserve.wire.errors import InternalError
from edgeserve.wire.telemetry import OutboxEntry, TelemetryBatch, decode_batch, encode_batch
from sync.ingest import ingest_batch
from sync.registry import Registry

GOAL_RECORDS_PER_S = 20_000
REDELIVER_EVERY = 20

console = Console()


@dataclass(frozen=True, slots=True)
class IngestResult:
    devices: int
    records: int  # records received, redeliveries included
    unique_records: int
    batches: int
    redelivered_batches: int
    seconds: float
    cpu_seconds: float  # this process's CPU time: the figure that a busy machine distorts least
    records_per_s: float
    batches_per_s: float
    payload_bytes: int


def run_ingest_bench(
    devices: int = 100, records_per_device: int = 2000, batch_records: int = 500
) -> IngestResult:
    """Ingest a simulated fleet's telemetry into a fresh registry and print the rate."""
    payloads = _fleet_payloads(devices, records_per_device, batch_records)
    with tempfile.TemporaryDirectory(prefix="edgeserve-ingest-") as workdir:
        registry = Registry(Path(workdir) / "registry.db")
        try:
            received, seconds, cpu_seconds = _ingest(registry, payloads)
            _check(registry, devices, records_per_device)
        finally:
            registry.close()
    redelivered = len(payloads) - devices * -(-records_per_device // batch_records)
    result = IngestResult(
        devices=devices,
        records=received,
        unique_records=devices * records_per_device,
        batches=len(payloads),
        redelivered_batches=redelivered,
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        records_per_s=received / seconds,
        batches_per_s=len(payloads) / seconds,
        payload_bytes=sum(len(p) for p in payloads),
    )
    _print(result)
    return result


def _fleet_payloads(devices: int, records_per_device: int, batch_records: int) -> list[bytes]:
    """Every device's batches, interleaved round-robin, with some redelivered later."""
    rng = random.Random(7)
    per_device = [
        device_batches(f"device-{i:04d}", records_per_device, batch_records, rng)
        for i in range(devices)
    ]
    ordered = [
        batches[index]
        for index in range(max(len(b) for b in per_device))
        for batches in per_device
        if index < len(batches)
    ]
    payloads: list[bytes] = []
    for position, payload in enumerate(ordered):
        payloads.append(payload)
        if position % REDELIVER_EVERY == REDELIVER_EVERY - 1:
            payloads.append(ordered[position - rng.randrange(REDELIVER_EVERY)])
    return payloads


def device_batches(
    device_id: str, records: int, batch_records: int, rng: random.Random
) -> list[bytes]:
    batches = []
    for start in range(0, records, batch_records):
        end = min(records, start + batch_records)
        entries = [_entry(seq, rng) for seq in range(start + 1, end + 1)]
        batch = TelemetryBatch(device_id=device_id, from_seq=start, to_seq=end, records=entries)
        batches.append(encode_batch(batch))
    return batches


def _entry(seq: int, rng: random.Random) -> OutboxEntry:
    """Mostly request records; a few escalations and hard examples, as a real agent sends."""
    created = 1.7e9 + seq * 0.05
    roll = rng.random()
    if roll < 0.01:
        data: dict[str, Any] = {"model": "digits-edge", "input": [rng.random() for _ in range(64)]}
        return OutboxEntry(seq=seq, kind="hard_example", created=created, data=data)
    if roll < 0.08:
        data = {"model": "digits-edge", "edge": 3, "cloud": 3, "latency_ms": rng.random() * 20}
        return OutboxEntry(seq=seq, kind="escalation", created=created, data=data)
    escalated = roll < 0.18
    data = {
        "model": "digits-edge",
        "version": "1.0" if seq % 3 else "1.1",
        "latency_ms": rng.lognormvariate(-1.5, 0.6) + (15.0 if escalated else 0.0),
        "rows": 1,
        "confidence": rng.random(),
        "tier": "cloud" if escalated else "edge",
        "escalated": escalated,
        "cache_hit": roll > 0.9,
        "agreement": 1.0 if escalated else None,
        "error": "internal" if roll > 0.998 else None,
    }
    return OutboxEntry(seq=seq, kind="request", created=created, data=data)


def _ingest(registry: Registry, payloads: list[bytes]) -> tuple[int, float, float]:
    received = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for payload in payloads:
        batch = decode_batch(payload)
        ingest_batch(registry, batch)
        received += len(batch.records)
    return received, time.perf_counter() - start, time.process_time() - cpu_start


def _check(registry: Registry, devices: int, records_per_device: int) -> None:
    """A fast number is worthless unless every record landed once and was acknowledged."""
    stored = sum(
        registry.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        for table in ("telemetry_requests", "telemetry_other")
    )
    acked = registry.conn.execute(
        "SELECT COUNT(*) FROM telemetry_cursor WHERE acked_seq = ?", (records_per_device,)
    ).fetchone()[0]
    if stored != devices * records_per_device or acked != devices:
        raise InternalError(f"ingest lost records: stored {stored}, fully acked devices {acked}")


def _print(result: IngestResult) -> None:
    verdict = "meets" if result.records_per_s >= GOAL_RECORDS_PER_S else "MISSES"
    console.print(
        f"telemetry ingest: {result.records_per_s:,.0f} records/s "
        f"({result.batches_per_s:,.0f} batches/s) — {result.records:,} records in "
        f"{result.batches} batches ({result.redelivered_batches} redelivered) from "
        f"{result.devices} devices in {result.seconds:.2f} s "
        f"({result.records / result.cpu_seconds:,.0f} records per CPU second); "
        f"{verdict} the goal of {GOAL_RECORDS_PER_S:,} records/s"
    )


if __name__ == "__main__":
    run_ingest_bench()
