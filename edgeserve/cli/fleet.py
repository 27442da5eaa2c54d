"""``edgeserve fleet``: push model versions to the fleet and watch rollouts, over the admin API.

Every command talks to a running sync service (``edgeserve sync run``) at ``--url`` with
the admin token it wrote on first start (``--token``, ``EDGESERVE_FLEET_TOKEN`` or
``--token-file``, by default ``admin.token`` in the sync state directory).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from edgeserve.cli import fleet_tables as tables
from edgeserve.cli.fleet_broker import broker_app

fleet_app = typer.Typer(no_args_is_help=True, help="Fleet rollouts over the sync service.")
rollout_app = typer.Typer(no_args_is_help=True, help="One rollout.")
fleet_app.add_typer(rollout_app, name="rollout")
fleet_app.add_typer(broker_app, name="broker")
# In a pipe rich would cut tables to 80 columns; a script reading them wants every cell.
console = Console(width=None if sys.stdout.isatty() else 10_000)
JsonOption = Annotated[bool, typer.Option("--json", help="print the admin API's JSON")]
TERMINAL = {"completed", "halted", "rolled_back", "superseded"}


@dataclass
class _Target:
    url: str
    token: str | None
    token_file: Path | None
    state_dir: Path | None

    def client(self) -> Any:
        from sync.admin_client import AdminClient, load_token

        return AdminClient(self.url, load_token(self.token, self.token_file, self.state_dir))


@fleet_app.callback()
def _connect(
    ctx: typer.Context,
    url: Annotated[
        str, typer.Option(envvar="EDGESERVE_FLEET_URL", help="admin API of the sync service")
    ] = "http://127.0.0.1:8720",
    token: Annotated[
        str | None, typer.Option(help="admin token (or EDGESERVE_FLEET_TOKEN)")
    ] = None,
    token_file: Annotated[Path | None, typer.Option(help="file holding the admin token")] = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="the sync service's state directory (finds its token)")
    ] = None,
) -> None:
    if state_dir is None and token_file is None:
        from sync.config import SyncConfig

        state_dir = SyncConfig().state_dir
    ctx.obj = _Target(url, token, token_file, state_dir)


def _call(ctx: typer.Context, operation: Callable[[Any], Any]) -> Any:
    """Run one client call; an error the service sent becomes a red line and exit code 1."""
    from edgeserve.wire.errors import EdgeServeError

    target: _Target = ctx.obj
    try:
        with target.client() as client:
            return operation(client)
    except EdgeServeError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from None


# -- push -------------------------------------------------------------------------------


def parse_canary(text: str) -> int | float:
    """``"3"`` → 3 devices, ``"10%"`` → a fraction of 0.1."""
    if text.endswith("%"):
        return float(text[:-1]) / 100
    return int(text)


def parse_stages(text: str) -> list[float]:
    """``"50,100"`` → ``[0.5, 1.0]`` (percent of the group, cumulative)."""
    return [float(part) / 100 for part in text.split(",") if part.strip()]


@fleet_app.command()
def push(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="model artifact")],
    model: Annotated[str, typer.Option(help="model name on the devices")],
    version: Annotated[str, typer.Option(help="new version (dotted integers)")],
    card: Annotated[Path | None, typer.Option(help="model card (default: beside FILE)")] = None,
    group: Annotated[str | None, typer.Option(help="device group (default: all)")] = None,
    canary: Annotated[str, typer.Option(help="canary devices: N or P%")] = "1",
    stages: Annotated[str, typer.Option(help="cumulative % after the canary")] = "50,100",
    soak: Annotated[float | None, typer.Option(help="seconds each stage soaks")] = None,
    max_failures: Annotated[int | None, typer.Option(help="failures that halt it")] = None,
    wait: Annotated[bool, typer.Option(help="follow the rollout until it ends")] = False,
    gate: Annotated[
        str, typer.Option(help="threshold, or sequential: promote when not worse than the old")
    ] = "threshold",
) -> None:
    """Upload an artifact as MODEL@VERSION and start a staged rollout of it."""
    from edgeserve.wire.errors import EdgeServeError
    from sync.admin_client import card_for_upload

    try:
        upload_card = card_for_upload(file, model, version, card)
    except EdgeServeError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from None
    request = {
        "model": model,
        "version": version,
        "group": group,
        "canary": parse_canary(canary),
        "stages": parse_stages(stages),
        "soak_s": soak,
        "max_failures": max_failures,
        "gate": gate,
    }

    def run(client: Any) -> Any:
        if _needs_upload(client, upload_card):
            with _upload_progress() as progress:
                task = progress.add_task(f"{model} v{version}", total=upload_card.size_bytes)
                client.upload(file, upload_card, lambda n: progress.advance(task, n))
        client.upload_bank(upload_card, (card or file).parent)  # the package's other part
        return client.start_rollout({k: v for k, v in request.items() if v is not None})

    view = _call(ctx, run)
    console.print(
        f"rollout [bold]{view['id']}[/bold]: {model} v{version} → "
        f"{len(view['devices'])} devices in stages {list(view['stage_sizes'])}"
    )
    if wait:
        raise typer.Exit(_watch(ctx, int(view["id"])))


def _needs_upload(client: Any, card: Any) -> bool:
    """Ask before sending any bytes: a version already there with these bytes is not sent
    again, one there with other bytes is refused (versions are immutable)."""
    from edgeserve.wire.errors import UpdateRefused

    for row in client.versions(card.name):
        if row["version"] != card.version:
            continue
        if row["sha256"] != card.sha256:
            raise UpdateRefused(
                f"{card.name} v{card.version} already exists with other bytes; "
                "versions are immutable, push a new version"
            )
        console.print(f"{card.name} v{card.version} is already registered with these bytes")
        return False
    return True


def _upload_progress() -> Progress:
    return Progress(
        TextColumn("upload {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=False,
    )


# -- rollouts -----------------------------------------------------------------------------


@fleet_app.command()
def status(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Every rollout: where it stands."""
    views = _call(ctx, lambda client: client.rollouts())
    _emit(views, as_json, lambda: tables.rollouts_table(views))


@rollout_app.command("show")
def rollout_show(
    ctx: typer.Context,
    rollout_id: Annotated[int, typer.Argument(help="rollout id")],
    watch: Annotated[bool, typer.Option(help="follow it until it ends")] = False,
    as_json: JsonOption = False,
) -> None:
    """One rollout and each of its devices."""
    if watch:
        raise typer.Exit(_watch(ctx, rollout_id))
    view = _call(ctx, lambda client: client.rollout(rollout_id))
    if as_json:
        _emit(view, True, lambda: tables.rollout_devices_table(view))
        return
    console.print(
        f"rollout {view['id']}: {view['model']} v{view['version']} "
        f"group {view['group'] or '(all)'} — {tables.state(view['state'])} "
        f"stage {view['stage'] + 1}/{len(view['stage_sizes'])} {view['reason']}"
    )
    console.print(tables.rollout_devices_table(view))


@rollout_app.command("rollback")
def rollout_rollback(
    ctx: typer.Context,
    rollout_id: Annotated[int, typer.Argument(help="rollout id")],
    reason: Annotated[str, typer.Option(help="recorded with the rollback")] = "manual rollback",
) -> None:
    """Send every device of a rollout back to the version it ran before (signed)."""
    view = _call(ctx, lambda client: client.rollback(rollout_id, reason))
    console.print(f"rollout {view['id']}: {tables.state(view['state'])} {view['reason']}")


@fleet_app.command()
def rollback(
    ctx: typer.Context,
    rollout_id: Annotated[int, typer.Argument(help="rollout id")],
    reason: Annotated[str, typer.Option(help="recorded with the rollback")] = "manual rollback",
) -> None:
    """Roll a rollout back (same as: fleet rollout rollback ID)."""
    rollout_rollback(ctx, rollout_id, reason)


def _watch(ctx: typer.Context, rollout_id: int, interval: float = 0.5) -> int:
    """Live per-stage progress bars until the rollout ends; 0 if it completed."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
    )
    with Progress(*columns, console=console) as progress:
        tasks: dict[int, TaskID] = {}
        builds: dict[str, tuple[TaskID, int]] = {}
        while True:
            view, running = _call(ctx, lambda c: (c.rollout(rollout_id), c.builds()))
            _update_builds(progress, builds, running)
            _update_stages(progress, tasks, view)
            if view["state"] in TERMINAL:
                break
            time.sleep(interval)
    console.print(f"rollout {rollout_id}: {tables.state(view['state'])} {view['reason']}")
    return 0 if view["state"] == "completed" else 1


def _update_builds(
    progress: Progress, tasks: dict[str, tuple[TaskID, int]], running: list[dict[str, Any]]
) -> None:
    """A bar per payload the sync service is building (a delta of a large model takes
    seconds); a finished build's bar is completed and stays."""
    seen = set()
    for build in running:
        key = f"{build['base'] or 'full'}>{build['artifact']}"
        seen.add(key)
        note = f"{build['stage']}, {build['elapsed_s']:.0f}s"
        total = max(int(build["total"]), 1)
        if key not in tasks:
            name = f"build {build['artifact'][:12]}"
            tasks[key] = (progress.add_task(name, total=total, note=note), total)
        task, _ = tasks[key]
        tasks[key] = (task, total)
        progress.update(task, completed=int(build["done"]), total=total, note=note)
    for key, (task, total) in tasks.items():
        if key not in seen:
            progress.update(task, completed=total, note="built")


def _update_stages(progress: Progress, tasks: dict[int, TaskID], view: dict[str, Any]) -> None:
    for stage, size in enumerate(view["stage_sizes"]):
        members = [d for d in view["devices"] if d["stage"] == stage]
        installed = sum(d["state"] == "installed" for d in members)
        failed = sum(d["state"] == "failed" for d in members)
        note = f"[red]{failed} failed[/red]" if failed else ""
        if stage > view["stage"] and view["state"] == "running":
            note = "waiting"
        name = "canary" if stage == 0 else f"stage {stage}"
        if stage not in tasks:
            tasks[stage] = progress.add_task(name, total=max(size, 1), note=note)
        progress.update(tasks[stage], completed=installed, total=max(size, 1), note=note)


# -- fleet --------------------------------------------------------------------------------


@fleet_app.command()
def devices(
    ctx: typer.Context,
    group: Annotated[str | None, typer.Option(help="only this group")] = None,
    as_json: JsonOption = False,
) -> None:
    """Every device as it last reported: online, versions, agent."""
    rows = _call(ctx, lambda client: client.devices(group))
    _emit(rows, as_json, lambda: tables.devices_table(rows))


@fleet_app.command()
def telemetry(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="only this model")] = None,
    as_json: JsonOption = False,
) -> None:
    """Per model version: requests, escalation, agreement, latency, errors, drops."""
    rows = _call(ctx, lambda client: client.telemetry(model))
    _emit(rows, as_json, lambda: tables.telemetry_table(rows))


def _emit(data: Any, as_json: bool, table: Callable[[], Table]) -> None:
    """JSON (exactly what the admin API answered) for scripts, else a table."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    else:
        console.print(table())


from edgeserve.cli.fleet_certs import register as _register_certs  # noqa: E402 (needs _call)

_register_certs(fleet_app)
