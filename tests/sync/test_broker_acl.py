"""The real Mosquitto with our generated config: who may log in, publish and subscribe.

Negative checks never wait out a timeout: after a forbidden publish, an allowed marker
message follows on the same path, and the broker (one thread, in-order delivery per
connection) must deliver the marker without the forbidden message before it.
"""

from __future__ import annotations

import ssl
from dataclasses import replace

import pytest

from edgeserve.broker import BrokerFailed, BrokerSetup, MosquittoProcess, probe
from edgeserve.wire import topics
from tests.sync.broker_client import BrokerClient
from tests.sync.conftest import SYNC_USER, ConnectClient

UPDATE_ID = "0123456789abcdef"


def test_device_cannot_publish_under_another_devices_topics(
    mosquitto: MosquittoProcess, connect_client: ConnectClient
) -> None:
    fleet = connect_client(SYNC_USER)
    fleet.subscribe(f"{topics.ROOT}/devices/dev-1/#")
    intruder, victim = connect_client("dev-0"), connect_client("dev-1")
    for topic in (topics.status("dev-1"), topics.telemetry("dev-1"), topics.desired("dev-1")):
        intruder.publish(topic, b"forged")
    victim.publish(topics.status("dev-1"), b"marker")

    seen = fleet.receive_until(topics.status("dev-1"))

    assert [(m.topic, m.payload) for m in seen] == [(topics.status("dev-1"), b"marker")]


def test_device_cannot_publish_to_its_own_desired_state(
    mosquitto: MosquittoProcess, connect_client: ConnectClient
) -> None:
    fleet = connect_client(SYNC_USER)
    fleet.subscribe(f"{topics.ROOT}/devices/dev-0/#")
    device = connect_client("dev-0")
    device.publish(topics.desired("dev-0"), b"self-promotion")
    device.publish(topics.status("dev-0"), b"marker")

    seen = fleet.receive_until(topics.status("dev-0"))

    assert [m.payload for m in seen] == [b"marker"]


def test_device_cannot_subscribe_to_another_devices_desired_state(
    mosquitto: MosquittoProcess, connect_client: ConnectClient
) -> None:
    fleet = connect_client(SYNC_USER)
    fleet.publish(topics.desired("dev-1"), b"secret plan", retain=True)
    snoop = connect_client("dev-0")

    # Mosquitto 2.0 grants the SUBACK and applies the read ACL to every delivery (the
    # embedded broker refuses the SUBACK instead); either way nothing may arrive.
    snoop.subscribe(topics.desired("dev-1"))
    snoop.subscribe(topics.desired("dev-0"))
    fleet.publish(topics.desired("dev-1"), b"secret plan 2")
    fleet.publish(topics.desired("dev-0"), b"marker")
    seen = snoop.receive_until(topics.desired("dev-0"))

    assert [m.payload for m in seen] == [b"marker"]


@pytest.mark.parametrize(
    "topic_filter",
    [f"{topics.ROOT}/devices/+/desired", f"{topics.ROOT}/#", "#"],
    ids=["wildcard-device", "whole-tree", "everything"],
)
def test_device_wildcard_subscription_reaches_no_other_device(
    mosquitto: MosquittoProcess, connect_client: ConnectClient, topic_filter: str
) -> None:
    fleet = connect_client(SYNC_USER)
    snoop = connect_client("dev-0")
    snoop.subscribe(topic_filter)
    snoop.subscribe(topics.desired("dev-0"))
    fleet.publish(topics.desired("dev-1"), b"not yours")
    fleet.publish(topics.desired("dev-0"), b"marker")

    seen = snoop.receive_until(topics.desired("dev-0"))

    assert all(m.topic == topics.desired("dev-0") for m in seen)


def test_wrong_password_is_refused(mosquitto: MosquittoProcess, broker_setup: BrokerSetup) -> None:
    address = replace(broker_setup.address("dev-0"), password="not-the-password")
    client = BrokerClient(address)
    try:
        connected, reason = client.connect()
    finally:
        client.close()

    assert not connected, reason
    assert probe(address) == 5  # MQTT 3.1.1: not authorised


def test_another_devices_password_is_refused(
    mosquitto: MosquittoProcess, broker_setup: BrokerSetup
) -> None:
    other = broker_setup.credentials("dev-1").password
    address = replace(broker_setup.address("dev-0"), password=other)

    assert probe(address) == 5


def test_client_without_certificate_is_refused(
    mosquitto: MosquittoProcess, broker_setup: BrokerSetup
) -> None:
    address = replace(broker_setup.address("dev-0"), cert=None, key=None)

    with pytest.raises((ssl.SSLError, OSError, BrokerFailed)):
        probe(address)


def test_sync_user_reads_every_device_and_writes_desired_chunk_and_ack(
    mosquitto: MosquittoProcess, connect_client: ConnectClient
) -> None:
    fleet = connect_client(SYNC_USER)
    assert not any(code.is_failure for code in _subscribe_fleet(fleet))
    devices = {name: connect_client(name) for name in ("dev-2", "dev-3")}
    for name, device in devices.items():
        assert not any(
            code.is_failure
            for c in topics.device_subscriptions(name)
            for code in device.subscribe(c)
        )
        device.publish(topics.telemetry(name), name.encode())
    for name in devices:
        assert fleet.receive_until(topics.telemetry(name))[-1].payload == name.encode()

    device = devices["dev-2"]
    fleet.publish(topics.desired("dev-2"), b"desired")
    fleet.publish(topics.chunk("dev-2", UPDATE_ID, 7), b"\x00" * 64 * 1024)
    fleet.publish(topics.telemetry_ack("dev-2"), b"ack")

    seen = device.receive_until(topics.telemetry_ack("dev-2"))
    assert [m.topic for m in seen] == [
        topics.desired("dev-2"),
        topics.chunk("dev-2", UPDATE_ID, 7),
        topics.telemetry_ack("dev-2"),
    ]
    assert len(seen[1].payload) == 64 * 1024


def test_device_publishes_its_own_reports_and_reads_its_own_desired(
    mosquitto: MosquittoProcess, connect_client: ConnectClient
) -> None:
    fleet = connect_client(SYNC_USER)
    _subscribe_fleet(fleet)
    fleet.publish(topics.desired("dev-4"), b"run v2", retain=True)
    device = connect_client("dev-4")
    own = [
        topics.status("dev-4"),
        topics.reported("dev-4"),
        topics.update_request("dev-4", UPDATE_ID),
        topics.update_result("dev-4"),
        topics.telemetry("dev-4"),
    ]

    [code] = device.subscribe(topics.desired("dev-4"))
    for topic in own:
        device.publish(topic, topic.encode())

    assert not code.is_failure
    assert device.receive_until(topics.desired("dev-4"))[-1].payload == b"run v2"
    assert [m.topic for m in fleet.receive_until(own[-1])] == own


def test_last_will_on_another_devices_topic_never_fires(
    mosquitto: MosquittoProcess, connect_client: ConnectClient, broker_setup: BrokerSetup
) -> None:
    fleet = connect_client(SYNC_USER)
    fleet.subscribe(f"{topics.ROOT}/devices/+/status")
    liar = connect_client("dev-0", will=(topics.status("dev-1"), b"dev-1 offline"))
    honest = connect_client("dev-2", will=(topics.status("dev-2"), b"dev-2 offline"))

    liar.disconnect_with_will()
    honest.disconnect_with_will()
    seen = fleet.receive_until(topics.status("dev-2"))

    assert [m.payload for m in seen] == [b"dev-2 offline"]


def test_packet_over_the_size_limit_disconnects_the_sender(
    mosquitto: MosquittoProcess, connect_client: ConnectClient
) -> None:
    device = connect_client("dev-5")
    device.client.publish(topics.telemetry("dev-5"), b"\x00" * (2 * 1024 * 1024), qos=1)

    # wait_disconnected times out (and fails the test) if the broker keeps the client
    reason = device.wait_disconnected()
    assert reason != "Success", "the client left on its own; the broker did not cut it off"


def test_enrolled_device_logs_in_once_the_broker_reloads(
    mosquitto: MosquittoProcess, broker_setup: BrokerSetup, connect_client: ConnectClient
) -> None:
    credentials = broker_setup.add_device("dev-late")

    client = connect_client("dev-late")

    assert credentials.username == "dev-late"
    [code] = client.subscribe(topics.desired("dev-late"))
    assert not code.is_failure


def test_retained_desired_state_survives_a_restart_on_the_same_port(
    mosquitto: MosquittoProcess, broker_setup: BrokerSetup, connect_client: ConnectClient
) -> None:
    connect_client(SYNC_USER).publish(topics.desired("dev-3"), b"keep me", retain=True)
    mosquitto.stop()
    mosquitto.start()

    device = connect_client("dev-3")
    device.subscribe(topics.desired("dev-3"))

    assert device.receive_until(topics.desired("dev-3"))[-1].payload == b"keep me"


def test_broker_starts_again_after_sigkill(
    mosquitto: MosquittoProcess, broker_setup: BrokerSetup
) -> None:
    mosquitto.kill()
    assert not mosquitto.running

    mosquitto.start()

    assert probe(broker_setup.address("dev-0")) == 0


def _subscribe_fleet(fleet: BrokerClient) -> list:
    return [code for topic in topics.FLEET_SUBSCRIPTIONS for code in fleet.subscribe(topic)]
