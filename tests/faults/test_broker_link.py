"""The agent ↔ broker wire under faults: updates complete, telemetry arrives exactly once.

Two faults on the MQTT side, both with the real Mosquitto and the real sync service:

- a flapping link: the agent lives in a network namespace whose veth link goes down and
  up over and over while it answers requests and a rollout runs;
- a broker restart storm: Mosquitto is killed with SIGKILL and restarted on its port
  (with its persistence) several times in a row while agents answer requests and a
  rollout runs.

Telemetry is checked by counting: the test knows how many requests each agent answered
(each answer is one record), and compares with the request records the sync service
stored (admin API). Lost = sent - stored, duplicated = stored - sent; both must be 0.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeserve.client import OipHttpClient
from edgeserve.eval.fleet import FleetStack
from edgeserve.polling import wait_until
from edgeserve.testing.netns import NetNamespace
from tests.faults.conftest import Figures, Soak
from tests.faults.fleet import (
    FLEET_FAULT_MARKS,
    Release,
    agent_socket,
    digits,
    fleet_dropped,
    fleet_requests,
    namespaced_agent,
    online,
    send,
    start_reachable_fleet,
    unix_client,
)

pytestmark = FLEET_FAULT_MARKS

ROWS = digits(32)
SEED = 20240611
KILLS_PER_STORM = 4


@pytest.fixture
def fleets() -> Iterator[list[FleetStack]]:
    started: list[FleetStack] = []
    yield started
    for stack in started:
        stack.stop()


class Traffic:
    """Requests sent to agents from a thread until stopped; counts what was answered."""

    def __init__(self, clients: list[OipHttpClient]) -> None:
        self.clients = clients
        self.answered = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            for client in self.clients:
                try:
                    self.answered += len(send(client, ROWS[self.answered % 32 :][:4]))
                except OSError:
                    self.failed += 1


def check_telemetry(stack: FleetStack, sent: int, figures: Figures) -> None:
    """Wait for every record to be stored, then record lost/duplicated and assert 0."""
    wait_until(lambda: fleet_requests(stack) >= sent, 90, f"{sent} request records stored")
    stored = fleet_requests(stack)
    figures.count("telemetry_lost", max(0, sent - stored), "records", "0")
    figures.count("telemetry_duplicated", max(0, stored - sent), "records", "0")
    figures.count("telemetry_records_checked", sent, "records", "all stored once")
    assert stored == sent
    assert fleet_dropped(stack) == 0


def test_a_flapping_link_to_the_broker_loses_no_telemetry_and_the_update_completes(
    fleets: list[FleetStack],
    netns: NetNamespace,
    tmp_path: Path,
    v2: Release,
    figures: Figures,
    soak: Soak,
) -> None:
    # No base registered: the full artifact goes out in 1 KiB chunks asked for one at a
    # time, so the transfer spans several cuts of the link.
    stack = start_reachable_fleet(
        tmp_path, [], extra_ips=[netns.host_ip], baseline=(), chunk_size="1024"
    )
    fleets.append(stack)
    namespaced_agent(stack, "dev-0", netns, sync_chunk_window="1", sync_chunk_timeout_s="2")
    stack.agents["dev-0"].start()
    wait_until(lambda: online(stack) == 1, 30, "the namespaced agent online")
    flapping_s = soak.seconds if soak.enabled else 6.0
    stop_flapping = threading.Event()
    with unix_client(agent_socket(tmp_path, "dev-0")) as client:
        with Traffic([client]) as traffic:
            netns.flap(0.7, until=stop_flapping)
            started = time.monotonic()
            rollout = stack.push(v2.artifact, v2.card, canary=1, stages=[1.0])
            view = stack.wait_rollout(rollout, timeout=120)
            # the fault's duration (the rollout may finish first), not a synchronization
            stop_flapping.wait(max(0.0, flapping_s - (time.monotonic() - started)))
            stop_flapping.set()
        served = client.model_metadata("digits-edge")["versions"][0]
    figures.count("link_flaps", netns.partitions, "link downs", "survived")
    assert view["state"] == "completed", view
    assert served == "2"
    assert traffic.failed == 0
    check_telemetry(stack, traffic.answered, figures)


def test_a_broker_restart_storm_loses_no_telemetry_and_the_update_completes(
    fleets: list[FleetStack], tmp_path: Path, v2: Release, figures: Figures, soak: Soak
) -> None:
    stack = start_reachable_fleet(
        tmp_path,
        ["dev-0", "dev-1"],
        baseline=(),  # no base to delta against: the full artifact, in 1 KiB chunks
        agent_overrides={"sync_chunk_window": "1", "sync_chunk_timeout_s": "2"},
        chunk_size="1024",
    )
    fleets.append(stack)
    wait_until(lambda: online(stack) == 2, 30, "agents online")
    rng = random.Random(SEED)
    storms = max(1, int(soak.seconds // 20)) if soak.enabled else 1
    restarts = 0
    clients = [OipHttpClient(stack.agent_url(d)) for d in stack.agents]
    try:
        with Traffic(clients) as traffic:
            restarts += storm(stack, rng, kills=1)
            # pushed between two kills: the desired state goes out through a shaky broker
            rollout = stack.push(v2.artifact, v2.card, canary=1, stages=[1.0])
            for _ in range(storms):
                restarts += storm(stack, rng, kills=KILLS_PER_STORM)
            view = stack.wait_rollout(rollout, timeout=120)
        figures.count("broker_restarts", restarts, "kill -9 + restart", "survived")
        assert view["state"] == "completed", view
        assert traffic.failed == 0
        assert [c.model_metadata("digits-edge")["versions"][0] for c in clients] == ["2", "2"]
    finally:
        for client in clients:
            client.close()
    check_telemetry(stack, traffic.answered, figures)


def storm(stack: FleetStack, rng: random.Random, kills: int) -> int:
    """Kill -9 and restart the broker ``kills`` times, a random 0.2 to 1 s apart."""
    for _ in range(kills):
        time.sleep(rng.uniform(0.2, 1.0))  # the storm's rhythm, not a wait for anything
        stack.broker.kill()
        stack.broker.start()
    return kills
