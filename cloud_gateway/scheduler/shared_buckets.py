"""Token buckets shared by every gateway process, kept in one store and spent from leases.

With one bucket per process, a tenant allowed R requests a second gets R per replica (or
per worker process), so its real allowance grows with the autoscaler. Here each tenant
has one bucket in a shared store: Redis for replicas (``redis://``), or the gateway's own
supervisor for the worker processes of one machine (``unix://``, see ``workers``). A
process takes tokens from it in small *leases* (a twentieth of a second of the rate by
default, at least one token, at most the burst) with one atomic script call, and spends
them locally, so the hot path pays a Redis round trip once per lease, not per request.

What this guarantees: tokens are minted only by the shared bucket (refilled by the
store's own clock, so replicas' clocks do not matter), so all processes together never admit more
than ``burst + rate * t`` requests in any ``t`` seconds. A lease not spent within
``lease_s`` expires unused, so a replica can only under-admit, by at most one lease per
``lease_s``. In-flight caps stay per replica (they bound the work one process holds).

If the store cannot be reached, each process falls back to a local bucket at the tenant's
full rate (the one-process semantics) rather than refusing everyone; each fallback is
counted (``fallbacks``) and logged at most once per ``log_interval_s``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cloud_gateway.scheduler.token_bucket import RateLimit, TenantLimiter
from edgeserve.logs import LogThrottle
from edgeserve.wire.errors import RateLimited, shown

log = logging.getLogger(__name__)

# Refill from Redis's clock, grant up to ARGV[3] whole tokens, and say how long until
# the next one. Floats travel as strings: Redis truncates Lua numbers to integers.
_TAKE = """
local rate, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local granted = math.min(want, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 60000)
local wait = 0
if granted < 1 then wait = (1 - tokens) / rate end
return {granted, tostring(wait)}
"""


@dataclass(slots=True)
class _Lease:
    tokens: int = 0
    expires_at: float = 0.0


class LeaseStore(Protocol):
    """Where the shared buckets live: grants up to ``want`` whole tokens of a tenant's
    bucket, returning (granted, seconds until the next token when none was granted)."""

    async def take(self, tenant: str, limit: RateLimit, want: int) -> tuple[int, float]: ...

    async def close(self) -> None: ...


class RedisStore:
    """The buckets in Redis (``redis://`` or ``rediss://``), one atomic script per lease."""

    def __init__(self, url: str, timeout_s: float, prefix: str = "edgeserve:bucket:") -> None:
        import redis.asyncio as aioredis

        self._redis: Any = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._script = self._redis.register_script(_TAKE)
        self._prefix = prefix

    async def take(self, tenant: str, limit: RateLimit, want: int) -> tuple[int, float]:
        granted, wait = await self._script(
            keys=[self._prefix + tenant], args=[limit.rate_per_s, limit.burst, want]
        )
        return int(granted), float(wait)

    async def close(self) -> None:
        await self._redis.aclose()


def open_store(url: str, timeout_s: float = 0.25) -> LeaseStore:
    """The store a ``rate_limit_store`` URL names."""
    if url.startswith(("redis://", "rediss://")):
        return RedisStore(url, timeout_s)
    if url.startswith("unix://"):
        from cloud_gateway.scheduler.lease_server import SupervisorStore

        return SupervisorStore(url.removeprefix("unix://"), timeout_s)
    raise ValueError(f"rate_limit_store must be redis://, rediss:// or unix://, got {url[:64]!r}")


class SharedRateLimiter:
    """Token buckets shared through the store at ``url`` (see ``open_store``)."""

    def __init__(
        self,
        url: str,
        *,
        lease_s: float = 0.05,
        timeout_s: float = 0.25,
        log_interval_s: float = 30.0,
        on_fallback: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = open_store(url, timeout_s)
        self._lease_s = lease_s
        self._clock = clock
        self._leases: dict[str, _Lease] = {}
        self._empty_until: dict[str, float] = {}
        self._pending: dict[str, asyncio.Future[float]] = {}
        self._fallback = TenantLimiter({}, clock=clock)  # this process's own buckets
        self._warnings = LogThrottle(log, log_interval_s, clock)
        self._on_fallback = on_fallback
        self.fallbacks = 0
        self.store_calls = 0

    async def acquire(self, tenant: str, limit: RateLimit) -> None:
        """Spend one of the tenant's tokens or raise ``RateLimited`` with Retry-After."""
        while True:
            now = self._clock()
            lease = self._leases.get(tenant)
            if lease is not None and lease.tokens > 0 and lease.expires_at > now:
                lease.tokens -= 1
                return
            # The store said the bucket is empty until then: a flood is refused here, at
            # no cost to the store, instead of one round trip per refused request.
            empty_until = self._empty_until.get(tenant, 0.0)
            wait = empty_until - now if empty_until > now else await self._refill(tenant, limit)
            if wait > 0:
                self._empty_until[tenant] = max(empty_until, now + wait)
                raise RateLimited(
                    f"tenant {shown(tenant)!r} is over its request rate (all processes); "
                    f"retry in {wait:.3f}s",
                    retry_after_s=wait,
                )

    async def close(self) -> None:
        await self._store.close()

    async def _refill(self, tenant: str, limit: RateLimit) -> float:
        """One lease for every request of this tenant that found none: 0.0 when tokens
        arrived, else the seconds until the bucket has one."""
        pending = self._pending.get(tenant)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pending[tenant] = future
        try:
            wait = await self._lease(tenant, limit)
            future.set_result(wait)
            return wait
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._pending[tenant]

    async def _lease(self, tenant: str, limit: RateLimit) -> float:
        size = max(1, min(int(limit.burst), math.ceil(limit.rate_per_s * self._lease_s)))
        self.store_calls += 1
        try:
            granted, wait = await self._store.take(tenant, limit, size)
        except Exception as exc:  # any store failure: this process's own bucket instead
            return self._local(tenant, limit, exc)
        if granted <= 0:
            return max(wait, 1e-3)
        self._leases[tenant] = _Lease(granted, self._clock() + self._lease_s)
        return 0.0

    def _local(self, tenant: str, limit: RateLimit, error: Exception) -> float:
        self.fallbacks += 1
        if self._on_fallback is not None:
            self._on_fallback()
        now = self._clock()
        reason = shown(f"{type(error).__name__}: {error}", 300)
        message = "rate-limit store unreachable; limiting per process"
        self._warnings.log(logging.WARNING, "store", message, {"error": reason})
        granted, wait = self._fallback.lease(tenant, limit, 1)
        if granted:  # the token is spent here: hand it over as a one-token lease
            self._leases[tenant] = _Lease(1, now + self._lease_s)
        return wait
