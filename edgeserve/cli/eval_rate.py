"""``edgeserve eval rate-hold``: the held escalation rate on shifted streams, as a table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from edgeserve.eval.rate_hold import STREAM, WARM_UP, run_rate_hold


def eval_rate_hold(out: Path, stream_seeds: int) -> dict[str, Any]:
    report = run_rate_hold(out, stream_seeds)
    title = (
        f"held escalation rate, {STREAM}-digit streams x {stream_seeds} seeds, "
        f"after the first {WARM_UP}"
    )
    table = Table(title=title)
    columns = ("stream", "target", "realised (mean)", "worst |error|", "card threshold fixed")
    for column in (*columns, "cascade accuracy"):
        table.add_column(column, justify="left" if column == "stream" else "right")
    for shift, rows in report.items():
        if not isinstance(rows, dict):
            continue
        for target, row in rows.items():
            table.add_row(
                shift,
                f"{float(target):.0%}",
                f"{row['realised_mean']:.2%}",
                f"{row['worst_error'] * 100:.2f} pt",
                f"{row['fixed_threshold_rate']:.2%}",
                f"{row['accuracy_mean']:.2%}",
            )
    Console().print(table)
    Console().print(f"wrote {out / 'rate_hold.json'}")
    return report
