"""GrpcCloudTransport against a real gateway over mTLS, through the fault proxy.

It starts a gateway process, so it is marked integration even though it lives with the
other escalation tests.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from cloud_gateway.tenancy import TenantStore
from edge_agent.escalation import (
    BreakerState,
    CircuitBreaker,
    EscalationClient,
    GrpcCloudTransport,
    TlsFiles,
)
from edgeserve.security.pki import ensure_dev_pki
from edgeserve.testing import FaultProxy
from edgeserve.wire.tensors import InferRequest, InferTensor

pytestmark = pytest.mark.integration
MODEL = "digits-cloud"
DEVICE = "device-7"
EPSILON_S = 0.1  # scheduling slack past a budget on a loaded test machine


@pytest.fixture
def gateway(start_gateway):
    gateway = start_gateway(
        tenants={"app": {}, "fleet": {"kind": "device", "allowed_models": [MODEL]}}
    )
    store = TenantStore(gateway.state_dir / "tenants.db")
    store.register_device(DEVICE, "fleet")
    store.close()
    return gateway


def device_tls(gateway, device: str = DEVICE) -> TlsFiles:
    pki = ensure_dev_pki(gateway.state_dir / "pki", devices=[device])
    cert, key = pki.devices[device]
    return TlsFiles(ca=pki.ca.cert, cert=cert, key=key)


def escalation_client(proxy: FaultProxy, tls: TlsFiles) -> EscalationClient:
    transport = GrpcCloudTransport(
        f"127.0.0.1:{proxy.port}", tls, api_key=None, server_name_override="localhost"
    )
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout_s=0.5)
    return EscalationClient(transport, breaker, 4, model_map={"digits-edge": MODEL})


def edge_request(digits) -> InferRequest:
    return InferRequest("digits-edge", [InferTensor.from_numpy("input", digits[0][:1])], "1")


async def timed(client: EscalationClient, request: InferRequest, budget_s: float):
    started = time.perf_counter()
    outcome = await client.escalate(request, budget_s)
    return outcome, time.perf_counter() - started


def test_a_stalled_link_degrades_within_budget_opens_the_breaker_and_recovers(gateway, digits):
    tls, request = device_tls(gateway), edge_request(digits)

    async def scenario() -> None:
        async with FaultProxy("127.0.0.1", gateway.process.ports["grpc_mtls"]) as proxy:
            client = escalation_client(proxy, tls)
            try:
                first = await client.escalate(request, budget_s=10.0)
                assert first.ok and first.response is not None
                assert first.response.parameters["tier"] == "cloud"
                assert first.response.output("logits").shape == [1, 10]

                proxy.stall()
                for _ in range(3):
                    outcome, elapsed = await timed(client, request, 0.3)
                    assert outcome.degraded_reason == "deadline"
                    assert elapsed < 0.3 + EPSILON_S
                assert client.breaker.state is BreakerState.OPEN
                outcome, elapsed = await timed(client, request, 5.0)
                assert outcome.degraded_reason == "breaker_open" and elapsed < 0.05

                proxy.pass_through()
                await asyncio.sleep(0.5)
                assert client.breaker.state is BreakerState.HALF_OPEN
                probe = await client.escalate(request, budget_s=5.0)
                assert probe.ok, probe.detail
                assert client.breaker.state is BreakerState.CLOSED
                stats = client.stats()
                assert (stats.attempts, stats.successes) == (5, 2)
                assert (stats.breaker_opened, stats.breaker_closed) == (1, 1)
                assert stats.degraded["deadline"] == 3 and stats.degraded["breaker_open"] == 1
            finally:
                await client.close()

    asyncio.run(scenario())


def test_a_reset_link_is_unavailable_and_a_stranger_device_is_refused(gateway, digits):
    tls, request = device_tls(gateway), edge_request(digits)
    stranger = device_tls(gateway, "stranger")

    async def scenario() -> None:
        async with FaultProxy("127.0.0.1", gateway.process.ports["grpc_mtls"]) as proxy:
            client = escalation_client(proxy, tls)
            refused = escalation_client(proxy, stranger)
            try:
                assert (await client.escalate(request, budget_s=10.0)).ok
                proxy.reset()
                outcome, elapsed = await timed(client, request, 2.0)
                assert outcome.degraded_reason == "cloud_unavailable", outcome.detail
                assert elapsed < 2.0 + EPSILON_S
                proxy.pass_through()
                recovered = await _first_success(client, request, within_s=5.0)
                assert recovered, "the channel did not reconnect after the reset"
                outcome = await refused.escalate(request, budget_s=5.0)
                assert outcome.degraded_reason == "cloud_refused", outcome.detail
            finally:
                await client.close()
                await refused.close()

    asyncio.run(scenario())


async def _first_success(client: EscalationClient, request: InferRequest, within_s: float):
    # grpc reconnects with a (short, jittered) backoff; until then calls fail fast.
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if (await client.escalate(request, budget_s=1.0)).ok:
            return True
        await asyncio.sleep(0.1)
    return False
