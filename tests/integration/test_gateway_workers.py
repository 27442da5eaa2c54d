"""Several gateway worker processes on one port: both answer, a scrape sees them all, a
tenant's rate holds across them, and a dead worker is replaced while the others serve."""

from __future__ import annotations

import os
import signal
import time

import httpx
import numpy as np
import pytest

from edgeserve.polling import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
INFER = "/v2/models/digits-cloud/infer"


def body(digits) -> dict[str, object]:
    x, _ = digits
    row = np.asarray(x[0], np.float32)
    return {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                        "data": row.tolist()}]}  # fmt: skip


def fresh_connection_posts(gateway, tenant: str, payload: dict[str, object], n: int) -> list[int]:
    """``n`` requests, each on a new connection, so the kernel spreads them over workers."""
    statuses = []
    for _ in range(n):
        with httpx.Client(base_url=gateway.http, headers=gateway.headers(tenant)) as client:
            statuses.append(client.post(INFER, json=payload).status_code)
    return statuses


def worker_pids(gateway) -> set[int]:
    files = (gateway.state_dir / "run" / "metrics").glob("counter_*.db")
    return {int(path.stem.split("_")[1]) for path in files}


def ok_requests(gateway) -> float:
    text = httpx.get(f"{gateway.http}/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("edgeserve_gateway_requests_total{") and 'outcome="ok"' in line
    )


def test_two_workers_share_one_port_and_one_scrape_counts_both(start_gateway, digits):
    gateway = start_gateway({"app": {"rate_per_s": 1000.0, "burst": 1000.0}}, workers="2")
    statuses = fresh_connection_posts(gateway, "app", body(digits), 40)
    assert statuses == [200] * 40
    assert len(worker_pids(gateway)) == 2  # both workers answered requests
    assert ok_requests(gateway) == 40  # and whichever answers the scrape sums both


def test_a_tenants_rate_holds_across_workers(start_gateway, digits):
    tenants = {"acme": {"rate_per_s": 10.0, "burst": 10.0, "max_in_flight": 100}}
    gateway = start_gateway(tenants, workers="2")
    started = time.monotonic()
    statuses = fresh_connection_posts(gateway, "acme", body(digits), 60)
    elapsed = time.monotonic() - started
    assert set(statuses) <= {200, 429}
    assert statuses.count(200) <= 10 + 10 * elapsed + 1, (statuses.count(200), elapsed)


def test_a_killed_worker_is_replaced_and_the_others_keep_serving(start_gateway, digits):
    gateway = start_gateway({"app": {"rate_per_s": 1000.0, "burst": 1000.0}}, workers="2")
    fresh_connection_posts(gateway, "app", body(digits), 20)
    victim = min(worker_pids(gateway))
    os.kill(victim, signal.SIGKILL)
    assert fresh_connection_posts(gateway, "app", body(digits), 20) == [200] * 20
    wait_until(lambda: len(worker_pids(gateway) - {victim}) == 2 or None, 60.0,
               "a replacement worker answering requests", interval=0.2)  # fmt: skip
