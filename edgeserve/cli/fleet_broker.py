"""``edgeserve fleet broker init``: the fleet's broker files, made where the CA key stays.

A thin adapter over ``edgeserve.broker.production``; it prints the folder it wrote on
stdout (for scripts) and what to copy where on stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

broker_app = typer.Typer(no_args_is_help=True, help="The fleet's MQTT broker files.")


@broker_app.command("init")
def broker_init(
    directory: Annotated[
        Path, typer.Option("--dir", help="the operator's broker folder (keeps the CA key)")
    ],
    host: Annotated[
        list[str], typer.Option(help="a name devices use for the broker (repeat for more)")
    ],
    ip: Annotated[list[str] | None, typer.Option(help="an IP address in its certificate")] = None,
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8883,
) -> None:
    """Make the fleet CA, the broker's certificate, its users and the files for each host."""
    from edgeserve.broker.production import BROKER_ETC, init_fleet_broker
    from edgeserve.cli.enroll import run_one_line

    files = run_one_line(lambda: init_fleet_broker(directory, host, ip or [], port))
    typer.echo(str(files.setup.directory))
    typer.echo(
        f"broker host: {BROKER_ETC}/ gets passwd, acl and broker-host/*; "
        f"/etc/mosquitto/conf.d/ gets broker-host/edgeserve.conf\n"
        f"sync host: sync-host/* (sync.toml names the rest); "
        f"the CA key stays in {files.setup.pki.ca.key.parent}",
        err=True,
    )
