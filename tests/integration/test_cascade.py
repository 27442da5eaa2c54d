"""The router end to end: an agent escalating to a real gateway over mTLS, and every fault."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from edge_agent.outbox import Outbox
from edgeserve.client import OipHttpClient
from edgeserve.eval.stack import DEVICE_ID, CascadeStack, start_cascade
from edgeserve.processes import gateway_process
from edgeserve.security.pki import ensure_dev_pki
from edgeserve.testing import FaultProxy

pytestmark = pytest.mark.integration
MODEL = "digits-edge"
ESCALATE_ALL = {"score": "max_probability", "threshold": 1.0, "escalation_model": "digits-cloud"}
NEVER = {**ESCALATE_ALL, "threshold": 0.0}


@pytest.fixture
def stacks():
    started: list[CascadeStack] = []
    yield started
    for stack in started:
        stack.stop()


def _start(stacks, tmp_path: Path, **kwargs) -> CascadeStack:
    stack = start_cascade(tmp_path, **kwargs)
    stacks.append(stack)
    return stack


def _client(stack: CascadeStack) -> OipHttpClient:
    return OipHttpClient(stack.agent_url, timeout=30)


def _timed(client: OipHttpClient, row, budget_ms: float):
    started = time.monotonic()
    answer = client.infer(MODEL, {"input": row[None, :]}, parameters={"timeout": budget_ms * 1000})
    return answer.parameters, time.monotonic() - started


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_confident_requests_stay_local_and_hard_ones_get_the_cloud_answer(stacks, tmp_path, digits):
    stack = _start(stacks, tmp_path, cache_entries="0")
    x, _ = digits
    with _client(stack) as client:
        client.set_router_policy(MODEL, NEVER)
        local, _ = _timed(client, x[0], 500)
        client.set_router_policy(MODEL, ESCALATE_ALL)
        cloud, _ = _timed(client, x[0], 500)
    assert local["tier"] == "edge" and "escalated_rows" not in local
    assert cloud["tier"] == "cloud" and cloud["escalated_rows"] == [0]
    assert cloud["edge_prediction"] and cloud["cloud_prediction"] == [str(digits[1][0])]
    assert cloud["prediction"] == cloud["cloud_prediction"]
    assert cloud["escalation_ms"] >= cloud["gateway_ms"] > 0


def test_escalated_answers_are_cached(stacks, tmp_path, digits):
    stack = _start(stacks, tmp_path)
    with _client(stack) as client:
        client.set_router_policy(MODEL, ESCALATE_ALL)
        first, _ = _timed(client, digits[0][3], 500)
        second, _ = _timed(client, digits[0][3], 500)
    assert (first["tier"], first["cache_hit"]) == ("cloud", False)
    assert (second["tier"], second["cache_hit"]) == ("cloud", True)


def test_killing_the_gateway_fails_no_request_and_the_breaker_recovers(stacks, tmp_path, digits):
    port = _free_port()
    stack = _start(stacks, tmp_path, mtls_port=port, cache_entries="0", breaker_reset_s="0.5")
    x, _ = digits
    budget_ms = 200
    with _client(stack) as client:
        client.set_router_policy(MODEL, ESCALATE_ALL)
        assert _timed(client, x[0], budget_ms)[0]["tier"] == "cloud"
        stack.gateway.kill()
        answers = [_timed(client, row, budget_ms) for row in x[:40]]
        assert all(params["degraded"] for params, _ in answers)
        assert max(elapsed for _, elapsed in answers) < budget_ms / 1000 + 0.15
        assert client.metric("edgeserve_agent_breaker_opened_total") >= 1
        restarted = gateway_process(
            tmp_path, tmp_path / "gateway-state", name="gateway-again", grpc_mtls_port=str(port)
        )
        stack.gateway = restarted
        restarted.start()
        deadline = time.monotonic() + 20
        while _timed(client, x[1], budget_ms)[0]["tier"] != "cloud":
            assert time.monotonic() < deadline, "breaker never closed after the gateway returned"
        assert client.metric("edgeserve_agent_breaker_open") == 0


def test_a_stalled_link_keeps_every_answer_within_its_budget(stacks, tmp_path, digits):
    with FaultProxy("127.0.0.1", 0).run_in_thread() as proxy:

        def link(gateway_port: int) -> int:
            proxy.upstream_port = gateway_port
            return proxy.port

        stack = _start(stacks, tmp_path, link=link, cache_entries="0")
        x, _ = digits
        with _client(stack) as client:
            client.set_router_policy(MODEL, ESCALATE_ALL)
            assert _timed(client, x[0], 500)[0]["tier"] == "cloud"
            proxy.stall()
            answers = [_timed(client, row, 100) for row in x[:10]]
            proxy.pass_through()
    assert {params["degraded_reason"] for params, _ in answers} <= {"deadline", "breaker_open"}
    assert answers[0][0]["degraded_reason"] == "deadline"
    assert max(elapsed for _, elapsed in answers) < 0.1 + 0.1


def test_a_certificate_from_another_ca_is_refused_and_the_agent_degrades(stacks, tmp_path, digits):
    rogue = ensure_dev_pki(tmp_path / "rogue-pki", devices=[DEVICE_ID])
    cert, key = rogue.devices[DEVICE_ID]
    stack = _start(stacks, tmp_path, cloud_cert=str(cert), cloud_key=str(key), cache_entries="0")
    with _client(stack) as client:
        client.set_router_policy(MODEL, ESCALATE_ALL)
        params, _ = _timed(client, digits[0][0], 500)
    assert params["tier"] == "edge" and params["degraded"]
    assert params["degraded_reason"] in {"cloud_unavailable", "cloud_refused"}


def test_an_unregistered_device_is_refused_by_the_gateway(stacks, tmp_path, digits):
    stack = _start(stacks, tmp_path, device_id="not-enrolled", cache_entries="0")
    pki = ensure_dev_pki(tmp_path / "gateway-state" / "pki", devices=["stranger"])
    stack.agent.stop()
    cert, key = pki.devices["stranger"]
    from edgeserve.processes import agent_process

    agent = agent_process(
        tmp_path,
        name="stranger",
        cloud_cert=str(cert),
        cloud_key=str(key),
        cloud_ca=str(pki.ca.cert),
        cache_entries="0",
        cloud_target=f"127.0.0.1:{stack.gateway.ports['grpc_mtls']}",
    )
    stack.agent = agent
    agent.start()
    with _client(stack) as client:
        client.set_router_policy(MODEL, ESCALATE_ALL)
        params, _ = _timed(client, digits[0][0], 500)
    assert params["degraded_reason"] == "cloud_refused"


def test_hard_examples_mode_answers_locally_and_queues_the_inputs(stacks, tmp_path, digits):
    stack = _start(stacks, tmp_path, routing_mode="hard_examples", cache_entries="0")
    with _client(stack) as client:
        client.set_router_policy(MODEL, ESCALATE_ALL)
        answers = [_timed(client, row, 500)[0] for row in digits[0][:5]]
    stack.agent.stop()
    assert all(a["tier"] == "edge" and a["hard_example_rows"] == [0] for a in answers)
    outbox = Outbox(tmp_path / "agent-state" / "outbox.db", 1 << 20)
    assert outbox.count("hard_example") == 5


def test_an_agent_without_a_cloud_answers_uncertain_requests_alone(start_agent, digits):
    agent = start_agent(cache_entries="0")
    with OipHttpClient(f"http://127.0.0.1:{agent.port}") as client:
        client.set_router_policy(MODEL, ESCALATE_ALL)
        params, _ = _timed(client, digits[0][0], 500)
    assert params["tier"] == "edge" and params["uncertain_rows"] == [0]
    assert "degraded" not in params
