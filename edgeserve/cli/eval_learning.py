"""``edgeserve eval learning-loop`` and the demo's turn of it: the loop's figures as tables."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgeserve.eval.learning_fleet import RolloutOutcome
from edgeserve.eval.learning_loop import LoopReport, LoopSettings, run_loop


def eval_learning_loop(out: Path, settings: LoopSettings) -> int:
    """Run one turn on a real fleet, print and write its figures; 0 when every goal is met."""
    console = Console()
    with (
        tempfile.TemporaryDirectory(prefix="edgeserve-loop-") as scratch,
        console.status("learning loop") as status,
    ):
        report = run_loop(Path(scratch), settings, lambda step: status.update(step))
    show_report(console, report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "learning_loop.json").write_text(json.dumps(report.as_dict(), indent=1) + "\n")
    console.print(f"wrote {out / 'learning_loop.json'}")
    return 0 if all(report.goals().values()) else 1


def show_report(console: Console, report: LoopReport) -> None:
    figures = report.figures
    console.print(
        f"{report.hard_examples} hard examples uploaded by the collector in"
        f" {report.collect_s:.1f} s; two versions distilled in {report.distill_s:.1f} s"
    )
    table = Table(
        title="edge versions on the test digits (cloud on the shift:"
        f" {figures.cloud_shift_accuracy:.1%})"
    )
    columns = ("version", "clean", "shifted", f"cascade at {figures.rate:.0%}", "rate to match v1")
    for column in columns:
        table.add_column(column, justify="left" if column == "version" else "right")
    rows = [("served v1", figures.served)] + [
        (f"{name} v{f.version}", f) for name, f in figures.others.items()
    ]
    for name, f in rows:
        table.add_row(
            name,
            f"{f.clean_accuracy:.2%}",
            f"{f.shift_accuracy:.2%}",
            f"{f.cascade_accuracy:.2%}",
            f"{f.rate_for_served_accuracy:.1%}",
        )
    console.print(table)
    for name, outcome in (("distilled v2", report.good), ("shuffled v3", report.bad)):
        console.print(_rollout_line(name, outcome))
    for goal, met in report.goals().items():
        console.print(f"  {'[green]met[/green]' if met else '[red]missed[/red]'}  {goal}")


def _rollout_line(name: str, outcome: RolloutOutcome) -> str:
    stages = ", ".join(f"stage {stage} at {at:.1f}s" for stage, at in outcome.stages)
    counts = ", ".join(f"{state} {n}" for state, n in outcome.counts.items() if n)
    canary = outcome.gate.get("0", {}).get("reason", "")
    return (
        f"{name}: [bold]{outcome.state}[/bold] after {outcome.seconds:.1f} s and"
        f" {outcome.requests} requests, {outcome.failed} failed ({stages}; {counts});"
        f" at the canary: {canary}"
    )
