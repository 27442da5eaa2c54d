"""A circuit breaker for the agent's link to the cloud: pure state, no I/O, clock injected.

::

    closed ──(failure_threshold consecutive failures)──▶ open
    open ──(reset_timeout_s passed; seen by allow() or state)──▶ half-open
    half-open ──(a probe succeeds)──▶ closed
    half-open ──(a probe fails)──▶ open (the reset timeout starts again)

While closed every call is allowed and a success resets the failure count. While open
nothing is allowed. Half-open lets ``half_open_max_calls`` probes through; the others
are refused until a probe's verdict comes back. A caller that got a probe slot and then
gives up without a verdict (it was cancelled) must call ``release()`` or the slot stays
taken. Verdicts that arrive while open belong to calls started before it opened, and
are ignored: they say nothing about the link now.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["BreakerState", "BreakerTransitions", "CircuitBreaker"]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerTransitions:
    """How many times the breaker entered each state since it was made (for metrics)."""

    opened: int = 0
    half_opened: int = 0
    closed: int = 0


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int,
        reset_timeout_s: float,
        half_open_max_calls: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or half_open_max_calls < 1:
            raise ValueError("failure_threshold and half_open_max_calls must be at least 1")
        if reset_timeout_s < 0:
            raise ValueError("reset_timeout_s must not be negative")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.half_open_max_calls = half_open_max_calls
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probes = 0
        self._counts = {state: 0 for state in BreakerState}

    @property
    def state(self) -> BreakerState:
        """The state now; an open breaker whose reset timeout passed reads half-open."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= (
            self.reset_timeout_s
        ):
            self._enter(BreakerState.HALF_OPEN)
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    @property
    def transitions(self) -> BreakerTransitions:
        return BreakerTransitions(
            opened=self._counts[BreakerState.OPEN],
            half_opened=self._counts[BreakerState.HALF_OPEN],
            closed=self._counts[BreakerState.CLOSED],
        )

    def allow(self) -> bool:
        """Whether a call may go out now; in half-open this takes one probe slot."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and self._probes < self.half_open_max_calls:
            self._probes += 1
            return True
        return False

    def record_success(self) -> None:
        state = self.state
        if state is BreakerState.CLOSED:
            self._failures = 0
        elif state is BreakerState.HALF_OPEN:
            self._enter(BreakerState.CLOSED)

    def record_failure(self) -> None:
        state = self.state
        if state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._enter(BreakerState.OPEN)
        elif state is BreakerState.HALF_OPEN:
            self._enter(BreakerState.OPEN)

    def release(self) -> None:
        """Give back a half-open probe slot whose call ended without a verdict."""
        if self._state is BreakerState.HALF_OPEN and self._probes > 0:
            self._probes -= 1

    def _enter(self, state: BreakerState) -> None:
        self._state = state
        self._counts[state] += 1
        self._failures = 0
        self._probes = 0
        if state is BreakerState.OPEN:
            self._opened_at = self._clock()
