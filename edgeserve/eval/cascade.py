"""``edgeserve eval cascade``: the held-out digits through the real agent and gateway.

Measures edge-only, cloud-only and cascade accuracy at the card's calibrated policy,
the escalation rate, p50/p99 of the local and the escalated path, and the escalation
overhead (the agent's gRPC round trip minus the time spent inside the gateway). Then it
sweeps the threshold through the running agent (runtime policy overrides) and writes
the accuracy-vs-escalation and latency-vs-escalation curves as CSV and PNG.
"""

from __future__ import annotations

import csv
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from edgeserve.artifacts import packaged_artifacts
from edgeserve.client import OipHttpClient
from edgeserve.eval.stack import CLOUD_MODEL, start_cascade
from models.data import load_split

EDGE_MODEL = "digits-edge"
SWEEP_RATES = (0.0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
console = Console()


@dataclass
class Run:
    """One pass of the test split through the agent under one policy."""

    label: str
    threshold: float
    accuracy: float
    escalation_rate: float
    degraded: int
    local_p50_ms: float
    local_p99_ms: float
    escalated_p50_ms: float
    escalated_p99_ms: float
    overhead_p50_ms: float
    scores: list[float]


def _percentiles(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    p50, p99 = np.percentile(np.array(values) * 1e3, [50, 99])
    return float(p50), float(p99)


def drive(
    client: OipHttpClient,
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    label: str,
    threshold: float,
    progress: Progress,
) -> Run:
    local, escalated, overhead, scores = [], [], [], []
    correct = degraded = 0
    for row, truth in progress.track(list(zip(x, y, strict=True)), description=label):
        started = time.perf_counter()
        answer = client.infer(EDGE_MODEL, {"input": row[None, :]})
        elapsed = time.perf_counter() - started
        params = answer.parameters
        correct += int(params["prediction"][0] == str(truth))
        scores.append(float(params["confidence"][0]))
        degraded += int(bool(params.get("degraded")))
        if params.get("escalated_rows"):
            escalated.append(elapsed)
            overhead.append((params["escalation_ms"] - params.get("gateway_ms", 0.0)) / 1e3)
        else:
            local.append(elapsed)
    n = len(y)
    return Run(
        label,
        threshold,
        correct / n,
        len(escalated) / n,
        degraded,
        *_percentiles(local),
        *_percentiles(escalated),
        _percentiles(overhead)[0],
        scores,
    )


def cloud_only(url: str, key: str, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> tuple[float, float]:
    """Accuracy and p50 ms of the gateway called directly by an app."""
    latencies, correct = [], 0
    with OipHttpClient(url, headers={"Authorization": f"Bearer {key}"}) as client:
        for row, truth in zip(x, y, strict=True):
            started = time.perf_counter()
            answer = client.infer(CLOUD_MODEL, {"input": row[None, :]})
            latencies.append(time.perf_counter() - started)
            correct += int(answer.parameters["prediction"][0] == str(truth))
    return correct / len(y), _percentiles(latencies)[0]


def run_cascade_eval(
    out: Path, budget_ms: float = 250.0, rows: int | None = None
) -> dict[str, Any]:
    """Run the evaluation, print it, write its files; the figures (``rows``: the first N
    test digits only, for a quick smoke run)."""
    out.mkdir(parents=True, exist_ok=True)
    x, y = load_split(packaged_artifacts(), "test")
    x, y = x[:rows], y[:rows]
    with (
        tempfile.TemporaryDirectory(prefix="edgeserve-eval-") as tmp,
        Progress(console=console, transient=True) as progress,
    ):
        stack = start_cascade(
            Path(tmp), cache_entries="0", latency_budget_ms=str(budget_ms), log_level="WARNING"
        )
        try:
            cloud_accuracy, cloud_p50 = cloud_only(stack.gateway_url, stack.app_key, x, y)
            with OipHttpClient(stack.agent_url, timeout=30) as client:
                policy = client.router_policy(EDGE_MODEL)
                assert policy is not None, "the edge card carries no router policy"
                calibrated = drive(client, x, y, "cascade", policy["threshold"], progress)
                sweep = _sweep(client, policy, calibrated.scores, x, y, progress)
                client.set_router_policy(EDGE_MODEL, None)
        finally:
            stack.stop()
    edge = next(run for run in sweep if run.escalation_rate == 0.0)
    report = {
        "edge_only_accuracy": edge.accuracy,
        "cloud_only_accuracy": cloud_accuracy,
        "cloud_only_p50_ms": cloud_p50,
        "test_rows": len(y),
        "policy": policy,
        "cascade": _public(calibrated),
        "sweep": [_public(run) for run in sweep],
    }
    _print(report, calibrated, sweep)
    _write(out, report, sweep)
    return report


def _sweep(
    client: OipHttpClient,
    policy: dict[str, Any],
    scores: list[float],
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    progress: Progress,
) -> list[Run]:
    """Thresholds at quantiles of the observed scores, applied as runtime overrides."""
    ordered = np.sort(np.array(scores))
    runs = []
    for rate in SWEEP_RATES:
        if rate == 0.0:
            threshold = 0.0
        elif rate == 1.0:
            threshold = 1.0  # scores never exceed 1: this escalates all but exact ties at 1
        else:
            threshold = float(ordered[round(rate * len(ordered))])
        client.set_router_policy(
            EDGE_MODEL, {**policy, "threshold": min(threshold, 1.0), "target_kind": "manual"}
        )
        runs.append(drive(client, x, y, f"sweep {rate:.1%}", threshold, progress))
    return runs


def _public(run: Run) -> dict[str, Any]:
    row = asdict(run)
    row.pop("scores")
    return row


def _print(report: dict[str, Any], calibrated: Run, sweep: list[Run]) -> None:
    rows = report["test_rows"]
    table = Table(title=f"cascade on the test split ({rows} digits, batch 1, real processes)")
    for column in (
        "policy",
        "threshold",
        "escalated",
        "accuracy",
        "local p50/p99 ms",
        "escalated p50/p99 ms",
        "overhead p50 ms",
        "degraded",
    ):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for run in [calibrated, *sweep]:
        table.add_row(
            run.label,
            f"{run.threshold:.4f}",
            f"{run.escalation_rate:.1%}",
            f"{run.accuracy:.2%}",
            f"{run.local_p50_ms:.2f} / {run.local_p99_ms:.2f}",
            f"{run.escalated_p50_ms:.2f} / {run.escalated_p99_ms:.2f}",
            f"{run.overhead_p50_ms:.3f}",
            str(run.degraded),
        )
    console.print(table)
    console.print(
        f"edge-only {report['edge_only_accuracy']:.2%}, cloud-only "
        f"{report['cloud_only_accuracy']:.2%}, cascade {calibrated.accuracy:.2%} at "
        f"{calibrated.escalation_rate:.1%} escalated (target "
        f"{report['policy'].get('target_value')})"
    )


def _write(out: Path, report: dict[str, Any], sweep: list[Run]) -> None:
    (out / "cascade.json").write_text(json.dumps(report, indent=2) + "\n")
    rows = [_public(run) for run in sweep]
    with (out / "sweep.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _plot(out, report, sweep)
    console.print(f"wrote {out}/cascade.json, sweep.csv, accuracy.png, latency.png")


def _plot(out: Path, report: dict[str, Any], sweep: list[Run]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [run.escalation_rate * 100 for run in sweep]
    fig, axis = plt.subplots(figsize=(6, 4))
    axis.plot(rates, [run.accuracy * 100 for run in sweep], "o-", label="cascade")
    axis.axhline(report["cloud_only_accuracy"] * 100, color="green", ls="--", label="cloud only")
    axis.axhline(report["edge_only_accuracy"] * 100, color="gray", ls=":", label="edge only")
    cascade = report["cascade"]
    axis.plot(
        [cascade["escalation_rate"] * 100],
        [cascade["accuracy"] * 100],
        "r*",
        ms=14,
        label="calibrated policy",
    )
    _save(fig, axis, out / "accuracy.png", "accuracy on the test split (%)", "accuracy")
    fig, axis = plt.subplots(figsize=(6, 4))
    for attr, label in (
        ("local_p50_ms", "local p50"),
        ("local_p99_ms", "local p99"),
        ("escalated_p50_ms", "escalated p50"),
        ("escalated_p99_ms", "escalated p99"),
    ):
        axis.plot(rates, [getattr(run, attr) for run in sweep], "o-", label=label)
    _save(fig, axis, out / "latency.png", "request latency through the agent (ms)", "latency")


def _save(fig: Any, axis: Any, path: Path, ylabel: str, what: str) -> None:
    """Label an escalation-rate plot, write it and free it."""
    import matplotlib.pyplot as plt

    axis.set(xlabel="escalated requests (%)", ylabel=ylabel, title=f"{what} vs escalation")
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
