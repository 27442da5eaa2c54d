"""``kill -9`` of the agent at random instants of an update: never a corrupt activation.

The update is stretched (the full artifact in 1 KiB chunks, one asked for at a time,
through a proxy adding 10 ms a hop) so that a kill delay drawn uniformly over its
duration lands anywhere: before the manifest, mid-download, while staging, at the
switch. After every kill the bytes in the model's active slot must hash to exactly one
of the two known versions, and after every restart the agent must serve that version and
answer exactly as it does (predictions computed here with ONNX Runtime). Whenever an
iteration finds version 2 active, the agent's state is wiped so the next iteration
interrupts a fresh update. The seed is recorded with the figures; the last restart must
converge on version 2.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeserve.client import OipHttpClient
from edgeserve.eval.fleet import FleetStack
from edgeserve.polling import wait_until
from edgeserve.testing.fault_proxy import FaultProxy
from tests.faults.conftest import Figures, Soak
from tests.faults.fleet import (
    FLEET_FAULT_MARKS,
    MODEL,
    Release,
    active_sha256,
    digits,
    expected_labels,
    online,
    packaged_release,
    start_reachable_fleet,
)

pytestmark = FLEET_FAULT_MARKS

NORMAL_ITERATIONS = 15
SEED_ENV = "EDGESERVE_FAULT_SEED"  # replay a run's kill instants
DEVICE = "dev-0"


@pytest.fixture
def slow_update_fleet(tmp_path: Path) -> Iterator[FleetStack]:
    """A fleet with one agent whose link to the broker adds latency to every hop."""
    stack = start_reachable_fleet(tmp_path, [], baseline=(), chunk_size="1024")
    with FaultProxy(stack.setup.host, stack.setup.port).run_in_thread() as proxy:
        proxy.delay(0.002)
        stack.agent_overrides = {
            "sync_broker": f"127.0.0.1:{proxy.port}",
            "sync_chunk_window": "1",
            "sync_chunk_timeout_s": "1",
            "telemetry": "false",
        }
        try:
            stack.start_agent(DEVICE)
            wait_until(lambda: online(stack) == 1, 30, "agent online")
            yield stack
        finally:
            stack.stop()


def test_kill_9_at_random_points_of_an_update_never_activates_corrupt_bytes(
    slow_update_fleet: FleetStack, v2: Release, figures: Figures, soak: Soak
) -> None:
    stack, agent = slow_update_fleet, slow_update_fleet.agents[DEVICE]
    state = stack.workdir / f"{DEVICE}-state"
    rows = digits(16)
    v1 = packaged_release()
    known = {v1.card.sha256: "1", v2.card.sha256: "2"}
    answers = {"1": expected_labels(v1, rows), "2": expected_labels(v2, rows)}
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(1 << 32))
    rng = random.Random(seed)
    figures.put("kill_seed", seed, "seed", "printed to replay a run")

    rollout = stack.push(v2.artifact, v2.card, canary=1, stages=[1.0])
    duration = update_duration(stack, state)  # one whole update, uninterrupted
    assert stack.wait_rollout(rollout, timeout=60)["state"] == "completed"
    corrupt, corrupt_on_disk, iterations, converged = 0, 0, 0, 0
    deadline = time.monotonic() + soak.seconds
    while iterations < NORMAL_ITERATIONS or (soak.enabled and time.monotonic() < deadline):
        # Not a wait for anything: the random instant of the kill is the experiment.
        time.sleep(rng.uniform(0.0, duration))
        agent.kill()
        iterations += 1
        version = known.get(active_sha256(state) or "")
        corrupt += version is None
        corrupt_on_disk += version is None
        if version == "2":
            converged += 1
            shutil.rmtree(state)  # back to the packaged version 1: interrupt a new update
        agent.start()
        corrupt += not answers_as(stack, rows, answers)
    wait_until(lambda: served(stack) == "2", 60, "convergence on version 2")
    figures.count("kill_iterations", iterations, "kill -9", ">= 15 (soak: hundreds)")
    figures.count("corrupt_activations", corrupt, "activations", "0")
    figures.count("updates_completed_between_kills", converged, "updates", "counted")
    figures.put("update_duration_s", duration, "s", "stretched to be hit mid-way")
    assert corrupt == 0, f"seed {seed}: {corrupt_on_disk} on disk, the rest in answers"
    assert known.get(active_sha256(state) or "") == "2"
    assert answers_as(stack, rows, answers)


def update_duration(stack: FleetStack, state: Path) -> float:
    """Seconds from a fresh agent being ready (its API up) until it serves version 2."""
    process = stack.agents[DEVICE]
    process.kill()
    shutil.rmtree(state)
    process.start()
    started = time.monotonic()
    wait_until(lambda: served(stack) == "2", 60, "the uninterrupted update")
    return time.monotonic() - started


def served(stack: FleetStack) -> str:
    with OipHttpClient(stack.agent_url(DEVICE)) as client:
        versions: list[str] = client.model_metadata(MODEL)["versions"]
    return versions[0]


def answers_as(stack: FleetStack, rows: object, answers: dict[str, list[str]]) -> bool:
    """Whether the agent serves a known version and answers exactly as that version."""
    import numpy as np

    with OipHttpClient(stack.agent_url(DEVICE)) as client:
        for _ in range(5):  # the resumed update may switch versions between two reads
            version = client.model_metadata(MODEL)["versions"][0]
            labels = [
                client.infer(MODEL, {"input": row[np.newaxis, :]}).parameters["prediction"][0]
                for row in rows  # type: ignore[attr-defined]
            ]
            if client.model_metadata(MODEL)["versions"][0] == version:
                break
    return version in answers and labels == answers[version]
