"""After a broker restart, MQTT links come back at spread-out times, not in step."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from edgeserve.broker import BrokerSetup, MosquittoProcess
from edgeserve.mqtt import Backoff, MqttLink
from tests.sync.conftest import DEVICES

pytestmark = pytest.mark.integration


async def _reconnect_times(
    setup: BrokerSetup, broker: MosquittoProcess, backoff: Backoff
) -> list[float]:
    """When each of six links (one per device) reconnected after one broker restart."""
    reconnected: dict[str, float] = {}
    all_back = asyncio.Event()
    links = [
        MqttLink(setup.address(device), device, [], rng=random.Random(index), backoff=backoff)
        for index, device in enumerate(DEVICES)
    ]

    def record(link: MqttLink) -> None:
        if link.stats.connects >= 2:  # the first connect is the one before the restart
            reconnected.setdefault(link.client_id, time.monotonic())
            if len(reconnected) == len(links):
                all_back.set()

    for link in links:
        link.on_connect = lambda link=link: record(link)
        link.start()
    try:
        await asyncio.gather(*(link.wait_connected(20) for link in links))
        broker.stop()
        broker.start()
        await asyncio.wait_for(all_back.wait(), 60)
    finally:
        for link in links:
            await link.stop()
    return sorted(reconnected.values())


def test_links_reconnect_spread_out_after_a_broker_restart(
    broker_setup: BrokerSetup, mosquitto: MosquittoProcess
) -> None:
    times = asyncio.run(_reconnect_times(broker_setup, mosquitto, Backoff()))
    # with paho's own fixed backoff all six come back within a few ms of each other
    assert times[-1] - times[0] > 0.3, [round(t - times[0], 3) for t in times]
