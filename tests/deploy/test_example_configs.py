"""The example configs under deploy/ are a newcomer's reference: they name every key the
service's config has, and the values they set are the defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from cloud_gateway.config import GatewayConfig
from edge_agent.config import AgentConfig
from edgeserve.settings import load_settings
from tests.deploy.conftest import REPO

EXAMPLES = [
    (REPO / "deploy" / "agent" / "agent.toml", AgentConfig, "EDGESERVE_AGENT_"),
    (REPO / "deploy" / "gateway" / "gateway.toml", GatewayConfig, "EDGESERVE_GATEWAY_"),
]
IDS = [path.parent.name for path, _, _ in EXAMPLES]


def keys_named(path: Path) -> set[str]:
    """Keys set or shown commented out (``# key = ...``) in the example."""
    return set(re.findall(r"^#?\s*([a-z_]+)\s*=", path.read_text(), flags=re.M))


@pytest.mark.parametrize(("path", "config", "prefix"), EXAMPLES, ids=IDS)
def test_the_example_names_every_key_of_the_config(
    path: Path, config: type[BaseSettings], prefix: str
) -> None:
    assert set(config.model_fields) - keys_named(path) == set()
    assert keys_named(path) - set(config.model_fields) == set()


@pytest.mark.parametrize(("path", "config", "prefix"), EXAMPLES, ids=IDS)
def test_the_values_the_example_sets_are_the_defaults(
    path: Path, config: type[BaseSettings], prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    for key in [k for k in os.environ if k.startswith(prefix)]:
        monkeypatch.delenv(key)
    from_file = load_settings(config, path)
    defaults = config()
    for name in config.model_fields:
        if name in ("device_id", "state_dir"):  # machine-dependent defaults
            continue
        assert getattr(from_file, name) == getattr(defaults, name), name
