"""The sync service as a real process against a real Mosquitto: MQTT side and admin API."""

from __future__ import annotations

import hashlib
import queue
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from edgeserve.broker import BrokerSetup, MosquittoProcess
from edgeserve.eval.fleet import start_sync
from edgeserve.processes import ServiceProcess
from edgeserve.wire import topics
from edgeserve.wire.errors import Unauthenticated
from edgeserve.wire.sync_messages import ChunkRequest, DesiredState
from sync.admin_client import AdminClient, card_for_upload
from tests.sync.conftest import ConnectClient
from tests.unit.sync_setup import MODEL, build_fleet

pytestmark = pytest.mark.integration
DEVICE = "dev-0"


@dataclass
class RunningSync:
    process: ServiceProcess
    state_dir: Path
    update_id: str
    revision: int
    payload: bytes
    chunk_size: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.process.ports['admin']}"

    @property
    def token(self) -> str:
        return (self.state_dir / "admin.token").read_text().strip()


@pytest.fixture
def sync(
    tmp_path: Path, broker_setup: BrokerSetup, mosquitto: MosquittoProcess
) -> Iterator[RunningSync]:
    """A sync service whose registry already holds an update issued to ``dev-0``."""
    state_dir = tmp_path / "sync-state"
    fleet = build_fleet(state_dir)
    fleet.report(DEVICE)
    issued = fleet.issuer.issue(DEVICE, MODEL, "2")
    payload = fleet.store.read_payload(issued.spec.sha256)
    fleet.registry.close()
    process = start_sync(tmp_path, broker_setup, True, {"log_format": "text"})
    try:
        yield RunningSync(
            process,
            state_dir,
            issued.spec.update_id,
            issued.state.revision,
            payload,
            issued.spec.chunk_size,
        )
    finally:
        process.stop()


def test_desired_state_is_republished_retained_on_connect(
    sync: RunningSync, connect_client: ConnectClient
) -> None:
    device = connect_client(DEVICE)
    device.subscribe(topics.desired(DEVICE))
    received = device.receive_until(topics.desired(DEVICE), timeout=20)[-1]
    state = DesiredState.model_validate_json(received.payload)
    assert state.revision == sync.revision and MODEL in state.models


def test_chunk_request_from_the_device_is_answered(
    sync: RunningSync, connect_client: ConnectClient
) -> None:
    device = connect_client(DEVICE)
    device.subscribe(topics.chunk_filter(DEVICE))
    request = ChunkRequest(model=MODEL, version="2", missing=[1])
    # The service may still be connecting: ask again until the chunk arrives.
    for _ in range(20):
        device.publish(topics.update_request(DEVICE, sync.update_id), request.to_bytes())
        try:
            message = device.receive_until(topics.chunk(DEVICE, sync.update_id, 1), timeout=1)[-1]
            break
        except queue.Empty:  # not answered within a second
            continue
    else:
        pytest.fail("the sync service never answered the chunk request")
    size = sync.chunk_size
    assert message.payload == sync.payload[size : 2 * size]


def test_admin_api_requires_the_token(sync: RunningSync) -> None:
    assert httpx.get(f"{sync.url}/v1/health").status_code == 200
    assert httpx.get(f"{sync.url}/v1/devices").status_code == 401
    with AdminClient(sync.url, "esa_wrong") as client, pytest.raises(Unauthenticated):
        client.devices()
    with AdminClient(sync.url, sync.token) as client:
        assert [d["device_id"] for d in client.devices()] == [DEVICE]


def test_pushed_version_rolls_out_to_the_device_desired_topic(
    sync: RunningSync, connect_client: ConnectClient, tmp_path: Path
) -> None:
    artifact = tmp_path / "digits-edge-v3.onnx"
    artifact.write_bytes(_v3_bytes())
    card = card_for_upload(artifact, MODEL, "3", _card_path())
    uploaded: list[int] = []
    with AdminClient(sync.url, sync.token) as client:
        body = client.upload(artifact, card, uploaded.append)
        assert body["sha256"] == hashlib.sha256(artifact.read_bytes()).hexdigest()
        assert sum(uploaded) == artifact.stat().st_size
        view = client.start_rollout({"model": MODEL, "version": "3", "canary": 1})
    assert [d["device_id"] for d in view["devices"]] == [DEVICE]
    device = connect_client(DEVICE)
    device.subscribe(topics.desired(DEVICE))
    for _ in range(3):
        received = device.receive_until(topics.desired(DEVICE), timeout=20)[-1]
        state = DesiredState.model_validate_json(received.payload)
        if state.revision > sync.revision:
            break
    assert state.revision > sync.revision


def test_sigterm_stops_the_service_with_exit_code_0(sync: RunningSync) -> None:
    assert sync.process.stop() == 0


def _card_path() -> Path:
    from edgeserve.artifacts import packaged_artifacts

    return packaged_artifacts() / f"{MODEL}.card.json"


def _v3_bytes() -> bytes:
    from edgeserve.artifacts import packaged_artifacts
    from tests.unit.sync_setup import fine_tuned

    return fine_tuned(fine_tuned((packaged_artifacts() / f"{MODEL}.onnx").read_bytes()))
