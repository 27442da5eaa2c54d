"""Fixtures for the MQTT sync tests: a broker setup per session, a real broker per test.

``broker_setup`` holds the dev PKI, users and config (devices ``dev-0`` .. ``dev-5`` and
the ``edgeserve-sync`` service user) on one free port; ``mosquitto`` runs the real
broker with it for one test and always stops it, even if the test killed or restarted
it. ``connect_client`` opens blocking test clients that are closed after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from edgeserve.broker import BrokerSetup, MosquittoProcess, find_mosquitto
from edgeserve.processes import free_port
from edgeserve.security.pki import ensure_dev_pki
from tests.sync.broker_client import BrokerClient

DEVICES = [f"dev-{index}" for index in range(6)]
SYNC_USER = "edgeserve-sync"

ConnectClient = Callable[..., BrokerClient]


@pytest.fixture(scope="session")
def broker_setup(tmp_path_factory: pytest.TempPathFactory) -> BrokerSetup:
    root = tmp_path_factory.mktemp("broker")
    pki = ensure_dev_pki(root / "pki", devices=DEVICES)
    return BrokerSetup.create(root / "broker", pki, free_port(), DEVICES, [SYNC_USER])


@pytest.fixture
def mosquitto(broker_setup: BrokerSetup) -> Iterator[MosquittoProcess]:
    """A running Mosquitto for this test, with nothing retained from earlier tests."""
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    (broker_setup.persistence_dir / "mosquitto.db").unlink(missing_ok=True)
    broker = MosquittoProcess(broker_setup)
    broker_setup.attach(broker)
    try:
        yield broker.start()
    finally:
        broker_setup.detach(broker)
        broker.stop()


@pytest.fixture
def connect_client(broker_setup: BrokerSetup) -> Iterator[ConnectClient]:
    """``connect_client(username, **kwargs)``: a connected ``BrokerClient`` for that user."""
    clients: list[BrokerClient] = []

    def connect(username: str, **kwargs: Any) -> BrokerClient:
        client = BrokerClient(broker_setup.address(username), **kwargs)
        clients.append(client)
        connected, reason = client.connect()
        assert connected, f"{username} could not connect: {reason}"
        return client

    yield connect
    for client in clients:
        client.close()
