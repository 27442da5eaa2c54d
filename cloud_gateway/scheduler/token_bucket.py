"""Per-tenant admission: a token bucket for request rate and a cap on requests in flight.

Both refuse with ``RateLimited`` (HTTP 429), never by queueing: the bucket's refusal
carries the exact Retry-After, the in-flight cap's carries 0 because a slot frees as soon
as one of the tenant's own requests finishes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from edgeserve.wire.errors import RateLimited

Clock = Callable[[], float]

# Float refill arithmetic can leave a bucket a hair short after waiting exactly the
# Retry-After it advertised; a client that obeys the header must not be refused again.
_EPSILON = 1e-9


@dataclass(frozen=True)
class RateLimit:
    """A tenant's allowance: sustained rate, burst size and an optional in-flight cap."""

    rate_per_s: float
    burst: float
    max_in_flight: int | None = None

    def __post_init__(self) -> None:
        _check_rate(self.rate_per_s, self.burst)
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {self.max_in_flight}")


class TooManyInFlight(RateLimited):
    """The tenant already has its maximum number of requests running."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after_s=0.0)


class TokenBucket:
    """Holds up to ``burst`` tokens and refills at ``rate_per_s``; starts full."""

    def __init__(self, rate_per_s: float, burst: float, clock: Clock = time.monotonic) -> None:
        _check_rate(rate_per_s, burst)
        self._rate = rate_per_s
        self._burst = burst
        self._clock = clock
        self._tokens = burst
        self._updated = clock()

    @property
    def available(self) -> float:
        self._refill()
        return self._tokens

    def try_acquire(self, tokens: float = 1.0) -> float:
        """Take ``tokens`` and return 0.0, or take nothing and return seconds until possible."""
        if not 0 < tokens <= self._burst:
            raise ValueError(
                f"can only take between 0 and burst={self._burst} tokens, got {tokens}"
            )
        self._refill()
        if self._tokens + _EPSILON >= tokens:
            self._tokens = max(0.0, self._tokens - tokens)
            return 0.0
        return (tokens - self._tokens) / self._rate

    def take_up_to(self, want: int) -> tuple[int, float]:
        """As many whole tokens as are there, up to ``want``: (taken, 0.0), or (0, seconds
        until one is) — how a shared bucket hands out leases."""
        self._refill()
        taken = min(want, math.floor(self._tokens + _EPSILON))
        if taken >= 1:
            self._tokens = max(0.0, self._tokens - taken)
            return taken, 0.0
        return 0, (1.0 - self._tokens) / self._rate

    def _refill(self) -> None:
        now = self._clock()
        # A clock that steps back (an injected one, say) must not drain the bucket.
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        self._updated = now


class TenantLimiter:
    """One bucket and one in-flight counter per tenant.

    Tenants missing from ``limits`` get ``default``; with no default they are unlimited,
    which suits a gateway whose authentication already decides who may call at all.
    """

    def __init__(
        self,
        limits: Mapping[str, RateLimit],
        default: RateLimit | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._limits = dict(limits)
        self._default = default
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._in_flight: dict[str, int] = {}

    def set_limit(self, tenant: str, limit: RateLimit) -> None:
        """Install or change a tenant's allowance; a changed bucket starts full."""
        if self._limits.get(tenant) != limit:
            self._limits[tenant] = limit
            self._buckets.pop(tenant, None)

    def acquire(self, tenant: str, tokens: float = 1.0) -> None:
        """Spend ``tokens`` from the tenant's bucket or raise ``RateLimited``."""
        bucket = self._bucket(tenant)
        if bucket is None:
            return
        retry_after = bucket.try_acquire(tokens)
        if retry_after > 0:
            raise RateLimited(
                f"tenant {tenant!r} is over its request rate; retry in {retry_after:.3f}s",
                retry_after_s=retry_after,
            )

    def lease(self, tenant: str, limit: RateLimit, want: int) -> tuple[int, float]:
        """Up to ``want`` whole tokens of the tenant's bucket at ``limit`` (installed or
        changed first): (taken, 0.0), or (0, seconds until one is)."""
        self.set_limit(tenant, limit)
        bucket = self._bucket(tenant)
        assert bucket is not None  # the limit was just set
        return bucket.take_up_to(want)

    def acquire_slot(self, tenant: str) -> None:
        """Count one more running request, or raise ``TooManyInFlight`` at the cap."""
        limit = self._limit(tenant)
        current = self._in_flight.get(tenant, 0)
        cap = None if limit is None else limit.max_in_flight
        if cap is not None and current >= cap:
            raise TooManyInFlight(f"tenant {tenant!r} already has {current} requests in flight")
        self._in_flight[tenant] = current + 1

    def release_slot(self, tenant: str) -> None:
        current = self._in_flight.get(tenant, 0)
        if current <= 0:
            # A double release would silently raise the tenant's real cap; fail loudly.
            raise ValueError(f"tenant {tenant!r} holds no in-flight slot to release")
        if current == 1:
            del self._in_flight[tenant]
        else:
            self._in_flight[tenant] = current - 1

    @contextmanager
    def slot(self, tenant: str) -> Iterator[None]:
        self.acquire_slot(tenant)
        try:
            yield
        finally:
            self.release_slot(tenant)

    def in_flight(self, tenant: str) -> int:
        return self._in_flight.get(tenant, 0)

    def _limit(self, tenant: str) -> RateLimit | None:
        return self._limits.get(tenant, self._default)

    def _bucket(self, tenant: str) -> TokenBucket | None:
        bucket = self._buckets.get(tenant)
        if bucket is None:
            limit = self._limit(tenant)
            if limit is None:
                return None
            bucket = TokenBucket(limit.rate_per_s, limit.burst, self._clock)
            self._buckets[tenant] = bucket
        return bucket


def _check_rate(rate_per_s: float, burst: float) -> None:
    if not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise ValueError(f"rate_per_s must be a positive finite number, got {rate_per_s}")
    if not (math.isfinite(burst) and burst > 0):
        raise ValueError(f"burst must be a positive finite number, got {burst}")
