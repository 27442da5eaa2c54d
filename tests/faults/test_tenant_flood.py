"""A tenant floods the gateway: another tenant keeps every answer and a bounded p99.

Tenant A (limited to 100 req/s) floods at 10x its limit from many concurrent clients
in a separate load-generator process; tenant B sends 50 req/s, once alone and once during
the flood, in the same run and against the same gateway process. B's p99 ratio (flood /
alone) is recorded. The bound asserted is generous: fair queueing keeps B out of A's
queue, but refusing A's excess still costs CPU on the same two cores, and the benchmark
(``edgeserve bench gateway``) has measured ratios from 1.85x to far worse on a busy box.
What must hold whatever the load: B loses no request and A gets throttled, to its own
rate: with one gateway process, and with two worker processes on one port, whose
supervisor holds the token buckets (A's rate must not double with the workers).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeserve.bench import loadgen as lg
from edgeserve.bench.gateway_harness import A_LIMIT, Gateway, build_repository, running_gateway
from edgeserve.polling import wait_until
from tests.faults.conftest import Figures

pytestmark = [pytest.mark.faults, pytest.mark.integration]

B_RATE = 50.0
WINDOW_S = 3.0
# Generous on purpose: see the module docstring. A scheduler with no fairness at all
# queues B behind hundreds of A's requests (seconds of p99, ratios in the hundreds).
P99_RATIO_BOUND = 40.0


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "two-workers"])
def workers(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture(scope="module")
def gateway(workers: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("tenant-flood")
    build_repository(workdir / "models")
    settings = {"preload": '["digits-cloud"]', "workers": str(workers)}
    with running_gateway(workdir, "flood", **settings) as running:
        yield running


def tenant_b(gateway: Gateway, out: Path, seconds: float = WINDOW_S) -> dict[str, Any]:
    options = {"rate": B_RATE, "concurrency": 8, "duration": seconds}
    result: dict[str, Any] = gateway.loadgen("grpc", "digits-cloud", out, "tenant-b", **options)
    return result


def throttled(gateway: Gateway) -> float:
    return sum(
        value
        for (name, _, _), value in gateway.metrics().items()
        if name == "edgeserve_gateway_throttled_total"
    )


def test_a_flooding_tenant_leaves_the_other_every_answer_and_a_bounded_p99(
    gateway: Gateway, workers: int, tmp_path: Path, figures: Figures
) -> None:
    suffix = "" if workers == 1 else f"_{workers}_workers"
    tenant_b(gateway, tmp_path / "warm.json", seconds=1.0)  # connections, model and caches warm
    alone = tenant_b(gateway, tmp_path / "alone.json")
    options = {"rate": 10 * A_LIMIT, "concurrency": 64, "connections": 8, "duration": WINDOW_S + 3}
    argv = lg.command(
        "grpc",
        gateway.address("grpc"),
        "digits-cloud",
        gateway.keys["tenant-a"],
        tmp_path / "a.json",
        **options,
    )
    before = throttled(gateway)
    flood = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: throttled(gateway) > before + 50, 30, "tenant A to be flooding")
        shared = tenant_b(gateway, tmp_path / "shared.json")
    finally:
        errors = flood.communicate(timeout=WINDOW_S + 90)[1]
    assert flood.returncode == 0, errors.decode()[-2000:]
    a = json.loads((tmp_path / "a.json").read_text())
    ratio = shared["latency_ms"]["p99"] / alone["latency_ms"]["p99"]
    figures.put(
        f"other_tenant_p99_ratio{suffix}",
        round(ratio, 2),
        "x alone",
        f"<= {P99_RATIO_BOUND:.0f} asserted (design goal 1.2)",
    )
    figures.put(f"other_tenant_p99_alone_ms{suffix}", alone["latency_ms"]["p99"], "ms", "measured")
    figures.put(f"other_tenant_p99_flood_ms{suffix}", shared["latency_ms"]["p99"], "ms", "measured")
    assert shared["outcomes"] == {"ok": shared["requests"]}, shared["outcomes"]
    assert a["outcomes"].get("ok", 0) < a["requests"]  # A was held to its limit
    # ...to its own rate, however many processes serve it: burst + rate x time, at most.
    a_window_s = a["requests"] / a["offered_per_s"]
    assert a["outcomes"].get("ok", 0) <= A_LIMIT + A_LIMIT * (a_window_s + 1.0)
    assert ratio <= P99_RATIO_BOUND
