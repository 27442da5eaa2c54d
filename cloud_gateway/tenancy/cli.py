"""``edgeserve tenant ...``: plain functions the Typer app wires up; each returns an exit code.

Plaintext keys are printed once, by ``tenant_add`` and ``tenant_rotate_key``, and never
again: the database holds only their salted hashes, and ``tenant_list`` shows key ids.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from cloud_gateway.tenancy.models import TenantKind
from cloud_gateway.tenancy.store import TenantStore
from edgeserve.wire.errors import EdgeServeError

_SHOWN_ONCE = (
    "[bold yellow]This key is shown once and cannot be recovered: store it now.[/]"
    " If it is lost, rotate it."
)


def tenant_add(
    db: Path,
    name: str,
    models: list[str],
    rate: float,
    burst: float,
    max_in_flight: int,
    weight: float,
    priority: int,
    kind: TenantKind = "app",
    *,
    console: Console | None = None,
) -> int:
    out = console or Console()
    try:
        with TenantStore(db) as store:
            tenant, key = store.add_tenant(
                name,
                models,
                rate_per_s=rate,
                burst=burst,
                max_in_flight=max_in_flight,
                weight=weight,
                priority_tier=priority,
                kind=kind,
            )
    except EdgeServeError as exc:
        return _failed(out, exc)
    out.print(f"added tenant [bold]{tenant.name}[/] ({tenant.kind}) to {db}")
    out.print(
        "[dim]a gateway accepts this key only if it reads this tenants database: start it"
        " with the same --config (or EDGESERVE_GATEWAY_* environment) as this command[/]"
    )
    _show_key(out, key)
    return 0


def tenant_list(db: Path, *, console: Console | None = None) -> int:
    out = console or Console()
    table = Table(title=f"tenants in {db}")
    for column in ("tenant", "kind", "models", "rate/s", "burst", "in flight", "weight"):
        table.add_column(column, justify="left" if column in ("tenant", "kind") else "right")
    table.add_column("tier", justify="right")
    table.add_column("live key id")
    table.add_column("devices", justify="right")
    with TenantStore(db) as store:
        for tenant in store.list_tenants():
            live = [k.key_id for k in store.list_keys(tenant.name) if k.revoked_at is None]
            table.add_row(
                tenant.name,
                tenant.kind,
                ", ".join(tenant.allowed_models),
                f"{tenant.rate_per_s:g}",
                f"{tenant.burst:g}",
                str(tenant.max_in_flight),
                f"{tenant.weight:g}",
                str(tenant.priority_tier),
                ", ".join(live) or "-",
                str(len(store.list_devices(tenant.name))),
            )
    out.print(table)
    return 0


def tenant_rotate_key(db: Path, name: str, *, console: Console | None = None) -> int:
    out = console or Console()
    try:
        with TenantStore(db) as store:
            key = store.rotate_key(name)
    except EdgeServeError as exc:
        return _failed(out, exc)
    out.print(f"rotated the key of [bold]{name}[/]; its previous keys are revoked")
    out.print("running gateways stop accepting them within their key-cache TTL (60 s default)")
    _show_key(out, key)
    return 0


def tenant_remove(db: Path, name: str, *, console: Console | None = None) -> int:
    out = console or Console()
    try:
        with TenantStore(db) as store:
            store.remove_tenant(name)
    except EdgeServeError as exc:
        return _failed(out, exc)
    out.print(f"removed tenant [bold]{name}[/] with its keys and devices")
    return 0


def device_register(
    db: Path, device_id: str, tenant: str, *, console: Console | None = None
) -> int:
    """Map a device's certificate common name to a tenant for mTLS."""
    out = console or Console()
    try:
        with TenantStore(db) as store:
            store.register_device(device_id, tenant)
    except EdgeServeError as exc:
        return _failed(out, exc)
    out.print(f"device [bold]{device_id}[/] authenticates as tenant [bold]{tenant}[/]")
    return 0


def _show_key(out: Console, key: str) -> None:
    # No markup, no highlighting, no wrapping: the key must copy-paste exactly.
    out.print(key, markup=False, highlight=False, soft_wrap=True)
    out.print(_SHOWN_ONCE)


def _failed(out: Console, exc: EdgeServeError) -> int:
    out.print(f"[red]error:[/] {exc.message}", highlight=False)
    return 1
