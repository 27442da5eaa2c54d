"""The tables ``edgeserve fleet`` prints: one function per view, rows from the admin API.

Kept apart from the commands so each command is only "fetch, then print as a table or
as JSON"; ``state`` and ``ago`` are the shared cell formats.
"""

from __future__ import annotations

import time
from typing import Any

from rich.table import Table


def rollouts_table(views: list[dict[str, Any]]) -> Table:
    table = Table(
        "id",
        "model",
        "version",
        "group",
        "state",
        "stage",
        "installed",
        "failed",
        "updated",
        "reason",
    )
    for view in views:
        counts = view.get("counts", {})
        table.add_row(
            str(view["id"]),
            view["model"],
            view["version"],
            view["group"] or "(all)",
            state(view["state"]),
            f"{view['stage'] + 1}/{len(view['stage_sizes'])}",
            f"{counts.get('installed', 0)}/{len(view['devices'])}",
            str(counts.get("failed", 0)),
            ago(view["updated"]),
            view["reason"],
        )
    return table


def rollout_devices_table(view: dict[str, Any]) -> Table:
    table = Table("device", "stage", "from", "state", "reason", "updated")
    for device in view["devices"]:
        table.add_row(
            device["device_id"],
            str(device["stage"] + 1),
            device["from_version"] or "-",
            state(device["state"]),
            device["reason"],
            ago(device["updated"]),
        )
    return table


def devices_table(rows: list[dict[str, Any]]) -> Table:
    table = Table("device", "group", "online", "last seen", "running", "agent", "cert expires")
    for row in rows:
        running = ", ".join(f"{name}={m['version']}" for name, m in sorted(row["running"].items()))
        table.add_row(
            row["device_id"],
            row["group"],
            "[green]yes[/green]" if row["online"] else "no",
            ago(row["last_seen"]),
            running or "-",
            row["agent_version"] or "-",
            "[red]revoked[/red]"
            if row.get("cert_revoked")
            else expires_in(row.get("cert_not_after")),
        )
    return table


def certs_table(rows: list[dict[str, Any]]) -> Table:
    table = Table("device", "serial", "expires", "renewal", "revoked")
    for row in rows:
        table.add_row(
            row["device_id"],
            row["serial"][:16] or "-",
            expires_in(row["not_after"] or None),
            "[yellow]waiting for approval[/yellow]" if row["pending_since"] else "-",
            "[red]yes[/red]" if row["revoked_at"] else "no",
        )
    return table


def telemetry_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(
        "model",
        "version",
        "devices",
        "requests",
        "escalated",
        "agreement",
        "p50 ms",
        "p99 ms",
        "errors",
        "dropped",
    )
    for row in rows:
        agreement = row["agreement"]
        table.add_row(
            row["model"],
            row["version"],
            str(row["devices"]),
            str(row["requests"]),
            f"{row['escalation_rate']:.1%}",
            "-" if agreement is None else f"{agreement:.1%}",
            f"{row['p50_latency_ms']:.2f}",
            f"{row['p99_latency_ms']:.2f}",
            f"{row['error_rate']:.2%}",
            str(row["dropped"]),
        )
    return table


def state(state: str) -> str:
    colour = {
        "completed": "green",
        "installed": "green",
        "running": "cyan",
        "assigned": "cyan",
        "halted": "red",
        "failed": "red",
        "rolled_back": "yellow",
    }.get(state, "white")
    return f"[{colour}]{state}[/{colour}]"


def expires_in(not_after: float | None, now: float | None = None) -> str:
    """Days to a certificate's expiry (red within a week), or "expired"."""
    if not not_after:
        return "-"
    seconds = not_after - (time.time() if now is None else now)
    if seconds <= 0:
        return "[red]expired[/red]"
    days = seconds / 86400
    text = f"{days:.0f} days" if days >= 2 else f"{seconds / 3600:.1f} h"
    return f"[red]{text}[/red]" if days < 7 else text


def ago(ts: float) -> str:
    if not ts:
        return "never"
    seconds = max(0.0, time.time() - ts)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"
