"""A client's MQTT identity is its username: naming itself after another client takes nothing.

An enrolled device holds a valid certificate and password, so it gets past the listener;
these tests play such a device connecting with another device's (or the sync service's)
client id, against the real Mosquitto and the embedded fallback. The victim must stay
connected and keep its persistent session.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edgeserve.broker import BrokerProcess, BrokerSetup, find_mosquitto, start_broker
from edgeserve.broker.embedded import BrokerKind
from edgeserve.wire import topics
from tests.sync.broker_client import BrokerClient
from tests.sync.conftest import SYNC_USER, ConnectClient


@pytest.fixture(params=["mosquitto", "embedded"])
def broker(request: pytest.FixtureRequest, broker_setup: BrokerSetup) -> Iterator[BrokerProcess]:
    kind: BrokerKind = request.param
    if kind == "mosquitto" and find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    (broker_setup.persistence_dir / "mosquitto.db").unlink(missing_ok=True)
    started = start_broker(broker_setup, kind=kind)
    try:
        yield started
    finally:
        broker_setup.detach(started)
        started.stop()


def _still_connected(victim: BrokerClient, topic: str) -> bool:
    # A PUBACK after the impostor's CONNACK proves the old connection survived: had the
    # broker closed it, the disconnect would reach the client before any later answer.
    victim.publish(topic, b"still here")
    return victim.disconnects_seen() == 0


def test_a_device_using_another_devices_client_id_does_not_cut_it_off(
    broker: BrokerProcess, connect_client: ConnectClient
) -> None:
    mqtt5 = broker.supports_mqtt5
    victim = connect_client("dev-1", client_id="dev-1", mqtt5=mqtt5)

    connect_client("dev-0", client_id="dev-1", mqtt5=mqtt5)

    assert _still_connected(victim, topics.status("dev-1"))


def test_a_device_using_the_sync_services_client_id_does_not_cut_it_off(
    broker: BrokerProcess, connect_client: ConnectClient
) -> None:
    mqtt5 = broker.supports_mqtt5
    sync = connect_client(SYNC_USER, client_id=SYNC_USER, mqtt5=mqtt5)

    connect_client("dev-0", client_id=SYNC_USER, mqtt5=mqtt5)

    assert _still_connected(sync, topics.desired("dev-0"))


def test_a_clean_session_under_another_devices_client_id_leaves_its_session(
    broker: BrokerProcess, connect_client: ConnectClient
) -> None:
    away = connect_client("dev-1", client_id="dev-1", mqtt5=False, clean_session=False)
    assert away.subscribe(topics.desired("dev-1"))[0].value == 1
    away.close()

    connect_client("dev-0", client_id="dev-1", mqtt5=False, clean_session=True).close()
    connect_client(SYNC_USER, mqtt5=False).publish(topics.desired("dev-1"), b"queued for dev-1")

    back = connect_client("dev-1", client_id="dev-1", mqtt5=False, clean_session=False)
    assert back.receive_until(topics.desired("dev-1"))[-1].payload == b"queued for dev-1"
