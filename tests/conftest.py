"""Fixtures that start real edgeserve processes on loopback and always clean them up."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgeserve.processes import ServiceProcess

StartAgent = Callable[..., ServiceProcess]


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[StartAgent]:
    """A factory: ``start_agent(models=[...], **env)`` returns a running agent process."""
    started: list[ServiceProcess] = []

    def start(models: list[str] | None = None, state_dir: Path | None = None, **env: str):
        index = len(started)
        settings = {
            "EDGESERVE_AGENT_PORT": "0",
            "EDGESERVE_AGENT_STATE_DIR": str(state_dir or tmp_path / f"agent-{index}"),
            "EDGESERVE_AGENT_MODELS": json.dumps(models or ["digits-edge"]),
        }
        settings.update({f"EDGESERVE_AGENT_{key.upper()}": value for key, value in env.items()})
        agent = ServiceProcess.edgeserve(
            "agent",
            "run",
            port_file=tmp_path / f"agent-{index}.port",
            log_file=tmp_path / f"agent-{index}.log",
            env=settings,
        )
        started.append(agent)
        agent.start()
        return agent

    yield start
    for agent in started:
        agent.stop()


@dataclass
class Gateway:
    process: ServiceProcess
    state_dir: Path
    keys: dict[str, str]

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.process.ports['http']}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.process.ports['grpc']}"

    def headers(self, tenant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[tenant]}"}


StartGateway = Callable[..., Gateway]


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[StartGateway]:
    """``start_gateway(tenants={name: {field: value}}, **env)``: a gateway process with tenants."""
    from edgeserve.cloud_gateway.tenancy import TenantStore

    started: list[ServiceProcess] = []

    def start(tenants: dict[str, dict[str, object]] | None = None, **env: str) -> Gateway:
        index = len(started)
        state = tmp_path / f"gateway-{index}"
        state.mkdir()
        store = TenantStore(state / "tenants.db")
        keys = {}
        for name, fields in (tenants or {"app": {}}).items():
            _, keys[name] = store.add_tenant(name, **{"allowed_models": ["*"], **fields})
        store.close()
        settings = {
            "EDGESERVE_GATEWAY_HTTP_PORT": "0",
            "EDGESERVE_GATEWAY_GRPC_PORT": "0",
            "EDGESERVE_GATEWAY_GRPC_MTLS_PORT": "0",
            "EDGESERVE_GATEWAY_STATE_DIR": str(state),
        }
        settings.update({f"EDGESERVE_GATEWAY_{k.upper()}": v for k, v in env.items()})
        process = ServiceProcess.edgeserve(
            "gateway",
            "run",
            port_file=tmp_path / f"gateway-{index}.port",
            log_file=tmp_path / f"gateway-{index}.log",
            env=settings,
        )
        started.append(process)
        process.start()
        return Gateway(process, state, keys)

    yield start
    for process in started:
        process.stop()
