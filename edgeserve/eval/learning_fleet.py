"""One turn of the learning loop on a real fleet, from hard examples to a gated rollout.

A gateway serves the cloud model; a broker, the sync service and four agents that
escalate to the gateway run as real processes (``eval.fleet``), plus a fifth agent in
another group that queues its uncertain inputs as hard examples instead of escalating
(the collector). The loop: the collector sees the shifted stream and uploads its hard
examples; ``models.distill`` trains the new edge version from the sync registry;
``fleet push --gate sequential`` rolls it out while the four agents serve the shifted
stream; the sequential gate compares the canary with the devices still on the old
version and promotes (or halts) it without a human. The same push of a deliberately
worse version (shuffled labels) must stop at the canary.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cloud_gateway.tenancy import TenantStore
from edgeserve.client import OipError, OipHttpClient
from edgeserve.eval.fleet import BrokerKind, FleetStack, start_fleet
from edgeserve.polling import wait_until
from edgeserve.processes import ServiceProcess, gateway_process
from edgeserve.wire.model_card import ModelCard
from models.data import FloatArray
from sync.ingest import hard_examples
from sync.registry import Registry

SERVING = ["edge-0", "edge-1", "edge-2", "edge-3"]
COLLECTOR = "edge-hx"
MODEL = "digits-edge"
CLOUD = "digits-cloud"
# The stages every gated push here uses: one canary, half the group, all of it.
STAGES = {"group": "default", "canary": 1, "stages": [0.5, 1.0], "gate": "sequential"}


@dataclass
class LoopFleet:
    stack: FleetStack
    gateway: ServiceProcess

    def stop(self) -> dict[str, int]:
        codes = self.stack.stop()
        codes["gateway"] = self.gateway.stop()
        return codes

    def online(self) -> int:
        with self.stack.admin() as admin:
            return sum(1 for device in admin.devices() if device["online"])

    def registry(self) -> Registry:
        """A reader's own connection to the sync service's registry (SQLite WAL)."""
        return Registry(self.stack.sync_state / "registry.db")


@dataclass
class RolloutOutcome:
    state: str
    reason: str
    seconds: float
    requests: int  # sent to the serving agents while it ran
    failed: int  # of those, answered with an error
    counts: dict[str, int]
    stages: list[tuple[int, float]] = field(default_factory=list)  # (stage, seconds in)
    gate: dict[str, Any] = field(default_factory=dict)


def start_loop_fleet(workdir: Path, broker_kind: BrokerKind = "auto") -> LoopFleet:
    """The gateway, then the fleet: four escalating agents and the collector."""
    state = workdir / "gateway-state"
    state.mkdir(parents=True, exist_ok=True)
    with TenantStore(state / "tenants.db") as store:
        _, key = store.add_tenant(
            "fleet", [CLOUD], rate_per_s=10_000, burst=10_000, max_in_flight=512
        )
    gateway = gateway_process(workdir, state)
    gateway.start()
    try:
        cloud = {"cloud_target": f"127.0.0.1:{gateway.ports['grpc']}", "cloud_api_key": key}
        stack = start_fleet(workdir / "fleet", SERVING, broker_kind, agent_overrides=cloud)
    except BaseException:
        gateway.stop()
        raise
    try:
        stack.start_agent(COLLECTOR, routing_mode="hard_examples", group="collect")
    except BaseException:
        stack.stop()
        gateway.stop()
        raise
    fleet = LoopFleet(stack, gateway)
    try:
        # A rollout targets the devices the registry knows: all of them must have reported.
        wait_until(lambda: fleet.online() == len(SERVING) + 1, 60, "five agents online")
    except BaseException:
        fleet.stop()
        raise
    return fleet


def collect_hard_examples(fleet: LoopFleet, stream: FloatArray, timeout: float = 60.0) -> int:
    """Send ``stream`` to the collector; wait until the sync service holds every hard
    example it queued; how many that is."""
    queued = 0
    with OipHttpClient(fleet.stack.agent_url(COLLECTOR)) as client:
        for row in stream:
            answer = client.infer(MODEL, {"input": row[None, :]})
            queued += len(answer.parameters.get("hard_example_rows", []))

    def stored() -> bool:
        registry = fleet.registry()
        try:
            return len(hard_examples(registry, MODEL, "input").x) >= queued
        finally:
            registry.close()

    wait_until(stored, timeout, f"{queued} hard examples at the sync service")
    return queued


def gated_rollout(
    fleet: LoopFleet,
    artifact: Path,
    card: ModelCard,
    stream: FloatArray,
    timeout: float = 300.0,
    **gate: Any,
) -> RolloutOutcome:
    """Push ``card``'s version under the sequential gate while the serving agents answer
    ``stream`` (cycled), until the rollout ends."""
    started = time.monotonic()
    stages: list[tuple[int, float]] = []

    def on_view(view: dict[str, Any]) -> None:
        if not stages or stages[-1][0] != view["stage"]:
            stages.append((view["stage"], round(time.monotonic() - started, 2)))

    with _traffic(fleet.stack, stream) as (sent, failed):
        rollout_id = fleet.stack.push(artifact, card, **STAGES, **gate)
        view = fleet.stack.wait_rollout(rollout_id, timeout, on_view)
    return RolloutOutcome(
        state=view["state"],
        reason=view["reason"],
        seconds=round(time.monotonic() - started, 2),
        requests=sum(sent),
        failed=sum(failed),
        counts=view["counts"],
        stages=stages,
        gate=view.get("gate", {}),
    )


@contextmanager
def _traffic(stack: FleetStack, stream: FloatArray) -> Iterator[tuple[list[int], list[int]]]:
    """One thread per serving agent, each cycling its share of ``stream`` one row per
    request until the block ends; yields the per-agent counts of requests sent and of
    error answers (final at exit)."""
    stop = threading.Event()
    sent = [0] * len(SERVING)
    failed = [0] * len(SERVING)
    shares = np.array_split(stream, len(SERVING))

    def serve(index: int) -> None:
        rows = shares[index]
        with OipHttpClient(stack.agent_url(SERVING[index])) as client:
            while not stop.is_set():
                try:
                    client.infer(MODEL, {"input": rows[sent[index] % len(rows)][None, :]})
                except OipError:
                    # An answered error is the agent's to record (the gate counts it in
                    # telemetry); the stream goes on, as a user's would.
                    failed[index] += 1
                sent[index] += 1

    threads = [threading.Thread(target=serve, args=(i,), daemon=True) for i in range(len(SERVING))]
    for thread in threads:
        thread.start()
    try:
        yield sent, failed
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
