"""A real agent process on a real Mosquitto: presence, reported state, telemetry home.

The test plays the sync service with a plain MQTT client logged in as ``edgeserve-sync``:
it watches the agent's retained status and reported state, kills the agent with SIGKILL
to see the broker's last will mark it offline, and acknowledges a telemetry batch to see
the agent delete exactly those rows from its outbox.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edgeserve.broker import BrokerSetup
from edgeserve.client import OipHttpClient
from edgeserve.polling import wait_until
from edgeserve.processes import ServiceProcess, agent_process
from edgeserve.security.signing import PUBLIC_NAME, ensure_operator_key
from edgeserve.wire import topics
from edgeserve.wire.sync_messages import DeviceStatus, ReportedState, TelemetryAck
from edgeserve.wire.telemetry import RequestRecord, TelemetryBatch, decode_batch
from tests.sync.broker_client import BrokerClient, Received
from tests.sync.conftest import SYNC_USER

pytestmark = pytest.mark.integration

DEVICE = "dev-0"


def sync_settings(setup: BrokerSetup, operator_dir: Path, device: str) -> dict[str, str]:
    """The agent settings (``EDGESERVE_AGENT_*``) that connect it to the test broker."""
    ensure_operator_key(operator_dir)
    address = setup.address(device)
    settings = {
        "device_id": device,
        "sync_broker": f"{address.host}:{address.port}",
        "sync_password": address.password or "",
        "sync_ca": str(address.ca),
        "operator_public_key": str(operator_dir / PUBLIC_NAME),
        "telemetry_interval_s": "0.2",
        "group": "lab",
        "labels": json.dumps({"site": "test"}),
    }
    if address.cert is not None and address.key is not None:
        settings |= {"sync_cert": str(address.cert), "sync_key": str(address.key)}
    return settings


@pytest.fixture
def agent(tmp_path: Path, broker_setup: BrokerSetup, mosquitto) -> Iterator[ServiceProcess]:
    process = agent_process(
        tmp_path, **sync_settings(broker_setup, tmp_path / "operator", DEVICE), cache_entries="0"
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture
def fleet(connect_client) -> BrokerClient:
    """The test's stand-in for the sync service, subscribed to the device's whole subtree."""
    client: BrokerClient = connect_client(SYNC_USER)
    client.subscribe(f"{topics.device_root(DEVICE)}/#")
    return client


def next_matching(
    client: BrokerClient, topic: str, accept: Callable[[Received], bool], timeout: float = 15.0
) -> Received:
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"nothing acceptable on {topic} within {timeout:.0f}s"
        message = client.receive_until(topic, timeout=remaining)[-1]
        if accept(message):
            return message


def status_is(online: bool) -> Callable[[Received], bool]:
    return lambda m: DeviceStatus.model_validate_json(m.payload).online is online


def test_an_agent_announces_itself_and_its_last_will_marks_it_offline(agent, fleet, connect_client):
    next_matching(fleet, topics.status(DEVICE), status_is(True))
    reported = ReportedState.model_validate_json(
        next_matching(fleet, topics.reported(DEVICE), lambda m: True).payload
    )
    assert reported.models["digits-edge"].version == "1"
    assert (reported.group, reported.labels) == ("lab", {"site": "test"})

    agent.kill()
    next_matching(fleet, topics.status(DEVICE), status_is(False))
    latecomer: BrokerClient = connect_client(SYNC_USER)
    latecomer.subscribe(topics.status(DEVICE))
    retained = latecomer.receive_until(topics.status(DEVICE))[-1]
    assert retained.retain and status_is(False)(retained)


def test_a_graceful_stop_says_offline_itself(agent, fleet):
    next_matching(fleet, topics.status(DEVICE), status_is(True))
    assert agent.stop() == 0
    next_matching(fleet, topics.status(DEVICE), status_is(False), timeout=5)


def test_request_telemetry_goes_home_and_acked_rows_leave_the_outbox(agent, fleet, tmp_path):
    with OipHttpClient(f"http://127.0.0.1:{agent.port}") as client:
        for row in np.random.default_rng(1).random((5, 1, 64), dtype=np.float32):
            client.infer("digits-edge", {"input": row})
        assert client.metric("edgeserve_agent_sync_broker_connected") == 1

    def has_requests(message: Received) -> bool:
        batch = decode_batch(message.payload)
        return sum(r.kind == "request" for r in batch.records) >= 5

    batch: TelemetryBatch = decode_batch(
        next_matching(fleet, topics.telemetry(DEVICE), has_requests).payload
    )
    records = [RequestRecord.model_validate(r.data) for r in batch.records if r.kind == "request"]
    assert len(records) >= 5
    assert {(r.model, r.version, r.rows, r.error) for r in records} == {
        ("digits-edge", "1", 1, None)
    }
    assert batch.device_id == DEVICE and batch.from_seq == 0

    fleet.publish(topics.telemetry_ack(DEVICE), TelemetryAck(acked_seq=batch.to_seq).to_bytes())
    outbox = tmp_path / "agent-state" / "outbox.db"
    wait_until(lambda: rows_through(outbox, batch.to_seq) == 0, 10.0, "the acked rows to go")


def rows_through(path: Path, seq: int) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT COUNT(*) FROM records WHERE seq <= ?", (seq,)).fetchone()[0])
