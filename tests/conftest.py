"""Fixtures that start real edgeserve processes on loopback and always clean them up."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
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
