"""Escalate one request to the cloud within a time budget, and never fail the caller.

``EscalationClient.escalate`` returns either the cloud's answer or a degraded reason the
agent can report next to its own local answer; cloud problems never raise. The order
of checks is: budget floor, breaker open, in-flight cap, breaker probe slot — so a
refused call costs nothing and does not take a half-open probe slot.

What the breaker hears (it guards the link and the cloud's health, not requests)::

    transport outcome                  degraded reason     breaker
    an answer                          -                   success
    InvalidInput                       cloud_error         success: the cloud answered
    DeadlineExceeded, our guard        deadline            failure
    Unavailable, RateLimited           cloud_unavailable   failure
    Unauthenticated, PermissionDenied  cloud_refused       failure (1)
    any other error                    cloud_error         failure

(1) A 401/403 is a configuration problem (a revoked certificate, an unregistered
device) that will not fix itself soon, so the breaker stops the agent from trying every
request; a half-open probe notices when it has been fixed.

The deadline is enforced twice: the gRPC timeout tells the gateway when to give up, and
an ``asyncio.timeout`` guard makes sure a stalled TCP connection cannot hold the caller
past ``budget_s`` even if grpc's own timer does not fire.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum

from edge_agent.escalation.breaker import BreakerState, CircuitBreaker
from edge_agent.escalation.transport import CloudTransport
from edgeserve.wire.errors import (
    DeadlineExceeded,
    EdgeServeError,
    InvalidInput,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from edgeserve.wire.tensors import InferRequest, InferResponse

__all__ = [
    "MIN_BUDGET_S",
    "DegradedReason",
    "EscalationClient",
    "EscalationOutcome",
    "EscalationStats",
]

log = logging.getLogger(__name__)

# Below this a round trip cannot succeed, so trying would only load the link.
MIN_BUDGET_S = 0.001


class DegradedReason(StrEnum):
    BREAKER_OPEN = "breaker_open"
    TOO_MANY_ESCALATIONS = "too_many_escalations"
    DEADLINE = "deadline"
    CLOUD_UNAVAILABLE = "cloud_unavailable"
    CLOUD_REFUSED = "cloud_refused"
    CLOUD_ERROR = "cloud_error"


@dataclass(frozen=True, slots=True)
class EscalationOutcome:
    """The cloud's ``response`` and ``round_trip_s``, or why there is none."""

    response: InferResponse | None
    round_trip_s: float
    degraded_reason: DegradedReason | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.response is not None


@dataclass(frozen=True, slots=True)
class EscalationStats:
    """A snapshot of the client's counters, for metrics."""

    requests: int
    attempts: int
    successes: int
    degraded: dict[str, int]
    in_flight: int
    breaker_state: str
    breaker_opened: int
    breaker_closed: int


class EscalationClient:
    """Sends escalations through ``transport``, guarded by ``breaker`` and a concurrency cap.

    ``model_map`` renames edge models to their cloud counterparts (e.g. "digits-edge" ->
    "digits-cloud"); a renamed request drops its model version, which names an edge
    artifact. Single event loop: the counters need no lock.
    """

    def __init__(
        self,
        transport: CloudTransport,
        breaker: CircuitBreaker,
        max_in_flight: int,
        model_map: dict[str, str] | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.transport = transport
        self.breaker = breaker
        self.max_in_flight = max_in_flight
        self.model_map = dict(model_map or {})
        self._in_flight = 0
        self._requests = 0
        self._attempts = 0
        self._successes = 0
        self._degraded: Counter[str] = Counter()

    async def escalate(self, request: InferRequest, budget_s: float) -> EscalationOutcome:
        """The cloud's answer within ``budget_s`` seconds, or a degraded outcome."""
        started = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + budget_s
        self._requests += 1
        refusal = self._refusal(budget_s)
        if refusal is not None:
            return self._degrade(refusal, started, "not attempted")
        self._in_flight += 1
        self._attempts += 1
        verdict_given = False
        try:
            outcome = await self._call(self._cloud_request(request), deadline, started)
            verdict_given = True
            return outcome
        finally:
            self._in_flight -= 1
            if not verdict_given:
                # Cancelled by our caller: no verdict on the link, free a probe slot.
                self.breaker.release()

    def stats(self) -> EscalationStats:
        transitions = self.breaker.transitions
        return EscalationStats(
            requests=self._requests,
            attempts=self._attempts,
            successes=self._successes,
            degraded={reason.value: self._degraded[reason.value] for reason in DegradedReason},
            in_flight=self._in_flight,
            breaker_state=self.breaker.state.value,
            breaker_opened=transitions.opened,
            breaker_closed=transitions.closed,
        )

    async def close(self) -> None:
        await self.transport.close()

    def _refusal(self, budget_s: float) -> DegradedReason | None:
        if budget_s <= MIN_BUDGET_S:
            return DegradedReason.DEADLINE
        if self.breaker.state is BreakerState.OPEN:
            return DegradedReason.BREAKER_OPEN
        if self._in_flight >= self.max_in_flight:
            return DegradedReason.TOO_MANY_ESCALATIONS
        if not self.breaker.allow():
            return DegradedReason.BREAKER_OPEN
        return None

    async def _call(
        self, request: InferRequest, deadline: float, started: float
    ) -> EscalationOutcome:
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout_at(deadline):
                response = await self.transport.infer(request, timeout_s=max(remaining, 0.0))
        except TimeoutError:
            error: EdgeServeError = DeadlineExceeded("no answer from the cloud within the budget")
        except EdgeServeError as exc:
            error = exc
        except Exception as exc:  # a transport bug must not take the request down with it
            log.exception("cloud transport raised a non-edgeserve error")
            error = EdgeServeError(f"transport failed: {exc!r}")
        else:
            self.breaker.record_success()
            self._successes += 1
            return EscalationOutcome(response, time.perf_counter() - started)
        reason, counts_as_failure = _classify(error)
        if counts_as_failure:
            self.breaker.record_failure()
        else:
            self.breaker.record_success()
        return self._degrade(reason, started, error.message)

    def _degrade(self, reason: DegradedReason, started: float, detail: str) -> EscalationOutcome:
        self._degraded[reason.value] += 1
        elapsed = time.perf_counter() - started
        log.debug("escalation degraded", extra={"reason": reason.value, "detail": detail})
        return EscalationOutcome(None, elapsed, reason, detail)

    def _cloud_request(self, request: InferRequest) -> InferRequest:
        cloud_name = self.model_map.get(request.model_name)
        if cloud_name is None:
            return request
        return dataclasses.replace(request, model_name=cloud_name, model_version=None)


def _classify(error: EdgeServeError) -> tuple[DegradedReason, bool]:
    """(degraded reason, whether the breaker counts it as a failure); see the table."""
    if isinstance(error, DeadlineExceeded):
        return DegradedReason.DEADLINE, True
    if isinstance(error, Unavailable | RateLimited):
        return DegradedReason.CLOUD_UNAVAILABLE, True
    if isinstance(error, Unauthenticated | PermissionDenied):
        return DegradedReason.CLOUD_REFUSED, True
    if isinstance(error, InvalidInput):
        return DegradedReason.CLOUD_ERROR, False
    return DegradedReason.CLOUD_ERROR, True
