"""``edgeserve gateway``: run the cloud gateway and manage its tenants and devices."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

gateway_app = typer.Typer(no_args_is_help=True, help="The cloud gateway (OIP v2 REST + gRPC).")
tenant_app = typer.Typer(no_args_is_help=True, help="Tenants and their API keys.")
device_app = typer.Typer(no_args_is_help=True, help="Devices: mTLS identities of a tenant.")
gateway_app.add_typer(tenant_app, name="tenant")
gateway_app.add_typer(device_app, name="device")

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML config file", exists=True)
]


def _config(config: Path | None, **overrides: object) -> object:
    from cloud_gateway.config import GatewayConfig
    from edgeserve.settings import load_settings

    return load_settings(GatewayConfig, config, **{k: v for k, v in overrides.items() if v})


def _db(config: Path | None) -> Path:
    from cloud_gateway.config import GatewayConfig

    settings = _config(config)
    assert isinstance(settings, GatewayConfig)
    settings.tenants_path.parent.mkdir(parents=True, exist_ok=True)
    return settings.tenants_path


@gateway_app.command("run")
def run(
    config: ConfigOption = None,
    port_file: Annotated[Path | None, typer.Option(help="write bound ports here (JSON)")] = None,
) -> None:
    """Run the gateway in the foreground."""
    from cloud_gateway.config import GatewayConfig
    from cloud_gateway.server import run_gateway

    settings = _config(config, port_file=port_file)
    assert isinstance(settings, GatewayConfig)
    run_gateway(settings)


@tenant_app.command("add")
def tenant_add(
    name: str,
    models: Annotated[str, typer.Option(help="comma-separated model names, or *")] = "*",
    rate: Annotated[float, typer.Option(help="requests per second (token bucket)")] = 100.0,
    burst: Annotated[float, typer.Option(help="token bucket size")] = 200.0,
    max_in_flight: Annotated[int, typer.Option(help="concurrent requests")] = 64,
    weight: Annotated[float, typer.Option(help="weighted fair queuing share")] = 1.0,
    priority: Annotated[int, typer.Option(help="priority tier, 1 = highest")] = 1,
    config: ConfigOption = None,
) -> None:
    """Create a tenant and print its API key (shown once)."""
    from cloud_gateway.tenancy import cli

    cli.tenant_add(
        _db(config), name, models.split(","), rate, burst, max_in_flight, weight, priority
    )


@tenant_app.command("list")
def tenant_list(config: ConfigOption = None) -> None:
    """List tenants and their limits (never their keys)."""
    from cloud_gateway.tenancy import cli

    raise typer.Exit(cli.tenant_list(_db(config)))


@tenant_app.command("rotate-key")
def tenant_rotate_key(name: str, config: ConfigOption = None) -> None:
    """Revoke a tenant's keys and print a new one (shown once)."""
    from cloud_gateway.tenancy import cli

    raise typer.Exit(cli.tenant_rotate_key(_db(config), name))


@tenant_app.command("remove")
def tenant_remove(name: str, config: ConfigOption = None) -> None:
    """Remove a tenant; its keys stop working at once."""
    from cloud_gateway.tenancy import cli

    raise typer.Exit(cli.tenant_remove(_db(config), name))


@device_app.command("add")
def device_add(
    device_id: str,
    tenant: Annotated[str, typer.Option(help="the tenant the device belongs to")],
    config: ConfigOption = None,
) -> None:
    """Register a device under a tenant and issue its client certificate from the dev CA."""
    from rich.console import Console

    from cloud_gateway.config import GatewayConfig
    from cloud_gateway.tenancy import cli
    from edgeserve.security.pki import ensure_dev_pki

    settings = _config(config)
    assert isinstance(settings, GatewayConfig)
    if code := cli.device_register(_db(config), device_id, tenant):
        raise typer.Exit(code)
    pki = ensure_dev_pki(settings.pki_path, devices=[device_id])
    cert, key = pki.devices[device_id]
    Console().print(
        f"device {device_id} → tenant {tenant}\n  cert {cert}\n  key  {key}\n  ca   {pki.ca.cert}"
    )
