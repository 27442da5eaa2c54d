"""The circuit breaker's state machine, driven by a fake clock: no sleeps, no I/O."""

from __future__ import annotations

import pytest

from edge_agent.escalation import BreakerState, BreakerTransitions, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def breaker(clock: FakeClock, threshold: int = 3, probes: int = 1) -> CircuitBreaker:
    return CircuitBreaker(
        failure_threshold=threshold, reset_timeout_s=10.0, half_open_max_calls=probes, clock=clock
    )


def opened(clock: FakeClock, probes: int = 1) -> CircuitBreaker:
    subject = breaker(clock, probes=probes)
    for _ in range(3):
        subject.record_failure()
    assert subject.state is BreakerState.OPEN
    return subject


def test_a_new_breaker_is_closed_and_allows_calls(clock):
    subject = breaker(clock)
    assert subject.state is BreakerState.CLOSED
    assert all(subject.allow() for _ in range(100))


def test_it_opens_after_threshold_consecutive_failures(clock):
    subject = breaker(clock, threshold=3)
    subject.record_failure()
    subject.record_failure()
    assert subject.state is BreakerState.CLOSED and subject.allow()
    subject.record_failure()
    assert subject.state is BreakerState.OPEN
    assert not subject.allow()


def test_a_success_resets_the_consecutive_failure_count(clock):
    subject = breaker(clock, threshold=3)
    for _ in range(5):
        subject.record_failure()
        subject.record_failure()
        subject.record_success()
    assert subject.state is BreakerState.CLOSED
    assert subject.consecutive_failures == 0


def test_open_refuses_until_the_reset_timeout_passes(clock):
    subject = opened(clock)
    clock.advance(9.99)
    assert not subject.allow()
    assert subject.state is BreakerState.OPEN
    clock.advance(0.01)
    assert subject.state is BreakerState.HALF_OPEN


def test_half_open_lets_only_the_configured_number_of_probes_through(clock):
    subject = opened(clock, probes=2)
    clock.advance(10)
    assert [subject.allow() for _ in range(4)] == [True, True, False, False]


def test_a_successful_probe_closes_the_breaker(clock):
    subject = opened(clock)
    clock.advance(10)
    assert subject.allow()
    subject.record_success()
    assert subject.state is BreakerState.CLOSED
    assert all(subject.allow() for _ in range(10))


def test_a_failed_probe_reopens_it_and_restarts_the_reset_timeout(clock):
    subject = opened(clock)
    clock.advance(10)
    assert subject.allow()
    subject.record_failure()
    assert subject.state is BreakerState.OPEN
    clock.advance(9)
    assert not subject.allow()
    clock.advance(1)
    assert subject.allow()


def test_a_released_probe_slot_can_be_used_again(clock):
    subject = opened(clock)
    clock.advance(10)
    assert subject.allow() and not subject.allow()
    subject.release()
    assert subject.allow()


def test_late_verdicts_while_open_are_ignored(clock):
    subject = opened(clock)
    subject.record_success()
    assert subject.state is BreakerState.OPEN
    clock.advance(5)
    subject.record_failure()
    clock.advance(5)
    assert subject.state is BreakerState.HALF_OPEN


def test_after_closing_it_needs_threshold_new_failures_to_open_again(clock):
    subject = opened(clock)
    clock.advance(10)
    subject.allow()
    subject.record_success()
    subject.record_failure()
    subject.record_failure()
    assert subject.state is BreakerState.CLOSED


def test_transitions_are_counted_for_metrics(clock):
    subject = opened(clock)
    clock.advance(10)
    subject.allow()
    subject.record_failure()
    clock.advance(10)
    subject.allow()
    subject.record_success()
    assert subject.transitions == BreakerTransitions(opened=2, half_opened=2, closed=1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_threshold": 0, "reset_timeout_s": 1},
        {"failure_threshold": 1, "reset_timeout_s": -1},
        {"failure_threshold": 1, "reset_timeout_s": 1, "half_open_max_calls": 0},
    ],
)
def test_nonsense_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        CircuitBreaker(**kwargs)
