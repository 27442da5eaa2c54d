"""Tenant admission: token buckets refuse with an exact Retry-After, in-flight caps with 0."""

import pytest

from cloud_gateway.scheduler import (
    RateLimit,
    TenantLimiter,
    TokenBucket,
    TooManyInFlight,
)
from edgeserve.wire.errors import ErrorCode, RateLimited


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_a_full_bucket_grants_its_burst_then_refuses():
    bucket = TokenBucket(rate_per_s=2.0, burst=3.0, clock=FakeClock())

    assert [bucket.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_acquire() > 0


def test_retry_after_is_the_time_until_enough_tokens_refill():
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=2.0, burst=1.0, clock=clock)
    bucket.try_acquire()

    assert bucket.try_acquire() == pytest.approx(0.5)
    clock.advance(0.2)
    assert bucket.try_acquire() == pytest.approx(0.3)


def test_waiting_exactly_the_retry_after_is_enough():
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=3.0, burst=1.0, clock=clock)
    bucket.try_acquire()

    clock.advance(bucket.try_acquire())

    assert bucket.try_acquire() == 0.0


def test_a_refused_acquire_takes_no_tokens():
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=1.0, burst=2.0, clock=clock)
    bucket.try_acquire(2.0)
    clock.advance(0.5)

    bucket.try_acquire()  # refused: only 0.5 tokens
    bucket.try_acquire()  # refused again; must not have drained the half token

    assert bucket.available == pytest.approx(0.5)


def test_refill_never_exceeds_the_burst():
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=10.0, burst=2.0, clock=clock)
    clock.advance(3600)

    granted = sum(bucket.try_acquire() == 0.0 for _ in range(5))

    assert granted == 2


def test_asking_for_more_than_the_burst_is_a_programming_error():
    bucket = TokenBucket(rate_per_s=1.0, burst=2.0, clock=FakeClock())

    with pytest.raises(ValueError, match="burst"):
        bucket.try_acquire(3.0)


def test_limiter_raises_rate_limited_with_retry_after():
    limiter = TenantLimiter({"acme": RateLimit(rate_per_s=4.0, burst=1.0)}, clock=FakeClock())
    limiter.acquire("acme")

    with pytest.raises(RateLimited) as refused:
        limiter.acquire("acme")

    assert refused.value.retry_after_s == pytest.approx(0.25)
    assert refused.value.code is ErrorCode.RATE_LIMITED


def test_each_tenant_has_its_own_bucket():
    limit = RateLimit(rate_per_s=1.0, burst=1.0)
    limiter = TenantLimiter({"a": limit, "b": limit}, clock=FakeClock())
    limiter.acquire("a")

    limiter.acquire("b")  # a's empty bucket does not affect b


def test_unlisted_tenants_get_the_default_limit():
    limiter = TenantLimiter({}, default=RateLimit(rate_per_s=1.0, burst=1.0), clock=FakeClock())
    limiter.acquire("stranger")

    with pytest.raises(RateLimited):
        limiter.acquire("stranger")


def test_unlisted_tenants_without_a_default_are_unlimited():
    limiter = TenantLimiter({}, clock=FakeClock())

    for _ in range(1000):
        limiter.acquire("anyone")
        limiter.acquire_slot("anyone")

    assert limiter.in_flight("anyone") == 1000


def test_in_flight_cap_refuses_with_zero_retry_after():
    limit = RateLimit(rate_per_s=100.0, burst=100.0, max_in_flight=2)
    limiter = TenantLimiter({"acme": limit}, clock=FakeClock())
    limiter.acquire_slot("acme")
    limiter.acquire_slot("acme")

    with pytest.raises(TooManyInFlight) as refused:
        limiter.acquire_slot("acme")

    assert isinstance(refused.value, RateLimited)
    assert refused.value.retry_after_s == 0.0


def test_releasing_a_slot_admits_the_next_request():
    limit = RateLimit(rate_per_s=100.0, burst=100.0, max_in_flight=1)
    limiter = TenantLimiter({"acme": limit}, clock=FakeClock())
    limiter.acquire_slot("acme")
    limiter.release_slot("acme")

    limiter.acquire_slot("acme")

    assert limiter.in_flight("acme") == 1


def test_slot_context_releases_even_when_the_body_raises():
    limit = RateLimit(rate_per_s=100.0, burst=100.0, max_in_flight=1)
    limiter = TenantLimiter({"acme": limit}, clock=FakeClock())

    with pytest.raises(KeyError), limiter.slot("acme"):
        raise KeyError("boom")

    assert limiter.in_flight("acme") == 0


def test_releasing_a_slot_never_acquired_is_an_error():
    limiter = TenantLimiter({}, clock=FakeClock())

    with pytest.raises(ValueError, match="no in-flight slot"):
        limiter.release_slot("acme")


@pytest.mark.parametrize(
    ("rate", "burst", "max_in_flight"),
    [(0.0, 1.0, None), (1.0, 0.0, None), (float("inf"), 1.0, None), (1.0, 1.0, 0)],
)
def test_nonsensical_limits_are_rejected(rate, burst, max_in_flight):
    with pytest.raises(ValueError):
        RateLimit(rate_per_s=rate, burst=burst, max_in_flight=max_in_flight)


def test_a_lease_takes_whole_tokens_up_to_the_ask_then_says_when_the_next_comes():
    clock = FakeClock()
    limiter = TenantLimiter({}, clock=clock)
    limit = RateLimit(rate_per_s=10.0, burst=5.0)
    assert limiter.lease("acme", limit, 3) == (3, 0.0)
    assert limiter.lease("acme", limit, 3) == (2, 0.0)  # what is left, not more
    taken, wait = limiter.lease("acme", limit, 3)
    assert taken == 0 and wait == pytest.approx(0.1)
    clock.now += 0.25
    assert limiter.lease("acme", limit, 3) == (2, 0.0)  # 2.5 tokens: only whole ones go
