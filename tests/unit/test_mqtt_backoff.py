"""Reconnect waits: exponential, bounded, and different on every client (full jitter)."""

from __future__ import annotations

import random
import statistics

from edgeserve.mqtt import Backoff, JitteredBackoff

POLICY = Backoff()  # the links' default


def waits(seed: int, attempts: int) -> list[float]:
    backoff = JitteredBackoff(POLICY, random.Random(seed))
    return [backoff.next_delay() for _ in range(attempts)]


def test_each_wait_stays_within_its_exponential_bound() -> None:
    for seed in range(200):
        for attempt, delay in enumerate(waits(seed, 10)):
            assert POLICY.floor_s <= delay <= min(POLICY.cap_s, POLICY.base_s * 2**attempt)


def test_clients_that_lost_the_broker_together_do_not_retry_in_step() -> None:
    first = [waits(seed, 1)[0] for seed in range(1000)]
    busiest_100ms = max(sum(1 for d in first if b / 10 <= d < (b + 1) / 10) for b in range(10))
    assert busiest_100ms < 200  # paho's fixed 1 s puts all 1000 in one slot
    after_five = [sum(waits(seed, 5)) for seed in range(1000)]
    assert statistics.stdev(after_five) > 2.0  # paho: 1+2+4+8+8 = 23 s for every client


def test_a_successful_connect_starts_the_next_outage_from_the_smallest_bound() -> None:
    backoff = JitteredBackoff(POLICY, random.Random(1))
    for _ in range(8):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() <= POLICY.base_s


def test_a_huge_attempt_count_stays_at_the_cap() -> None:
    backoff = JitteredBackoff(POLICY, random.Random(2))
    backoff.attempt = 10_000
    assert backoff.next_delay() <= POLICY.cap_s
