"""Per-request telemetry: recorded for the cost of an append, written in batches, uploaded in
bounded batches from the outbox's watermark."""

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from edge_agent.config import AgentConfig
from edge_agent.core import AgentCore
from edge_agent.executor import BoundedExecutor
from edge_agent.metrics import SyncMetrics
from edge_agent.outbox import Outbox
from edge_agent.recorder import TelemetryRecorder
from edge_agent.router import Router
from edge_agent.sync.telemetry import TelemetryUploader
from edgeserve.wire.errors import InvalidInput
from edgeserve.wire.model_card import RouterPolicy
from edgeserve.wire.telemetry import RequestRecord, decode_batch
from edgeserve.wire.tensors import InferRequest, InferTensor


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
def outbox(tmp_path: Path):
    box = Outbox(tmp_path / "outbox.db", 8 << 20)
    yield box
    box.close()


def test_records_reach_the_outbox_within_the_flush_interval(outbox):
    async def scenario():
        recorder = TelemetryRecorder(outbox, flush_interval_s=0.05)
        recorder.start()
        recorder.add("request", {"model": "m", "version": "1", "latency_ms": 0.1})
        await until(lambda: outbox.count("request") == 1)
        await recorder.close()

    asyncio.run(scenario())
    assert orjson.loads(outbox.pending()[0].payload)["model"] == "m"


def test_a_full_batch_is_written_before_the_interval_ends(outbox):
    async def scenario():
        recorder = TelemetryRecorder(outbox, flush_interval_s=60, flush_records=256)
        recorder.start()
        for i in range(256):
            recorder.add("request", {"i": i})
        await until(lambda: outbox.count() == 256)
        await recorder.close()

    asyncio.run(scenario())
    assert [orjson.loads(r.payload)["i"] for r in outbox.pending()] == list(range(256))


def test_closing_writes_what_is_still_buffered(outbox):
    async def scenario():
        recorder = TelemetryRecorder(outbox, flush_interval_s=60)
        recorder.start()
        recorder.add("hard_example", {"a": 1})
        await recorder.close()

    asyncio.run(scenario())
    assert outbox.count("hard_example") == 1


def test_a_full_buffer_drops_new_records_and_counts_them(outbox):
    metrics = SyncMetrics(CollectorRegistry())
    recorder = TelemetryRecorder(outbox, metrics, max_buffered=3, flush_records=10)
    for i in range(5):
        recorder.add("request", {"i": i})
    assert recorder.buffered == 3 and recorder.dropped == 2
    dropped = "edgeserve_agent_telemetry_recorder_dropped_total"
    assert metrics.registry.get_sample_value(dropped) == 2


# -- the router's request records ---------------------------------------------------------


@pytest.fixture
def core(tmp_path: Path):
    config = AgentConfig(state_dir=tmp_path / "state", models=["digits-edge"], cache_entries=0)
    agent = AgentCore.from_config(config)
    agent.start()
    yield agent
    agent.close()


def _infer(core: AgentCore, outbox: Outbox, requests: list[InferRequest], policy=None):
    async def scenario() -> list[object]:
        executor = BoundedExecutor(1, 8)
        recorder = TelemetryRecorder(outbox, flush_interval_s=60)
        router = Router(core, executor, None, recorder, "escalate", 0.05, record_requests=True)
        if policy is not None:
            router.override("digits-edge", policy)
        answers: list[object] = []
        for request in requests:
            try:
                answers.append(await router.infer(request))
            except InvalidInput as exc:
                answers.append(exc)
        await recorder.close()
        executor.shutdown()
        return answers

    return asyncio.run(scenario())


def _request(rows: int, features: int = 64) -> InferRequest:
    data = np.random.default_rng(0).random((rows, features), dtype=np.float32)
    return InferRequest("digits-edge", [InferTensor.from_numpy("input", data)])


def _records(outbox: Outbox) -> list[RequestRecord]:
    return [RequestRecord.model_validate_json(r.payload) for r in outbox.pending("request")]


def test_every_answered_request_is_recorded_once(core, outbox):
    _infer(core, outbox, [_request(3), _request(1)])
    first, second = _records(outbox)
    assert (first.model, first.version, first.rows, first.tier) == ("digits-edge", "1", 3, "edge")
    assert second.rows == 1 and first.error is None and not first.escalated
    assert first.confidence is not None and 0 <= first.confidence <= 1
    assert first.latency_ms > 0


def test_a_failed_request_is_recorded_with_its_error_code(core, outbox):
    errors = _infer(core, outbox, [_request(1, features=5)])
    assert isinstance(errors[0], InvalidInput)
    (record,) = _records(outbox)
    assert record.error == "invalid_input" and record.model == "digits-edge"


def test_the_recorded_confidence_is_the_lowest_row_score(core, outbox):
    (answer,) = _infer(core, outbox, [_request(4)], policy=RouterPolicy(threshold=1.0))
    (record,) = _records(outbox)
    assert record.confidence == min(answer.parameters["confidence"])


# -- uploader batches ----------------------------------------------------------------------


def _uploader(outbox: Outbox, sent: list[bytes], **limits: int) -> TelemetryUploader:
    return TelemetryUploader(
        outbox,
        "dev-1",
        lambda topic, payload: sent.append(payload),
        SyncMetrics(CollectorRegistry()),
        **limits,
    )


def test_a_batch_starts_at_the_watermark_and_holds_at_most_the_record_limit(outbox):
    seqs = outbox.append_many("request", [b'{"n": 1}'] * 12)
    outbox.acknowledge_through(seqs[1])
    batch = _uploader(outbox, [], max_records=4).build_batch()
    assert batch is not None
    assert batch.from_seq == seqs[1] and batch.to_seq == seqs[5]
    assert [r.seq for r in batch.records] == seqs[2:6]


def test_a_batch_stops_at_the_raw_byte_limit(outbox):
    seqs = outbox.append_many("request", [orjson.dumps({"pad": "x" * 1000})] * 10)
    batch = _uploader(outbox, [], max_bytes=3500).build_batch()
    assert batch is not None and [r.seq for r in batch.records] == seqs[:3]


def test_unreadable_rows_are_skipped_but_covered_by_the_batch_range(outbox):
    seqs = outbox.append_rows([("request", b"not json"), ("request", b'{"ok": 1}')])
    batch = _uploader(outbox, []).build_batch()
    assert batch is not None and batch.to_seq == seqs[1]
    assert [r.seq for r in batch.records] == [seqs[1]]


def test_only_one_batch_is_in_flight_until_acked(outbox):
    sent: list[bytes] = []
    outbox.append_many("request", [b'{"n": 1}'] * 3)

    async def scenario():
        uploader = _uploader(outbox, sent, max_records=2)
        assert await uploader.send_next()
        assert not await uploader.send_next()  # waiting for the ack
        await uploader.on_ack(decode_batch(sent[0]).to_seq)
        assert await uploader.send_next()

    asyncio.run(scenario())
    first, second = (decode_batch(p) for p in sent)
    assert second.from_seq == first.to_seq and len(second.records) == 1
