"""``edgeserve fleet certs [approve DEVICE]`` and ``edgeserve fleet revoke DEVICE``.

Device certificates over the sync service's admin API: list each device's certificate
(expiry, serial, a renewal waiting for approval, revoked), sign a renewal that waits for
an operator, and revoke a device — its certificates go on the fleet CA's CRL (read by
the broker and the gateway) and its broker password is removed, which drops its open
broker connection. Registered on ``fleet_app`` by ``register``.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

certs_app = typer.Typer(
    invoke_without_command=True, help="Device certificates: expiry, renewals, approval."
)


@certs_app.callback()
def certs(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="print the admin API's JSON")] = False,
) -> None:
    """Every device certificate the fleet knows: expiry, pending renewal, revoked."""
    if ctx.invoked_subcommand is not None:
        return
    from edgeserve.cli import fleet_tables as tables
    from edgeserve.cli.fleet import _call, _emit

    rows = _call(ctx, lambda client: client.certs())
    _emit(rows, as_json, lambda: tables.certs_table(rows))


@certs_app.command("approve")
def approve(ctx: typer.Context, device: Annotated[str, typer.Argument(help="device id")]) -> None:
    """Sign a device's renewal that waits for an operator (cert_approval = "operator")."""
    from edgeserve.cli import fleet_tables as tables
    from edgeserve.cli.fleet import _call, console

    row = _call(ctx, lambda client: client.approve_cert(device))
    console.print(f"{device}: renewed, expires {tables.expires_in(row['not_after'])}")


def revoke(
    ctx: typer.Context,
    device: Annotated[str, typer.Argument(help="device id")],
    reason: Annotated[str, typer.Option(help="recorded with the revocation")] = "revoked",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
) -> None:
    """Cut a device off now: its certificates revoked (broker and gateway), its broker
    password removed and its broker connection dropped. It must enroll again."""
    from edgeserve.cli.fleet import _call, console

    if not yes:
        typer.confirm(f"revoke {device}? it must enroll again to rejoin", abort=True)
    row: Any = _call(ctx, lambda client: client.revoke(device, reason))
    console.print(f"{row['device_id']}: [red]revoked[/red] ({reason})")


def register(fleet_app: typer.Typer) -> None:
    fleet_app.add_typer(certs_app, name="certs")
    fleet_app.command("revoke")(revoke)
