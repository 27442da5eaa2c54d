"""``edgeserve eval cascade --seeds``: the seeded sweep, printed as a table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from edgeserve.eval.seeds import parse_seeds, run_seeded_eval


def eval_seeds(seeds: str, out: Path) -> dict[str, Any]:
    console = Console()
    chosen = parse_seeds(seeds)
    summary = run_seeded_eval(chosen, out, lambda message: console.print(message))
    console.print(seeds_table(summary))
    console.print(f"wrote {out}/seeds.json, seeds.csv, seeds.png")
    return summary


def seeds_table(summary: dict[str, Any]) -> Table:
    """Per score: mean [95% bootstrap interval] over the seeds."""
    count = len(summary["seeds"])
    cloud = summary["cloud_accuracy"]
    table = Table(title=f"router scores over {count} builds; cloud alone {_stat(cloud)}")
    columns = ("score", "acc @5%", "acc @10%", "acc @15%", "esc. for cloud acc")
    for column in (*columns, ">= cloud @10%", "calibrated-10% rate"):
        table.add_column(column, justify="left" if column == "score" else "right")
    for name, row in summary["scores"].items():
        matches = row["matches_cloud_at_10"]
        low, high = matches["ci95"]
        table.add_row(
            name,
            _stat(row["accuracy_at_0.05"]),
            _stat(row["accuracy_at_0.10"]),
            _stat(row["accuracy_at_0.15"]),
            _stat(row["needed_for_cloud"]),
            f"{matches['count']}/{matches['of']} [{low:.0f}-{high:.0f}]",
            _stat(row["calibrated_10_rate"]),
        )
    return table


def _stat(stat: dict[str, Any]) -> str:
    low, high = stat["ci95"]
    return f"{stat['mean']:.2%} [{low:.2%}, {high:.2%}]"
