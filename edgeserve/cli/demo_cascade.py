"""The demo's cascade part: the calibrated router, then the gateway killed mid-run."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.progress import track
from rich.table import Table

from edgeserve.client import OipHttpClient
from edgeserve.eval.stack import CascadeStack
from edgeserve.processes import gateway_process

MODEL = "digits-edge"
FAULT_BUDGET_MS = 100.0


def show_cascade(
    console: Console,
    stack: CascadeStack,
    workdir: Path,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
) -> None:
    console.rule("6. the cascade: confident digits answered locally, the rest by the cloud")
    with OipHttpClient(stack.agent_url, timeout=30) as client:
        client.set_router_policy(MODEL, None)  # back to the card's calibrated policy
        policy = client.router_policy(MODEL) or {}
        console.print(
            f"router policy from the card: escalate when {policy.get('score')} < "
            f"{policy.get('threshold', 0):.4f} (target {policy.get('target_kind')} "
            f"{policy.get('target_value')}, calibrated on the calibration split)"
        )
        _cascade_run(console, client, x, y)
        _kill_and_recover(console, client, stack, workdir, x)


def _cascade_run(
    console: Console, client: OipHttpClient, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]
) -> None:
    local: list[float] = []
    escalated: list[float] = []
    overhead: list[float] = []
    correct = 0
    for row, label in track(list(zip(x, y, strict=True)), description="cascade", console=console):
        started = time.perf_counter()
        params = client.infer(MODEL, {"input": row[None, :]}).parameters
        elapsed = (time.perf_counter() - started) * 1e3
        correct += int(params["prediction"][0] == str(label))
        if params.get("escalated_rows"):
            escalated.append(elapsed)
            overhead.append(params["escalation_ms"] - params.get("gateway_ms", 0.0))
        else:
            local.append(elapsed)
    table = Table("path", "requests", "p50 ms", "p99 ms")
    for name, values in (("answered locally", local), ("escalated to the cloud", escalated)):
        p50, p99 = np.percentile(values, [50, 99]) if values else (float("nan"),) * 2
        table.add_row(name, str(len(values)), f"{p50:.2f}", f"{p99:.2f}")
    console.print(table)
    console.print(
        f"cascade accuracy {correct / len(y):.2%} with {len(escalated) / len(y):.1%} escalated; "
        f"escalation overhead (gRPC round trip minus gateway time) p50 "
        f"{np.median(overhead) if overhead else float('nan'):.2f} ms"
    )


def _kill_and_recover(
    console: Console,
    client: OipHttpClient,
    stack: CascadeStack,
    workdir: Path,
    x: npt.NDArray[np.float32],
) -> None:
    console.rule("7. kill -9 the gateway mid-run: every answer still arrives, within budget")
    escalate_all = {
        "score": "max_probability",
        "threshold": 1.0,
        "escalation_model": "digits-cloud",
    }
    client.set_router_policy(MODEL, escalate_all)
    port = stack.gateway.ports["grpc_mtls"]
    stack.gateway.kill()
    answers = [_timed(client, row) for row in x[:60]]
    reasons: dict[str, int] = {}
    for params, _ in answers:
        reason = str(params.get("degraded_reason"))
        reasons[reason] = reasons.get(reason, 0) + 1
    worst = max(elapsed for _, elapsed in answers)
    console.print(
        f"{len(answers)} requests, budget {FAULT_BUDGET_MS:.0f} ms each, gateway dead: "
        f"{len(answers)} answered locally and marked degraded {reasons}, slowest {worst:.1f} ms; "
        f"breaker opened {_metric(client, 'edgeserve_agent_breaker_opened_total'):.0f} time(s)"
    )
    stack.gateway = gateway_process(
        workdir, workdir / "gateway-state", name="gateway-restarted", grpc_mtls_port=str(port)
    )
    stack.gateway.start()
    started = time.monotonic()
    while _timed(client, x[0])[0]["tier"] != "cloud" and time.monotonic() - started < 20:
        pass
    console.print(
        f"gateway restarted: the breaker's half-open probe got through after "
        f"{time.monotonic() - started:.1f}s, escalations flow again (breaker open = "
        f"{_metric(client, 'edgeserve_agent_breaker_open'):.0f})"
    )
    client.set_router_policy(MODEL, None)


def _timed(client: OipHttpClient, row: npt.NDArray[np.float32]) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    answer = client.infer(
        MODEL, {"input": row[None, :]}, parameters={"timeout": FAULT_BUDGET_MS * 1e3}
    )
    return answer.parameters, (time.perf_counter() - started) * 1e3


def _metric(client: OipHttpClient, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", client.metrics(), re.M)
    return float(match.group(1)) if match else 0.0
