"""The escalation client over the in-memory transport: budgets, the breaker, the cap."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import numpy as np
import pytest

from edge_agent.escalation import (
    BreakerState,
    CircuitBreaker,
    DegradedReason,
    EscalationClient,
    InMemoryCloudTransport,
)
from edgeserve.wire.errors import (
    DeadlineExceeded,
    InternalError,
    InvalidInput,
    ModelNotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from edgeserve.wire.tensors import InferRequest, InferResponse, InferTensor

# Scheduling slack allowed past a budget: the guard cancels the call, it does not poll.
EPSILON_S = 0.05


def request(model: str = "digits-edge") -> InferRequest:
    x = np.zeros((1, 4), np.float32)
    return InferRequest(model, [InferTensor.from_numpy("input", x)], model_version="3")


def answer(req: InferRequest) -> InferResponse:
    logits = np.arange(4, dtype=np.float32).reshape(1, 4)
    return InferResponse(req.model_name, "1", [InferTensor.from_numpy("logits", logits)])


async def instant(req: InferRequest) -> InferResponse:
    return answer(req)


async def never(req: InferRequest) -> InferResponse:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


def client(handler=instant, threshold: int = 3, max_in_flight: int = 4, **kwargs):
    breaker = CircuitBreaker(failure_threshold=threshold, reset_timeout_s=60.0)
    transport = InMemoryCloudTransport(handler)
    return EscalationClient(transport, breaker, max_in_flight, **kwargs), transport


def run(coro):
    return asyncio.run(coro)


def test_success_returns_the_cloud_answer_and_round_trip_time():
    subject, transport = client()
    outcome = run(subject.escalate(request(), budget_s=1.0))
    assert outcome.ok and outcome.degraded_reason is None
    assert outcome.response is not None and outcome.response.output("logits").shape == [1, 4]
    assert 0 <= outcome.round_trip_s < 1.0
    assert transport.calls == 1
    assert 0 < transport.timeouts[0] <= 1.0


def test_model_map_renames_the_model_and_drops_the_edge_version():
    seen: list[InferRequest] = []

    async def record(req: InferRequest) -> InferResponse:
        seen.append(req)
        return answer(req)

    subject, _ = client(record, model_map={"digits-edge": "digits-cloud"})
    run(subject.escalate(request(), 1.0))
    run(subject.escalate(request("other"), 1.0))
    assert (seen[0].model_name, seen[0].model_version) == ("digits-cloud", None)
    assert (seen[1].model_name, seen[1].model_version) == ("other", "3")


def test_a_slow_cloud_degrades_to_deadline_within_the_budget():
    subject, _ = client(never)
    started = time.perf_counter()
    outcome = run(subject.escalate(request(), budget_s=0.2))
    elapsed = time.perf_counter() - started
    assert outcome.degraded_reason == "deadline"
    assert elapsed < 0.2 + EPSILON_S
    assert outcome.round_trip_s < 0.2 + EPSILON_S


@pytest.mark.parametrize("budget_s", [0.0, -1.0, 0.001])
def test_a_budget_at_or_below_the_floor_is_not_even_tried(budget_s):
    subject, transport = client()
    outcome = run(subject.escalate(request(), budget_s))
    assert outcome.degraded_reason == DegradedReason.DEADLINE
    assert transport.calls == 0


def test_consecutive_failures_open_the_breaker_and_then_it_degrades_immediately():
    subject, transport = client(never, threshold=2)
    for _ in range(2):
        assert run(subject.escalate(request(), 0.05)).degraded_reason == "deadline"
    assert subject.breaker.state is BreakerState.OPEN
    started = time.perf_counter()
    outcome = run(subject.escalate(request(), budget_s=5.0))
    assert outcome.degraded_reason == "breaker_open"
    assert time.perf_counter() - started < 0.05
    assert transport.calls == 2


def test_escalations_over_the_cap_degrade_immediately():
    async def scenario():
        gate = asyncio.Event()

        async def held(req: InferRequest) -> InferResponse:
            await gate.wait()
            return answer(req)

        subject, transport = client(held, max_in_flight=2)
        first = [asyncio.create_task(subject.escalate(request(), 5.0)) for _ in range(2)]
        await asyncio.sleep(0.01)
        over = await subject.escalate(request(), 5.0)
        assert subject.stats().in_flight == 2
        gate.set()
        results = await asyncio.gather(*first)
        after = await subject.escalate(request(), 5.0)
        return over, results, after, transport.calls

    over, results, after, calls = run(scenario())
    assert over.degraded_reason == "too_many_escalations"
    assert all(outcome.ok for outcome in results) and after.ok
    assert calls == 3


@pytest.mark.parametrize(
    ("error", "reason", "breaker_failure"),
    [
        (DeadlineExceeded("late"), "deadline", True),
        (Unavailable("down"), "cloud_unavailable", True),
        (RateLimited("slow down", 2.0), "cloud_unavailable", True),
        (Unauthenticated("who"), "cloud_refused", True),
        (PermissionDenied("no"), "cloud_refused", True),
        (InvalidInput("bad shape"), "cloud_error", False),
        (ModelNotFound("gone"), "cloud_error", True),
        (InternalError("boom"), "cloud_error", True),
        (RuntimeError("a bug in the handler"), "cloud_error", True),
    ],
)
def test_cloud_errors_map_to_degraded_reasons_and_never_raise(error, reason, breaker_failure):
    async def failing(req: InferRequest) -> InferResponse:
        raise error

    subject, _ = client(failing, threshold=1)
    outcome = run(subject.escalate(request(), 1.0))
    assert outcome.degraded_reason == reason and outcome.response is None
    assert outcome.detail
    expected = BreakerState.OPEN if breaker_failure else BreakerState.CLOSED
    assert subject.breaker.state is expected


def test_a_cancelled_caller_frees_its_slot_and_its_half_open_probe():
    async def scenario():
        subject, _ = client(never, threshold=1)
        subject.breaker.reset_timeout_s = 0.0
        await subject.escalate(request(), 0.02)
        task = asyncio.create_task(subject.escalate(request(), 5.0))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return subject

    subject = run(scenario())
    assert subject.stats().in_flight == 0
    assert subject.breaker.state is BreakerState.HALF_OPEN
    assert subject.breaker.allow()


def test_stats_count_requests_attempts_successes_and_reasons():
    outcomes = iter([None, Unavailable("down"), None])

    async def scripted(req: InferRequest) -> InferResponse:
        error = next(outcomes)
        if error is not None:
            raise error
        return answer(req)

    subject, _ = client(scripted, threshold=1)
    for budget in (1.0, 1.0, 1.0, 0.0):
        run(subject.escalate(request(), budget))
    stats = subject.stats()
    assert (stats.requests, stats.attempts, stats.successes) == (4, 2, 1)
    assert stats.degraded["cloud_unavailable"] == 1
    assert stats.degraded["breaker_open"] == 1
    assert stats.degraded["deadline"] == 1
    assert (stats.breaker_state, stats.breaker_opened, stats.breaker_closed) == ("open", 1, 0)


def test_importing_escalation_does_not_import_grpc():
    probe = (
        "import sys, edge_agent.escalation;"
        "print([m for m in ('grpc', 'google.protobuf') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
