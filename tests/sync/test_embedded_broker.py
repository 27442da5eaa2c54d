"""The embedded amqtt fallback enforces the same logins and ACL as Mosquitto (MQTT 3.1.1)."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from dataclasses import replace

import pytest

from edgeserve.broker import BrokerFailed, BrokerSetup, EmbeddedBroker, probe, start_broker
from edgeserve.wire import topics
from tests.sync.broker_client import BrokerClient
from tests.sync.conftest import SYNC_USER, ConnectClient


@pytest.fixture
def embedded(
    broker_setup: BrokerSetup, caplog: pytest.LogCaptureFixture
) -> Iterator[EmbeddedBroker]:
    with caplog.at_level(logging.WARNING, logger="edgeserve.broker"):
        broker = start_broker(broker_setup, kind="embedded")
    assert isinstance(broker, EmbeddedBroker)
    assert "fallback" in caplog.text
    try:
        yield broker
    finally:
        broker_setup.detach(broker)
        broker.stop()


@pytest.fixture
def connect311(connect_client: ConnectClient) -> ConnectClient:
    def connect(username: str, **kwargs: object) -> BrokerClient:
        return connect_client(username, mqtt5=False, **kwargs)

    return connect


def test_embedded_broker_says_it_is_a_fallback(embedded: EmbeddedBroker) -> None:
    assert "FALLBACK: embedded amqtt broker" in embedded.log_tail(100_000)
    assert not embedded.supports_mqtt5


def test_embedded_broker_refuses_a_wrong_password(
    embedded: EmbeddedBroker, broker_setup: BrokerSetup
) -> None:
    address = replace(broker_setup.address("dev-0"), password="nope")

    with pytest.raises(BrokerFailed):
        probe(address)


def test_embedded_broker_requires_a_client_certificate(
    embedded: EmbeddedBroker, broker_setup: BrokerSetup
) -> None:
    address = replace(broker_setup.address("dev-0"), cert=None, key=None)

    with pytest.raises((ssl.SSLError, OSError, BrokerFailed)):
        probe(address)


def test_embedded_device_cannot_publish_under_another_device(
    embedded: EmbeddedBroker, connect311: ConnectClient
) -> None:
    fleet = connect311(SYNC_USER)
    fleet.subscribe(f"{topics.ROOT}/devices/+/status")
    connect311("dev-0").publish(topics.status("dev-1"), b"forged")
    connect311("dev-1").publish(topics.status("dev-1"), b"marker")

    assert [m.payload for m in fleet.receive_until(topics.status("dev-1"))] == [b"marker"]


def test_embedded_device_cannot_subscribe_to_another_devices_desired(
    embedded: EmbeddedBroker, connect311: ConnectClient
) -> None:
    [code] = connect311("dev-0").subscribe(topics.desired("dev-1"))

    assert code.is_failure


def test_embedded_refuses_a_last_will_on_another_devices_topic(
    embedded: EmbeddedBroker, broker_setup: BrokerSetup
) -> None:
    liar = BrokerClient(
        broker_setup.address("dev-0"), mqtt5=False, will=(topics.status("dev-1"), b"x")
    )
    try:
        connected, _ = liar.connect()
    finally:
        liar.close()

    assert not connected


def test_embedded_device_and_sync_user_exchange_on_allowed_topics(
    embedded: EmbeddedBroker, connect311: ConnectClient
) -> None:
    fleet = connect311(SYNC_USER)
    fleet.subscribe(f"{topics.ROOT}/devices/+/telemetry")
    device = connect311("dev-2")
    for topic_filter in topics.device_subscriptions("dev-2"):
        assert not any(code.is_failure for code in device.subscribe(topic_filter))

    device.publish(topics.telemetry("dev-2"), b"batch")
    fleet.publish(topics.chunk("dev-2", "ab12cd34", 0), b"\x01" * 65536)

    assert fleet.receive_until(topics.telemetry("dev-2"))[-1].payload == b"batch"
    assert len(device.receive_until(topics.chunk("dev-2", "ab12cd34", 0))[-1].payload) == 65536


def test_embedded_broker_reloads_passwords_for_an_enrolled_device(
    embedded: EmbeddedBroker, broker_setup: BrokerSetup
) -> None:
    broker_setup.add_device("dev-embedded")

    assert probe(broker_setup.address("dev-embedded")) == 0
