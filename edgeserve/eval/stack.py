"""A local cascade: a gateway and an edge agent that escalates to it over mutual TLS.

The device is enrolled as it would be in the field: a tenant of kind ``device`` allowed
the cloud model, the device id registered to it, a client certificate issued by the
gateway's CA with the device id as its common name.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cloud_gateway.tenancy import TenantStore
from edgeserve.processes import ServiceProcess, agent_process, gateway_process
from edgeserve.security.pki import ensure_dev_pki

DEVICE_ID = "edge-device-1"
CLOUD_MODEL = "digits-cloud"


@dataclass
class CascadeStack:
    gateway: ServiceProcess
    agent: ServiceProcess
    app_key: str
    workdir: Path

    @property
    def agent_url(self) -> str:
        return f"http://127.0.0.1:{self.agent.port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.ports['http']}"

    def stop(self) -> dict[str, int]:
        return {"agent": self.agent.stop(), "gateway": self.gateway.stop()}


def enroll(state: Path, device_id: str = DEVICE_ID) -> tuple[str, dict[str, str]]:
    """Tenants, device registration and certificates; the app key and the agent's TLS settings."""
    state.mkdir(parents=True, exist_ok=True)
    with TenantStore(state / "tenants.db") as store:
        store.add_tenant(
            "fleet",
            [CLOUD_MODEL],
            kind="device",
            rate_per_s=10_000,
            burst=10_000,
            max_in_flight=512,
        )
        store.register_device(device_id, "fleet")
        _, app_key = store.add_tenant(
            "apps", ["*"], rate_per_s=10_000, burst=10_000, max_in_flight=512
        )
    pki = ensure_dev_pki(state / "pki", devices=[device_id])
    cert, key = pki.devices[device_id]
    tls = {
        "cloud_ca": str(pki.ca.cert),
        "cloud_cert": str(cert),
        "cloud_key": str(key),
        "cloud_server_name": "localhost",
    }
    return app_key, tls


def start_cascade(
    workdir: Path,
    models: list[str] | None = None,
    mtls_port: int = 0,
    link: Callable[[int], int] | None = None,
    **agent_settings: str,
) -> CascadeStack:
    """Start the gateway, then an agent escalating to its mTLS port.

    ``mtls_port`` pins the gateway's device port (0 = any free one; pin it to restart the
    gateway under a running agent); ``link`` maps that port to the one the agent dials,
    e.g. a fault-injecting proxy in front of the gateway.
    """
    state = workdir / "gateway-state"
    app_key, tls = enroll(state)
    gateway = gateway_process(workdir, state, grpc_mtls_port=str(mtls_port))
    gateway.start()
    target_port = gateway.ports["grpc_mtls"]
    if link is not None:
        target_port = link(target_port)
    settings = {
        **tls,
        "cloud_target": f"127.0.0.1:{target_port}",
        "device_id": DEVICE_ID,
        "models": json.dumps(models or ["digits-edge"]),
        **agent_settings,
    }
    agent = agent_process(workdir, **settings)
    try:
        agent.start()
    except Exception:
        gateway.stop()
        raise
    return CascadeStack(gateway, agent, app_key, workdir)
