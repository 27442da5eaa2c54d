"""The demo's cascade part: the calibrated router, then the gateway killed mid-run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from edgeserve.client import OipHttpClient
from edgeserve.eval.cascade import drive
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
        _cascade_run(console, client, x, y, float(policy.get("threshold", 0.0)))
        _kill_and_recover(console, client, stack, workdir, x)


def _cascade_run(
    console: Console,
    client: OipHttpClient,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    threshold: float,
) -> None:
    with Progress(console=console, transient=True) as progress:
        run = drive(client, x, y, "cascade", threshold, progress)
    table = Table("path", "share", "p50 ms", "p99 ms")
    table.add_row(
        "answered locally",
        f"{1 - run.escalation_rate:.1%}",
        f"{run.local_p50_ms:.2f}",
        f"{run.local_p99_ms:.2f}",
    )
    table.add_row(
        "escalated to the cloud",
        f"{run.escalation_rate:.1%}",
        f"{run.escalated_p50_ms:.2f}",
        f"{run.escalated_p99_ms:.2f}",
    )
    console.print(table)
    console.print(
        f"cascade accuracy {run.accuracy:.2%} with {run.escalation_rate:.1%} escalated; "
        f"escalation overhead (gRPC round trip minus gateway time) p50 "
        f"{run.overhead_p50_ms:.2f} ms"
    )
    label = f'{{model="{MODEL}"}}'
    target = client.metric(f"edgeserve_agent_router_target_rate{label}")
    if target:
        # The card's threshold was only the start: the agent tracks the live score quantile.
        console.print(
            f"held rate: target {target:.0%}, realised over the agent's window "
            f"{client.metric(f'edgeserve_agent_router_escalation_rate{label}'):.1%}, threshold "
            f"moved from {threshold:.4f} to "
            f"{client.metric(f'edgeserve_agent_router_threshold{label}'):.4f} (no labels used)"
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
        f"breaker opened {client.metric('edgeserve_agent_breaker_opened_total'):.0f} time(s)"
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
        f"{client.metric('edgeserve_agent_breaker_open'):.0f})"
    )
    client.set_router_policy(MODEL, None)


def _timed(client: OipHttpClient, row: npt.NDArray[np.float32]) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    answer = client.infer(
        MODEL, {"input": row[None, :]}, parameters={"timeout": FAULT_BUDGET_MS * 1e3}
    )
    return answer.parameters, (time.perf_counter() - started) * 1e3
