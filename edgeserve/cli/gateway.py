"""``edgeserve gateway``: run the cloud gateway and manage its tenants and devices."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

gateway_app = typer.Typer(no_args_is_help=True, help="The cloud gateway (OIP v2 REST + gRPC).")
tenant_app = typer.Typer(no_args_is_help=True, help="Tenants and their API keys.")
device_app = typer.Typer(no_args_is_help=True, help="Devices: mTLS identities of a tenant.")
gateway_app.add_typer(tenant_app, name="tenant")
experiment_app = typer.Typer(
    no_args_is_help=True,
    help="Experiments: a model's traffic split across versions, a shadow, sequential tests.",
)
gateway_app.add_typer(device_app, name="device")
gateway_app.add_typer(experiment_app, name="experiment")

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


def _experiment_paths(config: Path | None) -> tuple[Path, Path]:
    from cloud_gateway.config import GatewayConfig

    settings = _config(config)
    assert isinstance(settings, GatewayConfig)
    settings.experiments_path.parent.mkdir(parents=True, exist_ok=True)
    return settings.experiments_path, settings.repository_path


@experiment_app.command("create")
def experiment_create(
    name: str,
    model: Annotated[str, typer.Option(help="the model whose unversioned name is split")],
    split: Annotated[
        str,
        typer.Option(help="VERSION=WEIGHT,...: the arms serving traffic; the first is the control"),
    ],
    shadow: Annotated[
        str | None, typer.Option(help="a version mirrored on control traffic, never returned")
    ] = None,
    key_header: Annotated[
        str | None, typer.Option(help="sticky key: this request header (or gRPC metadata)")
    ] = None,
    key_parameter: Annotated[
        str | None, typer.Option(help="sticky key: this entry of the request's parameters")
    ] = None,
    max_error_rate: Annotated[float, typer.Option(help="guardrail: stop an arm above this")] = 0.05,
    max_p99_ms: Annotated[
        float | None, typer.Option(help="guardrail: stop an arm whose p99 exceeds this")
    ] = None,
    min_requests: Annotated[int, typer.Option(help="requests before a guardrail acts")] = 50,
    min_agreement: Annotated[
        float, typer.Option(help="stop a shadow significantly below this agreement")
    ] = 0.95,
    alpha: Annotated[float, typer.Option(help="false-stop rate of the sequential tests")] = 0.05,
    shadow_queue: Annotated[int, typer.Option(help="mirrored requests waiting, at most")] = 256,
    shadow_fraction: Annotated[
        float, typer.Option(help="share of the control's requests mirrored to the shadow")
    ] = 1.0,
    feedback: Annotated[
        bool, typer.Option(help="callers send labels back: record answers to score accuracy")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Start an experiment: running gateways route the model's traffic within a second."""
    from cloud_gateway.experiments import Arm, ExperimentSpec, cli
    from edgeserve.wire.errors import EdgeServeError

    db, repository = _experiment_paths(config)
    try:
        arms = cli.parse_split(split) + ((Arm(shadow, "shadow"),) if shadow else ())
        settings = cli.settings_from(
            max_error_rate,
            max_p99_ms,
            min_requests,
            min_agreement,
            alpha,
            shadow_queue,
            shadow_fraction,
            feedback,
        )
        spec = ExperimentSpec(name, model, arms, key_header, key_parameter, settings)
    except EdgeServeError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    raise typer.Exit(cli.experiment_create(db, repository, spec))


@experiment_app.command("show")
def experiment_show(
    name: Annotated[str | None, typer.Argument(help="omit to list every experiment")] = None,
    config: ConfigOption = None,
) -> None:
    """Per-arm figures with 95% intervals, and each arm against the control (always valid)."""
    from cloud_gateway.experiments import cli

    raise typer.Exit(cli.experiment_show(_experiment_paths(config)[0], name))


@experiment_app.command("stop")
def experiment_stop(name: str, config: ConfigOption = None) -> None:
    """Stop an experiment: its model's traffic goes back to the default version."""
    from cloud_gateway.experiments import cli

    raise typer.Exit(cli.experiment_stop(_experiment_paths(config)[0], name))
