"""Rate limits that mean what they say with several replicas: one bucket per tenant in a
real Redis, spent from local leases, and each replica on its own when Redis is gone."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest

from cloud_gateway.scheduler import RateLimit
from cloud_gateway.scheduler.shared_buckets import SharedRateLimiter
from edgeserve.processes import free_port
from edgeserve.wire.errors import RateLimited

pytestmark = pytest.mark.integration
LIMIT = RateLimit(rate_per_s=50.0, burst=10.0)


async def hammer(replicas: list[SharedRateLimiter], seconds: float) -> tuple[int, int, float]:
    """Ask every replica in turn as fast as they answer: (admitted, refused, elapsed)."""
    admitted = refused = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        for replica in replicas:
            try:
                await replica.acquire("acme", LIMIT)
                admitted += 1
            except RateLimited as refusal:
                assert refusal.retry_after_s > 0
                refused += 1
    return admitted, refused, time.monotonic() - started


def test_two_replicas_together_admit_no_more_than_one_tenants_allowance(redis_url):
    async def scenario() -> tuple[int, int, float]:
        replicas = [SharedRateLimiter(redis_url), SharedRateLimiter(redis_url)]
        try:
            return await hammer(replicas, 1.0)
        finally:
            await asyncio.gather(*(r.close() for r in replicas))

    admitted, refused, elapsed = asyncio.run(scenario())
    allowance = LIMIT.burst + LIMIT.rate_per_s * elapsed
    assert admitted <= allowance + 1  # never more than one tenant's allowance in all
    assert admitted >= 0.6 * LIMIT.rate_per_s * elapsed  # and not starved either
    assert refused > admitted  # the hammer asked for far more than that


def test_admitted_requests_cost_one_redis_call_per_lease_not_per_request(redis_url):
    generous = RateLimit(rate_per_s=2000.0, burst=2000.0)

    async def scenario() -> tuple[int, int]:
        replica = SharedRateLimiter(redis_url, lease_s=0.05)
        try:
            for _ in range(1000):
                await replica.acquire("acme", generous)
            return 1000, replica.store_calls
        finally:
            await replica.close()

    admitted, calls = asyncio.run(scenario())
    assert calls <= admitted / 50  # leases of 0.05 s x 2000/s = 100 tokens


def test_an_unreachable_store_leaves_each_replica_limiting_on_its_own():
    async def scenario() -> tuple[int, int]:
        replica = SharedRateLimiter(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.1)
        admitted = 0
        try:
            for _ in range(int(LIMIT.burst) + 5):
                try:
                    await replica.acquire("acme", LIMIT)
                    admitted += 1
                except RateLimited:
                    pass
            return admitted, replica.fallbacks
        finally:
            await replica.close()

    admitted, fallbacks = asyncio.run(scenario())
    assert admitted == LIMIT.burst  # the local bucket: burst, then refusals
    assert fallbacks >= admitted


def test_two_gateway_processes_on_one_store_share_a_tenants_rate(start_gateway, redis_url, digits):
    tenant = {"acme": {"rate_per_s": 20.0, "burst": 20.0, "max_in_flight": 100}}
    gateways = [start_gateway(tenant, rate_limit_store=redis_url) for _ in range(2)]
    x, _ = digits
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                        "data": np.asarray(x[0], np.float32).tolist()}]}  # fmt: skip
    statuses: list[int] = []
    clients = [httpx.Client(base_url=g.http, headers=g.headers("acme")) for g in gateways]
    started = time.monotonic()
    try:
        for _ in range(60):
            for client in clients:
                reply = client.post("/v2/models/digits-cloud/infer", json=body)
                statuses.append(reply.status_code)
    finally:
        for client in clients:
            client.close()
    elapsed = time.monotonic() - started
    admitted = statuses.count(200)
    assert set(statuses) <= {200, 429}
    assert admitted <= 20 + 20 * elapsed + 1, (admitted, elapsed)
    assert statuses.count(429) > 0


def test_a_refused_flood_is_answered_locally_until_the_bucket_refills(redis_url):
    slow = RateLimit(rate_per_s=2.0, burst=1.0)

    async def scenario() -> tuple[int, int]:
        replica = SharedRateLimiter(redis_url)
        refused = 0
        try:
            await replica.acquire("acme", slow)
            for _ in range(500):
                try:
                    await replica.acquire("acme", slow)
                except RateLimited:
                    refused += 1
            return refused, replica.store_calls
        finally:
            await replica.close()

    refused, calls = asyncio.run(scenario())
    assert refused == 500
    assert calls <= 3  # the first lease, the refill that found it empty, maybe one more
