"""The sync service's device-message handlers, called directly on a real SQLite registry.

Devices are untrusted: whatever they send, a handler returns the messages to publish or
nothing, and counts a refusal by reason; it never raises into the service loop.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path

import pytest

from edgeserve.wire import topics
from edgeserve.wire.manifest import PayloadSpec, UpdateManifest
from edgeserve.wire.sync_messages import (
    ChunkRequest,
    DesiredState,
    DeviceStatus,
    ReportedState,
    TelemetryAck,
)
from edgeserve.wire.telemetry import OutboxEntry, TelemetryBatch, encode_batch
from sync.handlers import (
    dispatch,
    issue_assignments,
    on_reported,
    on_status,
    on_telemetry,
    on_update_request,
)
from sync.rollout import RolloutSpec
from tests.unit.sync_setup import MODEL, Fleet, build_fleet

DEVICE = "dev-1"


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return build_fleet(tmp_path)


def _topic(kind: str, device: str = DEVICE, update_id: str | None = None) -> topics.DeviceTopic:
    return topics.DeviceTopic(device, kind, update_id)  # type: ignore[arg-type]


def _issued(fleet: Fleet) -> tuple[str, int]:
    """Device ``dev-1`` (no model yet) was issued v2 in full: its update id and chunk count."""
    fleet.report(DEVICE)
    spec = fleet.issuer.issue(DEVICE, MODEL, "2").spec
    return spec.update_id, len(spec.chunks)


def _request(missing: list[int], version: str = "2") -> bytes:
    return ChunkRequest(model=MODEL, version=version, missing=missing).to_bytes()


def test_garbage_is_rejected_and_counted(fleet: Fleet) -> None:
    assert on_reported(fleet.ctx, _topic("reported"), b"\x00not json{") == []
    assert fleet.rejected("reported", "invalid_input") == 1


def test_oversize_message_is_rejected_before_parsing(fleet: Fleet) -> None:
    payload = b'{"device_id": "' + b"x" * (2 << 20) + b'"}'
    assert on_status(fleet.ctx, _topic("status"), payload) == []
    assert fleet.rejected("status", "payload_too_large") == 1


def test_payload_naming_another_device_is_rejected(fleet: Fleet) -> None:
    forged = ReportedState(device_id="victim", group="prod").to_bytes()
    assert on_reported(fleet.ctx, _topic("reported"), forged) == []
    assert fleet.rejected("reported", "device_mismatch") == 1
    assert fleet.registry.device("victim") is None


def test_status_and_report_register_the_device(fleet: Fleet) -> None:
    status = DeviceStatus(device_id=DEVICE, online=True, agent_version="0.1", ts=time.time())
    assert on_status(fleet.ctx, _topic("status"), status.to_bytes()) == []
    report = ReportedState(device_id=DEVICE, group="lab").to_bytes()
    assert on_reported(fleet.ctx, _topic("reported"), report) == []
    device = fleet.registry.device(DEVICE)
    assert device is not None and device.online and device.group == "lab"


def test_chunk_request_from_an_unknown_device_is_rejected(fleet: Fleet) -> None:
    update_id, _ = _issued(fleet)
    out = on_update_request(
        fleet.ctx, _topic("update_request", "stranger", update_id), _request([0])
    )
    assert out == []
    assert fleet.rejected("update_request", "unknown_device") == 1


def test_chunk_request_for_an_update_not_issued_to_the_device_is_rejected(fleet: Fleet) -> None:
    update_id, _ = _issued(fleet)
    fleet.report("dev-2", running="1")
    out = on_update_request(fleet.ctx, _topic("update_request", "dev-2", update_id), _request([0]))
    assert out == []
    assert fleet.rejected("update_request", "unknown_update") == 1


def test_chunk_index_out_of_range_is_rejected(fleet: Fleet) -> None:
    update_id, count = _issued(fleet)
    out = on_update_request(
        fleet.ctx, _topic("update_request", update_id=update_id), _request([0, count])
    )
    assert out == []
    assert fleet.rejected("update_request", "chunk_out_of_range") == 1


def test_chunk_request_naming_another_version_is_rejected(fleet: Fleet) -> None:
    update_id, _ = _issued(fleet)
    out = on_update_request(
        fleet.ctx, _topic("update_request", update_id=update_id), _request([0], version="7")
    )
    assert out == []
    assert fleet.rejected("update_request", "update_mismatch") == 1


def test_valid_chunk_request_yields_exactly_the_requested_chunks(fleet: Fleet) -> None:
    update_id, count = _issued(fleet)
    spec = fleet.store.spec(update_id)
    assert spec is not None and count >= 3
    payload = fleet.store.read_payload(spec.sha256)
    wanted = [count - 1, 0, 2]
    out = on_update_request(
        fleet.ctx, _topic("update_request", update_id=update_id), _request(wanted)
    )
    assert [m.topic for m in out] == [topics.chunk(DEVICE, update_id, i) for i in wanted]
    size = spec.chunk_size
    assert [m.payload for m in out] == [payload[i * size : (i + 1) * size] for i in wanted]
    assert all(m.qos == 1 and not m.retain for m in out)


def test_chunk_request_is_served_one_window_at_a_time(fleet: Fleet) -> None:
    update_id, count = _issued(fleet)
    fleet.ctx.request_window = 2
    out = on_update_request(
        fleet.ctx, _topic("update_request", update_id=update_id), _request(list(range(count)))
    )
    assert [m.topic for m in out] == [topics.chunk(DEVICE, update_id, i) for i in (0, 1)]


def _rolled_out(fleet: Fleet) -> tuple[str, PayloadSpec]:
    """``dev-1`` (no model yet) assigned v2 by a running rollout: its update and payload."""
    fleet.report(DEVICE)
    _, assigns = fleet.ctx.controller.start(RolloutSpec(model=MODEL, version="2", stages=[1.0]))
    (message,) = issue_assignments(fleet.ctx, assigns)
    desired = DesiredState.model_validate_json(message.payload)
    manifest = base64.b64decode(desired.models[MODEL].manifest)
    spec = UpdateManifest.model_validate_json(manifest).payload
    return spec.update_id, spec


def _rot(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_payload_rotten_on_disk_is_rebuilt_and_the_update_issued_again(fleet: Fleet) -> None:
    update_id, spec = _rolled_out(fleet)
    _rot(fleet.store.payload_path(spec.sha256))
    topic = _topic("update_request", update_id=update_id)

    out = on_update_request(fleet.ctx, topic, _request([0]))

    assert [m.topic for m in out] == [topics.desired(DEVICE)]  # the same update, issued again
    assert fleet.corrupt("payload") == 1 and fleet.corrupt("artifact") == 0
    (chunk,) = on_update_request(fleet.ctx, topic, _request([0]))
    assert hashlib.sha256(chunk.payload).hexdigest() == spec.chunks[0]


def test_a_rotten_artifact_fails_the_assignment_with_the_reason(fleet: Fleet) -> None:
    update_id, spec = _rolled_out(fleet)
    _rot(fleet.store.payload_path(spec.sha256))
    _rot(fleet.store.artifact_path(fleet.cards["2"].sha256))

    on_update_request(fleet.ctx, _topic("update_request", update_id=update_id), _request([0]))

    (rollout,) = fleet.ctx.controller.list()
    (device,) = rollout.devices
    assert device.state == "failed" and "artifact of digits-edge v2 is corrupt" in device.reason
    assert rollout.state == "halted" and fleet.corrupt("artifact") == 1


def test_telemetry_batch_is_acknowledged(fleet: Fleet) -> None:
    fleet.report(DEVICE, running="1")
    record = {"model": MODEL, "version": "1", "latency_ms": 0.4}
    batch = TelemetryBatch(
        device_id=DEVICE,
        from_seq=0,
        to_seq=2,
        records=[
            OutboxEntry(seq=s, kind="request", created=time.time(), data=record) for s in (1, 2)
        ],
    )
    out = on_telemetry(fleet.ctx, _topic("telemetry"), encode_batch(batch))
    assert [m.topic for m in out] == [topics.telemetry_ack(DEVICE)]
    assert TelemetryAck.model_validate_json(out[0].payload).acked_seq == 2


def test_telemetry_that_is_not_zstd_is_rejected(fleet: Fleet) -> None:
    fleet.report(DEVICE, running="1")
    assert on_telemetry(fleet.ctx, _topic("telemetry"), json.dumps({"a": 1}).encode()) == []
    assert fleet.rejected("telemetry", "invalid_input") == 1


def test_dispatch_refuses_topics_outside_the_device_tree(fleet: Fleet) -> None:
    assert dispatch(fleet.ctx, "edgeserve/v1/devices/+/status", b"{}") == []
    assert dispatch(fleet.ctx, topics.desired(DEVICE), b"{}") == []
    assert fleet.rejected("unparsed", "bad_topic") == 1
    assert fleet.rejected("unexpected", "unexpected_topic") == 1
