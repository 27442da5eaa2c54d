"""The fleet benchmark's rows and its output: rich tables, CSV, JSON and a PNG plot."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from edgeserve.bench.telemetry import GOAL_RECORDS_PER_S

MODEL = "digits-edge"
MODES = ("full", "delta")


@dataclass(frozen=True, slots=True)
class RolloutRow:
    devices: int
    mode: str  # "delta": v1 registered, so a delta may win; "full": v1 unknown
    encoding: str  # as the service issued it (``updates_issued_total`` by encoding)
    payload_bytes: int  # update chunk bytes the service published, all devices together
    chunks: int
    upload_s: float  # artifact upload + golden self-test computed by the service
    rollout_s: float  # rollout started -> completed, polled every 0.1 s
    install_p50_s: float  # per device: rollout created -> device marked installed
    install_p99_s: float
    state: str


@dataclass(frozen=True, slots=True)
class TelemetryRow:
    path: str
    devices: int
    records: int
    batches: int
    resends: int
    seconds: float
    records_per_s: float


@dataclass
class FleetBenchResult:
    machine: dict[str, Any]
    rollouts: list[RolloutRow]
    telemetry: list[TelemetryRow]


def rollout_table(rows: list[RolloutRow]) -> Table:
    table = Table(title=f"time to update N agents ({MODEL}, canary = N, one stage)")
    for column in ("N", "mode", "payload issued", "bytes sent", "chunks", "upload s",
                   "rollout s", "install p50 s", "install p99 s", "state"):  # fmt: skip
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            str(r.devices), r.mode, r.encoding, f"{r.payload_bytes:,}", str(r.chunks),
            f"{r.upload_s:.2f}", f"{r.rollout_s:.2f}", f"{r.install_p50_s:.2f}",
            f"{r.install_p99_s:.2f}", r.state,
        )  # fmt: skip
    return table


def telemetry_table(rows: list[TelemetryRow]) -> Table:
    table = Table(title=f"telemetry ingest (goal {GOAL_RECORDS_PER_S:,} records/s)")
    for column in ("path", "devices", "records", "batches", "resends", "seconds", "records/s"):
        table.add_column(column, justify="right")
    for r in rows:
        colour = "green" if r.records_per_s >= GOAL_RECORDS_PER_S else "red"
        table.add_row(
            r.path, str(r.devices), f"{r.records:,}", str(r.batches), str(r.resends),
            f"{r.seconds:.2f}", f"[{colour}]{r.records_per_s:,.0f}[/]",
        )  # fmt: skip
    return table


def write_results(result: FleetBenchResult, out_dir: Path) -> None:
    for name, rows in (("rollouts", result.rollouts), ("telemetry", result.telemetry)):
        dicts = [asdict(row) for row in rows]
        with (out_dir / f"{name}.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(dicts[0]))
            writer.writeheader()
            writer.writerows(dicts)
    (out_dir / "results.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    _plot(result, out_dir / "fleet.png")


def _plot(result: FleetBenchResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    sizes = sorted({r.devices for r in result.rollouts})
    positions = np.arange(len(sizes))
    for offset, mode in zip((-0.2, 0.2), MODES, strict=True):
        found = {r.devices: r for r in result.rollouts if r.mode == mode}
        label = next((f"{mode}: {r.encoding.split('x')[0]}" for r in found.values()), mode)
        left.bar(positions + offset, [found[n].rollout_s for n in sizes], 0.4, label=label)
    left.set_xticks(positions, [f"N = {n}" for n in sizes])
    left.set_ylabel("seconds, rollout start -> completed")
    left.set_title("time to update N agents", fontsize=9)
    left.legend(fontsize=8)
    names = [r.path for r in result.telemetry]
    right.barh(names, [r.records_per_s for r in result.telemetry], color="tab:green")
    right.axvline(GOAL_RECORDS_PER_S, color="grey", linestyle=":", label="goal")
    right.set_xlabel("records per second, ingested and acknowledged")
    right.set_title(f"telemetry ingest, {result.telemetry[0].devices} devices", fontsize=9)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
