"""``edgeserve sync``: run the fleet's sync service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

sync_app = typer.Typer(no_args_is_help=True, help="The fleet sync service (MQTT + admin API).")


@sync_app.command("run")
def run(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML config file", exists=True)
    ] = None,
    port_file: Annotated[
        Path | None, typer.Option(help='write {"admin": port} here once ready')
    ] = None,
) -> None:
    """Run the sync service in the foreground."""
    from edgeserve.settings import load_settings
    from sync.config import SyncConfig
    from sync.service import run_sync

    overrides = {"port_file": port_file} if port_file else {}
    run_sync(load_settings(SyncConfig, config, **overrides))
