"""The agent's sync handlers, called directly with real parts: what arrives, what goes out.

A real ``AgentCore`` serving the packaged ``digits-edge`` v1, a real ``Updater`` and
operator key, a real outbox; ``publish`` collects what the client would send, so each
test feeds messages to ``handlers.handle`` and reads the replies.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from edge_agent.config import AgentConfig
from edge_agent.core import AgentCore
from edge_agent.executor import BoundedExecutor
from edge_agent.metrics import SyncMetrics
from edge_agent.outbox import Outbox
from edge_agent.router import Router
from edge_agent.sync import handlers
from edge_agent.sync.context import SyncContext
from edge_agent.sync.telemetry import TelemetryUploader
from edge_agent.updates import Updater
from edgeserve.artifacts import packaged_artifacts
from edgeserve.mqtt import Message
from edgeserve.runtimes import RuntimeOptions, open_session
from edgeserve.security.signing import OperatorKey, ensure_operator_key
from edgeserve.wire import topics
from edgeserve.wire.delta import candidates
from edgeserve.wire.manifest import (
    GoldenTensor,
    PayloadSpec,
    SelfTest,
    SignedManifest,
    UpdateManifest,
)
from edgeserve.wire.model_card import ModelCard, RouterPolicy
from edgeserve.wire.sync_messages import (
    MAX_REVISION,
    ChunkRequest,
    DesiredState,
    ReportedState,
    TelemetryAck,
    UpdateResult,
)
from edgeserve.wire.telemetry import decode_batch

DEVICE = "dev-1"
MODEL = "digits-edge"
CHUNK = 1024


@dataclass
class Harness:
    ctx: SyncContext
    key: OperatorKey
    outbox: Outbox
    sent: list[tuple[str, bytes, bool]] = field(default_factory=list)

    def feed(self, topic: str, payload: bytes) -> None:
        asyncio.run(self._feed(topic, payload))

    async def _feed(self, topic: str, payload: bytes) -> None:
        await handlers.handle(self.ctx, Message(topic, payload, False))
        await self.settle()

    async def settle(self) -> None:
        """Wait for updates being installed in the background."""
        while self.ctx.state.finishing:
            await asyncio.wait(list(self.ctx.state.finishing.values()))

    def rejected(self, reason: str) -> float:
        value = self.ctx.metrics.registry.get_sample_value(
            "edgeserve_agent_sync_rejected_total", {"reason": reason}
        )
        return value or 0.0

    def published(self, topic: str) -> list[bytes]:
        return [payload for t, payload, _ in self.sent if t == topic]


@pytest.fixture
def harness(tmp_path: Path):
    config = AgentConfig(state_dir=tmp_path / "agent", models=[MODEL], device_id=DEVICE)
    core = AgentCore.from_config(config)
    core.start()
    key = ensure_operator_key(tmp_path / "operator")
    outbox = Outbox(tmp_path / "agent" / "outbox.db", 1 << 20)
    executor = BoundedExecutor(1, 4)
    router = Router(core, executor, None, None, "escalate", 0.05)
    updater = Updater(core.store, config.state_dir, key.public, core.load, device_id=DEVICE)
    metrics = SyncMetrics(CollectorRegistry())
    sent: list[tuple[str, bytes, bool]] = []
    uploader = TelemetryUploader(
        outbox, DEVICE, lambda topic, payload: sent.append((topic, payload, False)), metrics
    )
    ctx = SyncContext(
        device_id=DEVICE,
        core=core,
        router=router,
        updater=updater,
        public_key=key.public,
        metrics=metrics,
        publish=lambda topic, payload, retain: sent.append((topic, payload, retain)),
        uploader=uploader,
        outbox=outbox,
    )
    yield Harness(ctx, key, outbox, sent)
    executor.shutdown()
    outbox.close()
    core.close()


def _release(key: OperatorKey, workdir: Path, version: str) -> tuple[SignedManifest, list[bytes]]:
    """``digits-edge`` at ``version``: the packaged bytes, a full zstd payload, golden I/O."""
    source = packaged_artifacts()
    seeded = ModelCard.load(source / f"{MODEL}.card.json")
    data = (source / seeded.file).read_bytes()
    card = seeded.model_copy(update={"version": version})
    payload = candidates(data, None)[0].data
    chunks = [payload[i : i + CHUNK] for i in range(0, len(payload), CHUNK)]
    path = workdir / "golden.onnx"
    path.write_bytes(data)
    inputs = np.random.default_rng(0).random((2, 64), dtype=np.float32)
    session = open_session("onnx", path, RuntimeOptions())
    logits = session.run({"input": inputs}, ["logits"])["logits"]
    session.close()
    manifest = UpdateManifest(
        model=MODEL,
        version=version,
        issued_at=time.time(),
        expires_at=time.time() + 3600,
        card=card,
        payload=PayloadSpec(
            encoding="zstd",
            sha256=hashlib.sha256(payload).hexdigest(),
            size=len(payload),
            chunk_size=CHUNK,
            chunks=[hashlib.sha256(chunk).hexdigest() for chunk in chunks],
        ),
        self_test=SelfTest(
            inputs=[
                GoldenTensor(
                    name="input", datatype="FP32", shape=[2, 64], data=inputs.ravel().tolist()
                )
            ],
            expected=[
                GoldenTensor(
                    name="logits", datatype="FP32", shape=[2, 10], data=logits.ravel().tolist()
                )
            ],
        ),
    )
    return key.sign(manifest), chunks


def _desired(revision: int, **fields: object) -> bytes:
    return DesiredState(device_id=DEVICE, revision=revision, **fields).to_bytes()  # type: ignore[arg-type]


# -- garbage is counted and ignored ----------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (topics.desired(DEVICE), b"{not json", "invalid_input"),
        (topics.desired(DEVICE), b'{"schema": "edgeserve.desired/9"}', "invalid_input"),
        (topics.desired(DEVICE), b"x" * (2 << 20), "payload_too_large"),
        (topics.chunk(DEVICE, "ab" * 16, 0), b"\x00garbage", "not_found"),
        (topics.telemetry_ack(DEVICE), b"[]", "invalid_input"),
        (topics.telemetry_ack(DEVICE), b'{"schema": "edgeserve.telemetry-ack/1"}', "invalid_input"),
        (topics.desired("dev-2"), _desired(1), "wrong_device"),
        ("edgeserve/v1/devices/dev-1/nonsense", b"{}", "bad_topic"),
        (topics.status(DEVICE), b"{}", "unexpected_kind"),
    ],
)
def test_garbage_on_each_topic_is_counted_and_ignored(harness, topic, payload, reason):
    harness.feed(topic, payload)
    assert harness.rejected(reason) == 1
    assert harness.sent == []
    assert harness.ctx.core.model(MODEL).version == "1"


def test_a_desired_state_for_another_device_in_the_payload_is_ignored(harness):
    other = DesiredState(device_id="dev-2", revision=1).to_bytes()
    harness.feed(topics.desired(DEVICE), other)
    assert harness.rejected("wrong_device") == 1 and harness.ctx.state.desired_revision == -1


# -- desired state ------------------------------------------------------------------------------


def test_a_desired_router_policy_is_applied_and_reported(harness):
    policy = RouterPolicy(threshold=0.5)
    harness.feed(topics.desired(DEVICE), _desired(3, router={MODEL: policy}))
    assert harness.ctx.router.overrides() == {MODEL: policy}
    (reported,) = harness.published(topics.reported(DEVICE))
    state = ReportedState.model_validate_json(reported)
    assert state.desired_revision == 3 and state.router == {MODEL: policy}
    assert state.models[MODEL].version == "1"


def test_a_stale_desired_revision_is_ignored(harness):
    harness.feed(topics.desired(DEVICE), _desired(5, router={MODEL: RouterPolicy(threshold=0.5)}))
    harness.feed(topics.desired(DEVICE), _desired(4, router={MODEL: RouterPolicy(threshold=0.9)}))
    harness.feed(topics.desired(DEVICE), _desired(5, router={MODEL: RouterPolicy(threshold=0.7)}))
    assert harness.ctx.router.overrides()[MODEL].threshold == 0.5
    assert harness.rejected("stale") == 2 and harness.ctx.state.desired_revision == 5


def test_a_manifest_with_a_bad_signature_is_refused_and_reported(harness, tmp_path):
    stranger = ensure_operator_key(tmp_path / "stranger")
    envelope, _ = _release(stranger, tmp_path, "2")
    harness.feed(topics.desired(DEVICE), _desired(1, models={MODEL: envelope}))
    (payload,) = harness.published(topics.update_result(DEVICE))
    result = UpdateResult.model_validate_json(payload)
    assert (result.ok, result.stage, result.running_version) == (False, "verify", "1")
    assert result.reason.startswith("signature") and result.version == ""
    assert harness.rejected("signature") == 1
    assert harness.published(topics.update_request(DEVICE, "0" * 32)) == []


def test_a_forged_desired_state_does_not_make_genuine_ones_stale(harness, tmp_path):
    stranger = ensure_operator_key(tmp_path / "stranger")
    forged, _ = _release(stranger, tmp_path, "2")
    genuine_policy = RouterPolicy(threshold=0.5)
    harness.feed(
        topics.desired(DEVICE),
        _desired(MAX_REVISION, models={MODEL: forged}, router={MODEL: RouterPolicy(threshold=1)}),
    )
    harness.feed(topics.desired(DEVICE), _desired(2, router={MODEL: genuine_policy}))

    assert harness.rejected("signature") == 1 and harness.rejected("stale") == 0
    assert harness.ctx.state.desired_revision == 2
    assert harness.ctx.router.overrides() == {MODEL: genuine_policy}


def test_a_desired_revision_beyond_the_bound_is_refused_as_invalid(harness):
    payload = _desired(1).replace(b'"revision":1', f'"revision":{2**63 - 1}'.encode())
    harness.feed(topics.desired(DEVICE), payload)
    assert harness.rejected("invalid_input") == 1 and harness.ctx.state.desired_revision == -1


def test_a_refused_older_version_is_reported_with_the_version_it_names(harness, tmp_path):
    envelope, _ = _release(harness.key, tmp_path, "0")
    harness.feed(topics.desired(DEVICE), _desired(1, models={MODEL: envelope}))
    (payload,) = harness.published(topics.update_result(DEVICE))
    result = UpdateResult.model_validate_json(payload)
    assert (result.ok, result.version) == (False, "0") and harness.rejected("refused") == 1


# -- chunks -------------------------------------------------------------------------------------


def _requests(harness: Harness, update_id: str) -> list[ChunkRequest]:
    topic = topics.update_request(DEVICE, update_id)
    return [ChunkRequest.model_validate_json(p) for p in harness.published(topic)]


def test_an_update_is_fetched_in_windows_installed_and_reported(harness, tmp_path):
    envelope, chunks = _release(harness.key, tmp_path, "2")
    update_id = hashlib.sha256(b"".join(chunks)).hexdigest()[:32]
    harness.ctx.window = 4
    assert len(chunks) > 3 * harness.ctx.window
    harness.feed(topics.desired(DEVICE), _desired(1, models={MODEL: envelope}))
    served: set[int] = set()
    while len(served) < len(chunks):
        asked = [i for r in _requests(harness, update_id) for i in r.missing if i not in served]
        assert asked and len(set(asked)) <= harness.ctx.window
        for index in asked:
            served.add(index)
            harness.feed(topics.chunk(DEVICE, update_id, index), chunks[index])
    assert all(len(r.missing) <= harness.ctx.window for r in _requests(harness, update_id))
    (payload,) = harness.published(topics.update_result(DEVICE))
    assert UpdateResult.model_validate_json(payload).ok
    assert harness.ctx.core.model(MODEL).version == "2"
    latest = ReportedState.model_validate_json(harness.published(topics.reported(DEVICE))[-1])
    assert latest.models[MODEL].version == "2" and latest.updates == {}


def test_a_chunk_that_fails_its_hash_is_counted_and_asked_for_again(harness, tmp_path):
    envelope, chunks = _release(harness.key, tmp_path, "2")
    update_id = hashlib.sha256(b"".join(chunks)).hexdigest()[:32]
    harness.feed(topics.desired(DEVICE), _desired(1, models={MODEL: envelope}))
    harness.feed(topics.chunk(DEVICE, update_id, 0), b"tampered")
    assert harness.rejected("integrity") == 1
    asyncio.run(handlers.resend_stalled(harness.ctx, now=time.monotonic() + 60))
    first, again = _requests(harness, update_id)
    assert 0 in again.missing and again.missing == first.missing


def test_a_chunk_that_rots_on_disk_is_counted_fetched_again_and_the_update_installs(
    harness, tmp_path
):
    envelope, chunks = _release(harness.key, tmp_path, "2")
    update_id = hashlib.sha256(b"".join(chunks)).hexdigest()[:32]
    harness.feed(topics.desired(DEVICE), _desired(1, models={MODEL: envelope}))
    for index in range(len(chunks) - 1):
        harness.feed(topics.chunk(DEVICE, update_id, index), chunks[index])
    (tmp_path / "agent" / "downloads" / update_id / "chunks" / "1").write_bytes(b"bit rot")

    harness.feed(topics.chunk(DEVICE, update_id, len(chunks) - 1), chunks[-1])

    assert harness.rejected("chunk_rotted") == 1
    assert _requests(harness, update_id)[-1].missing == [1]
    assert harness.published(topics.update_result(DEVICE)) == []
    harness.feed(topics.chunk(DEVICE, update_id, 1), chunks[1])
    (payload,) = harness.published(topics.update_result(DEVICE))
    assert UpdateResult.model_validate_json(payload).ok
    assert harness.ctx.core.model(MODEL).version == "2"


# -- telemetry acks -----------------------------------------------------------------------------


def test_a_telemetry_ack_deletes_exactly_the_acknowledged_rows(harness):
    seqs = harness.outbox.append_many("request", [b'{"n": 1}'] * 6)
    uploader = harness.ctx.uploader
    assert uploader is not None
    assert asyncio.run(uploader.send_next())
    (batch,) = [decode_batch(p) for p in harness.published(topics.telemetry(DEVICE))]
    assert batch.to_seq == seqs[-1]
    harness.feed(topics.telemetry_ack(DEVICE), TelemetryAck(acked_seq=seqs[3]).to_bytes())
    assert [r.seq for r in harness.outbox.pending()] == seqs[4:]
    assert harness.outbox.acked_seq == seqs[3]


def test_an_ack_beyond_what_was_sent_deletes_nothing_unsent(harness):
    seqs = harness.outbox.append_many("request", [b'{"n": 1}'] * 2)
    uploader = harness.ctx.uploader
    assert uploader is not None
    asyncio.run(uploader.send_next())
    later = harness.outbox.append_many("request", [b'{"n": 2}'])
    harness.feed(topics.telemetry_ack(DEVICE), TelemetryAck(acked_seq=later[0] + 100).to_bytes())
    assert [r.seq for r in harness.outbox.pending()] == later
    assert harness.outbox.acked_seq == seqs[-1]


# -- configuration -----------------------------------------------------------------------------


def test_an_agent_that_syncs_must_pin_the_operator_key(tmp_path):
    with pytest.raises(ValueError, match="operator_public_key"):
        AgentConfig(state_dir=tmp_path, sync_broker="127.0.0.1:8883")


def test_the_broker_user_defaults_to_the_device_id(tmp_path):
    from edge_agent.sync.client import broker_address

    (tmp_path / "pw").write_text("s3cret\n")
    config = AgentConfig(
        device_id=DEVICE,
        state_dir=tmp_path,
        sync_broker="broker.local:8883",
        sync_password_file=tmp_path / "pw",
        operator_public_key=tmp_path / "operator.pub",
    )
    address = broker_address(config)
    assert (address.host, address.port, address.username, address.password) == (
        "broker.local",
        8883,
        DEVICE,
        "s3cret",
    )
