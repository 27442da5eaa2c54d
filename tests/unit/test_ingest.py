"""Telemetry ingest: every record stored once, acks only over what is contiguous."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeserve.wire.sync_messages import ReportedState, RunningModel
from edgeserve.wire.telemetry import OutboxEntry, TelemetryBatch, decode_batch, encode_batch
from sync.ingest import fleet_dropped, fleet_summary, ingest_batch
from sync.registry import Registry


def request(version: str = "1.0", latency_ms: float = 2.0, **fields: Any) -> dict[str, Any]:
    return {"model": "digits-edge", "version": version, "latency_ms": latency_ms, **fields}


def batch(
    from_seq: int,
    to_seq: int,
    device: str = "dev-1",
    dropped: int = 0,
    data: dict[int, dict[str, Any]] | None = None,
    kind: str = "request",
) -> TelemetryBatch:
    """A batch covering (from_seq, to_seq], round-tripped through the wire encoding."""
    data = data or {}
    records = [
        OutboxEntry(seq=seq, kind=kind, created=100.0 + seq, data=data.get(seq, request()))
        for seq in range(from_seq + 1, to_seq + 1)
    ]
    sent = TelemetryBatch(
        device_id=device, from_seq=from_seq, to_seq=to_seq, dropped=dropped, records=records
    )
    return decode_batch(encode_batch(sent))


def stored(registry: Registry, table: str = "telemetry_requests") -> int:
    return int(registry.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry.db")


def test_contiguous_batches_advance_the_ack(registry: Registry):
    assert ingest_batch(registry, batch(0, 10)).acked_seq == 10
    assert ingest_batch(registry, batch(10, 25)).acked_seq == 25
    assert stored(registry) == 25


def test_duplicate_batch_is_stored_once_and_acked(registry: Registry):
    ingest_batch(registry, batch(0, 10))
    assert ingest_batch(registry, batch(0, 10)).acked_seq == 10
    assert stored(registry) == 10


def test_an_old_redelivered_batch_never_moves_the_ack_back(registry: Registry):
    ingest_batch(registry, batch(0, 10))
    ingest_batch(registry, batch(10, 20))
    assert ingest_batch(registry, batch(0, 10)).acked_seq == 20


def test_batch_after_a_gap_is_stored_but_not_acked_past_the_gap(registry: Registry):
    ingest_batch(registry, batch(0, 10))
    assert ingest_batch(registry, batch(20, 30)).acked_seq == 10
    assert stored(registry) == 20
    assert registry.telemetry_cursor("dev-1") == (10, 0)


def test_the_resent_batch_fills_the_gap_and_the_ack_moves_on(registry: Registry):
    ingest_batch(registry, batch(0, 10))
    ingest_batch(registry, batch(20, 30))
    assert ingest_batch(registry, batch(10, 30)).acked_seq == 30
    assert stored(registry) == 30


def test_a_gap_the_device_reports_as_dropped_is_acked(registry: Registry):
    ingest_batch(registry, batch(0, 10))
    # The device dropped seqs 11..20 under its disk budget: they will never be resent.
    assert ingest_batch(registry, batch(20, 30, dropped=10)).acked_seq == 30
    assert registry.telemetry_cursor("dev-1") == (30, 10)


def test_drops_that_do_not_cover_the_gap_do_not_ack_it(registry: Registry):
    ingest_batch(registry, batch(0, 10))
    assert ingest_batch(registry, batch(20, 30, dropped=4)).acked_seq == 10
    assert registry.telemetry_cursor("dev-1") == (10, 4)


def test_devices_have_separate_cursors(registry: Registry):
    ingest_batch(registry, batch(0, 10, device="dev-1"))
    assert ingest_batch(registry, batch(0, 3, device="dev-2")).acked_seq == 3
    assert registry.telemetry_cursor("dev-1") == (10, 0)


def test_escalation_and_hard_example_records_are_stored_apart(registry: Registry):
    ingest_batch(registry, batch(0, 2, kind="escalation", data={1: {"x": 1}, 2: {"x": 2}}))
    ingest_batch(registry, batch(2, 3, kind="hard_example", data={3: {"input": [1, 2]}}))
    assert stored(registry) == 0 and stored(registry, "telemetry_other") == 3
    kinds = registry.conn.execute("SELECT kind FROM telemetry_other ORDER BY seq").fetchall()
    assert [k for (k,) in kinds] == ["escalation", "escalation", "hard_example"]


def test_a_malformed_request_record_is_kept_aside_and_does_not_block_the_ack(
    registry: Registry,
):
    ack = ingest_batch(registry, batch(0, 3, data={2: {"model": "m", "latency_ms": -1}}))
    assert ack.acked_seq == 3
    assert stored(registry) == 2 and stored(registry, "telemetry_other") == 1


def test_fleet_summary_computes_rates_and_percentiles_per_version(registry: Registry):
    latencies = [float(x) for x in range(1, 101)]
    data = {
        seq: request(
            latency_ms=latencies[seq - 1],
            escalated=seq % 4 == 0,
            agreement=1.0 if seq % 8 == 0 else (0.0 if seq % 4 == 0 else None),
            error="internal" if seq % 10 == 0 else None,
            degraded=seq % 5 == 0,
            cache_hit=seq % 2 == 0,
            rows=2,
        )
        for seq in range(1, 101)
    }
    data[101] = request(version="2.0", latency_ms=9.0)
    ingest_batch(registry, batch(0, 101, data=data))
    ingest_batch(registry, batch(0, 1, device="dev-2", data={1: request(version="2.0")}))
    registry.record_reported(
        ReportedState(
            device_id="dev-2", models={"digits-edge": RunningModel(version="2.0", sha256="a")}
        )
    )
    v1, v2 = fleet_summary(registry)
    assert (v1.version, v1.devices, v1.running, v1.requests, v1.rows) == ("1.0", 1, 0, 100, 200)
    assert v1.escalation_rate == pytest.approx(0.25) and v1.agreement == pytest.approx(12 / 25)
    assert v1.error_rate == pytest.approx(0.1) and v1.degraded_rate == pytest.approx(0.2)
    assert v1.cache_hit_rate == pytest.approx(0.5)
    assert v1.p50_latency_ms == pytest.approx(np.percentile(latencies, 50))
    assert v1.p99_latency_ms == pytest.approx(np.percentile(latencies, 99))
    assert (v2.version, v2.devices, v2.running, v2.requests, v2.agreement) == ("2.0", 2, 1, 2, None)


def test_fleet_summary_filters_by_model(registry: Registry):
    data = {1: request(), 2: {**request(), "model": "other"}}
    ingest_batch(registry, batch(0, 2, data=data))
    assert [s.model for s in fleet_summary(registry)] == ["digits-edge", "other"]
    assert [s.model for s in fleet_summary(registry, "other")] == ["other"]


def test_dropped_records_are_counted_per_version_and_for_the_fleet(registry: Registry):
    ingest_batch(registry, batch(0, 1, device="dev-1", dropped=5))
    ingest_batch(registry, batch(0, 1, device="dev-2", dropped=2))
    assert fleet_dropped(registry) == 7
    assert fleet_summary(registry)[0].dropped == 7


def test_the_ingest_benchmark_stores_every_record_once_and_counts_redeliveries():
    from edgeserve.bench.telemetry import run_ingest_bench

    result = run_ingest_bench(devices=5, records_per_device=95, batch_records=10)
    assert (result.unique_records, result.redelivered_batches, result.batches) == (475, 2, 52)
    assert result.records > result.unique_records and result.records_per_s > 0
