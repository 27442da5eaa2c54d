"""The agent → gateway wire under faults: every request answered within its budget.

The agent escalates every request (threshold 1.0) to a real gateway over mutual TLS.
When the link is cut (a network namespace whose veth goes down) or misbehaves (a TCP
proxy that delays, stalls, resets, blackholes or loses connections), each request must
still be answered — locally, marked ``degraded`` — within its latency budget, and none
may fail; once the link is back the breaker closes and answers come from the cloud again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edgeserve.client import OipError, OipHttpClient
from edgeserve.eval.stack import DEVICE_ID, CascadeStack, enroll, start_cascade
from edgeserve.polling import wait_until
from edgeserve.processes import ServiceProcess, agent_process, gateway_process
from edgeserve.testing.fault_proxy import Fault, FaultProxy
from edgeserve.testing.netns import NetNamespace
from tests.faults.conftest import Figures
from tests.faults.fleet import MODEL, digits, unix_client

pytestmark = [pytest.mark.faults, pytest.mark.integration]

ESCALATE_ALL = {"score": "max_probability", "threshold": 1.0, "escalation_model": "digits-cloud"}
BUDGET_MS = 150.0
# What the agent may add to a budget on a busy 2-core machine: its own work and the
# scheduling of the test's client, not any waiting on the cloud.
SLACK_S = 0.25


@dataclass
class Outcomes:
    """What a stream of requests got back: answers' parameters, latencies, failures."""

    answers: list[dict[str, Any]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def degraded(self) -> int:
        return sum(1 for a in self.answers if a.get("degraded"))

    @property
    def cloud(self) -> int:
        return sum(1 for a in self.answers if a.get("tier") == "cloud")

    def record(self, figures: Figures, fault: str) -> None:
        figures.count("requests_failed", len(self.failures), "requests", "0")
        figures.count("requests_degraded", self.degraded, "requests", "counted (local answers)")
        figures.count(f"degraded_{fault}", self.degraded, "requests", "counted")
        if self.seconds:
            figures.put(
                f"max_latency_ms_{fault}",
                max(self.seconds) * 1e3,
                "ms",
                f"<= budget {BUDGET_MS:.0f} + {SLACK_S * 1e3:.0f}",
            )


def ask(client: OipHttpClient, outcomes: Outcomes, row_index: int) -> None:
    row = ROWS[row_index % len(ROWS)]
    started = time.monotonic()
    try:
        answer = client.infer(
            MODEL, {"input": row[None, :]}, parameters={"timeout": BUDGET_MS * 1000}
        )
    except (OipError, OSError) as exc:
        outcomes.failures.append(repr(exc))
        return
    outcomes.seconds.append(time.monotonic() - started)
    outcomes.answers.append(answer.parameters)


ROWS = digits(64)


# -- a partition (network namespace) -----------------------------------------------------


@pytest.fixture
def namespaced_cascade(tmp_path: Path, netns: NetNamespace) -> Iterator[ServiceProcess]:
    """A gateway listening on all interfaces and an agent inside ``netns`` escalating to it."""
    state = tmp_path / "gateway-state"
    _, tls = enroll(state)
    gateway = gateway_process(tmp_path, state, host="0.0.0.0")
    gateway.start()
    agent = agent_process(
        tmp_path,
        **tls,
        cloud_target=f"{netns.host_ip}:{gateway.ports['grpc_mtls']}",
        device_id=DEVICE_ID,
        unix_socket=str(tmp_path / "agent.sock"),
        cache_entries="0",
        breaker_reset_s="0.5",
    )
    agent.args = netns.command(agent.args)
    try:
        agent.start()
        yield agent
    finally:
        agent.stop()
        gateway.stop()


def test_a_partition_fails_no_request_and_escalation_resumes_after_heal(
    namespaced_cascade: ServiceProcess, netns: NetNamespace, tmp_path: Path, figures: Figures
) -> None:
    outcomes = Outcomes()
    stop = threading.Event()
    with unix_client(tmp_path / "agent.sock", timeout=30) as client:
        client.set_router_policy(MODEL, ESCALATE_ALL)
        sender = threading.Thread(target=stream, args=(client, outcomes, stop), daemon=True)
        sender.start()
        try:
            wait_until(lambda: outcomes.cloud >= 5, 30, "cloud answers before the cut")
            netns.partition()
            cut_at = len(outcomes.answers)
            wait_until(lambda: outcomes.degraded >= 30, 30, "degraded answers while cut")
            netns.heal()
            healed_at = len(outcomes.answers)
            wait_until(lambda: cloud_after(outcomes, healed_at) >= 5, 60, "escalation to resume")
        finally:
            stop.set()
            sender.join(timeout=30)
        breaker_opened = client.metric("edgeserve_agent_breaker_opened_total")
        breaker_open_now = client.metric("edgeserve_agent_breaker_open")
    outcomes.record(figures, "partition")
    figures.count("partitions", 1, "cuts", "survived")
    assert outcomes.failures == []
    cut = outcomes.answers[cut_at:healed_at]
    assert all(a["tier"] == "edge" and a["degraded"] for a in cut[1:])
    assert max(outcomes.seconds) < BUDGET_MS / 1e3 + SLACK_S
    assert breaker_opened >= 1 and breaker_open_now == 0


def stream(client: OipHttpClient, outcomes: Outcomes, stop: threading.Event) -> None:
    index = 0
    while not stop.is_set():
        ask(client, outcomes, index)
        index += 1


def cloud_after(outcomes: Outcomes, start: int) -> int:
    return sum(1 for a in outcomes.answers[start:] if a.get("tier") == "cloud")


# -- a misbehaving link (fault proxy) ----------------------------------------------------


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CascadeStack, FaultProxy]]:
    """A cascade whose agent reaches the gateway through a fault proxy."""
    with FaultProxy("127.0.0.1", 0).run_in_thread() as proxy:

        def link(gateway_port: int) -> int:
            proxy.upstream_port = gateway_port
            return proxy.port

        stack = start_cascade(
            tmp_path_factory.mktemp("proxied"),
            link=link,
            cache_entries="0",
            breaker_reset_s="0.3",
        )
        try:
            yield stack, proxy
        finally:
            stack.stop()


FAULTS: dict[str, Callable[[FaultProxy], None]] = {
    "delay_small": lambda proxy: proxy.delay(0.01),
    "delay_over_budget": lambda proxy: proxy.delay(0.5),
    "stall": FaultProxy.stall,
    "reset": FaultProxy.reset,
    "blackhole": FaultProxy.blackhole,
    "loss_half": lambda proxy: lossy(proxy, 0.5),
}


def lossy(proxy: FaultProxy, fraction: float) -> None:
    """Break the open connection, then lose ``fraction`` of the reconnection attempts
    (gRPC keeps one connection, which a loss of new connections alone never touches)."""
    proxy.reset()
    proxy.set_fault(Fault())
    proxy.loss(fraction, seed=6)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_faulty_link_keeps_every_answer_within_its_budget(
    proxied: tuple[CascadeStack, FaultProxy], fault: str, figures: Figures
) -> None:
    stack, proxy = proxied
    outcomes = Outcomes()
    with OipHttpClient(stack.agent_url, timeout=30) as client:
        client.set_router_policy(MODEL, ESCALATE_ALL)
        recover(client)  # the breaker closed, escalations answered before the fault
        FAULTS[fault](proxy)
        try:
            for index in range(20):
                ask(client, outcomes, index)
        finally:
            proxy.pass_through()
        recover(client)
    outcomes.record(figures, fault)
    assert outcomes.failures == []
    assert len(outcomes.answers) == 20
    assert all(a["tier"] == "cloud" or a["degraded"] for a in outcomes.answers)
    assert max(outcomes.seconds) < BUDGET_MS / 1e3 + SLACK_S
    if fault in {"delay_over_budget", "stall", "reset", "blackhole"}:
        assert outcomes.degraded == 20  # the cloud cannot answer in time through this link


def recover(client: OipHttpClient) -> None:
    """Wait until a request is answered by the cloud again."""
    probe = Outcomes()

    def answered_by_cloud() -> bool:
        ask(client, probe, 0)
        return probe.cloud > 0

    wait_until(answered_by_cloud, 30, "escalations answered by the cloud")
