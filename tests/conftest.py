"""Fixtures that start real edgeserve processes on loopback and always clean them up."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgeserve.processes import ServiceProcess, agent_process, gateway_process

StartAgent = Callable[..., ServiceProcess]


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[StartAgent]:
    """A factory: ``start_agent(models=[...], **env)`` returns a running agent process."""
    started: list[ServiceProcess] = []

    def start(models: list[str] | None = None, state_dir: Path | None = None, **env: str):
        index = len(started)
        settings = {"models": json.dumps(models or ["digits-edge"]), **env}
        if state_dir is not None:
            settings["state_dir"] = str(state_dir)
        agent = agent_process(tmp_path, name=f"agent-{index}", **settings)
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
    from cloud_gateway.tenancy import TenantStore

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
        process = gateway_process(tmp_path, state, name=f"gateway-{index}", **env)
        started.append(process)
        process.start()
        return Gateway(process, state, keys)

    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="session")
def digits():
    """The held-out test split, from the committed artifacts."""
    from edgeserve.artifacts import packaged_artifacts
    from models.data import load_split

    return load_split(packaged_artifacts(), "test")


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real Redis server on a free loopback port, no persistence; stopped afterwards."""
    import shutil
    import subprocess

    from edgeserve.polling import wait_until
    from edgeserve.processes import free_port

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(
            "redis-server is not installed (./dev installs it: apt-get install redis-server)"
        )
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip

    def answers() -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    try:
        wait_until(answers, 10.0, "redis-server to answer PING")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=10)
