"""Enrollment commands: ``edgeserve agent enroll-request|enroll-accept`` on the device and
``edgeserve fleet enroll`` for the operator — thin adapters over
``edge_agent.enroll``. Each prints the one path it produced on stdout (for
scripts) and an error as one line on stderr with exit code 1.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, TypeVar, cast

import typer

T = TypeVar("T")
DEFAULT_DIR = Path("/etc/edgeserve")

DirOption = Annotated[
    Path, typer.Option("--dir", help="the device's config folder (key, certificates, agent.toml)")
]


def enroll_request(
    device_id: Annotated[str, typer.Option(help="this device's id (the certificate's CN)")],
    directory: DirOption = DEFAULT_DIR,
) -> None:
    """Make this device's key (kept here, 0600) and a certificate request for the operator."""
    from edge_agent.enroll import request_enrollment

    csr = run_one_line(lambda: request_enrollment(directory, device_id))
    typer.echo(str(csr))
    typer.echo(f"send {csr} to the operator (edgeserve fleet enroll --csr ...)", err=True)


def enroll_accept(
    bundle: Annotated[Path, typer.Option(help="the bundle the operator made for this device")],
    directory: DirOption = DEFAULT_DIR,
) -> None:
    """Check the operator's bundle against this device's key and write its config."""
    from edge_agent.enroll import accept_enrollment

    config = run_one_line(lambda: accept_enrollment(directory, bundle))
    typer.echo(str(config))


def fleet_enroll(
    broker_dir: Annotated[Path, typer.Option(help="the broker setup folder (BrokerSetup)")],
    csr: Annotated[Path, typer.Option(help="the device's certificate request")],
    out: Annotated[Path, typer.Option(help="where to write the bundle (0600 JSON)")],
    device_id: Annotated[
        str | None, typer.Option(help="refuse unless the request is for this device")
    ] = None,
    operator_key: Annotated[
        Path | None,
        typer.Option(help="operator.pub to pin (default: the sync service's keys/operator.pub)"),
    ] = None,
    broker_host: Annotated[
        str | None, typer.Option(help="broker name devices connect to (in its certificate)")
    ] = None,
    broker_port: Annotated[int | None, typer.Option(min=1, max=65535)] = None,
    mqtt_version: Annotated[int, typer.Option(min=4, max=5, help="5 = MQTT 5, 4 = 3.1.1")] = 5,
    gateway: Annotated[
        str | None, typer.Option(help="cloud gateway mTLS gRPC host:port for escalation")
    ] = None,
    gateway_ca: Annotated[
        Path | None, typer.Option(help="the gateway's CA (default: the broker's CA)")
    ] = None,
    gateway_server_name: Annotated[str, typer.Option()] = "localhost",
) -> None:
    """Sign a device's certificate request and write its enrollment bundle."""
    from edgeserve.broker.enrollment import BrokerSetup
    from edgeserve.wire.enrollment import CloudTarget
    from sync.enrollment import issue_bundle

    cloud = None
    if gateway is not None:
        ca = run_one_line(lambda: _read_text(gateway_ca)) if gateway_ca else None
        cloud = CloudTarget(target=gateway, server_name=gateway_server_name, ca=ca)
    bundle = run_one_line(
        lambda: issue_bundle(
            BrokerSetup.load(broker_dir),
            _read_text(csr).encode(),
            operator_key or _default_operator_key(),
            device_id=device_id,
            broker_host=broker_host,
            broker_port=broker_port,
            mqtt_version=cast(Literal[4, 5], mqtt_version),
            cloud=cloud,
        )
    )
    bundle.write(out)
    typer.echo(str(out))
    typer.echo(
        f"enrolled {bundle.device_id}: copy {broker_dir / 'passwd'} to the broker host's "
        f"/etc/mosquitto/edgeserve/passwd, reload it (systemctl reload mosquitto), then "
        f"hand {out} to the device: edgeserve agent enroll-accept --bundle ...",
        err=True,
    )


def _default_operator_key() -> Path:
    from edgeserve.security.signing import PUBLIC_NAME
    from sync.config import SyncConfig

    return SyncConfig().state_dir / "keys" / PUBLIC_NAME


def _read_text(path: Path) -> str:
    from edgeserve.wire.enrollment import EnrollmentFileError

    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise EnrollmentFileError(f"cannot read {path}: {exc}") from exc


def run_one_line(operation: Callable[[], T]) -> T:
    """Run ``operation``; an edgeserve error becomes one line on stderr and exit code 1."""
    from edgeserve.wire.errors import EdgeServeError

    try:
        return operation()
    except EdgeServeError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
