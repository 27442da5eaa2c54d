"""The demo's learning loop: one turn on a shifted stream, through the sequential gate.

A fleet of its own (a gateway for escalations, a broker, the sync service, four agents
and a fifth that collects hard examples) sees digits moved one pixel sideways, which
halve the edge model's accuracy. The collector's hard examples reach the sync service;
a new edge version is distilled from them with the cloud model as teacher, and pushed
under the sequential gate while the four agents serve the shifted digits; a version
trained on shuffled labels is pushed the same way and stopped at the canary.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from edgeserve.cli.eval_learning import show_report
from edgeserve.eval.fleet import BrokerKind
from edgeserve.eval.learning_loop import LoopSettings, run_loop


def show_learning(
    console: Console, workdir: Path, broker_kind: BrokerKind = "auto"
) -> dict[str, int]:
    """Run the section; the exit codes of the processes it stopped."""
    console.rule("13. the learning loop: hard examples of a shifted stream, distilled, gated")
    started = time.perf_counter()
    with console.status("learning loop") as status:
        report = run_loop(
            workdir / "learning",
            LoopSettings(broker_kind=broker_kind, rollout_timeout_s=120),
            lambda step: status.update(step),
        )
    show_report(console, report)
    console.print(f"learning loop took {time.perf_counter() - started:.1f}s")
    return report.exit_codes
