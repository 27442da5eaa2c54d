"""Service config: defaults that work, a TOML file, and the environment on top."""

from pathlib import Path

import pytest

from edge_agent.config import AgentConfig
from edgeserve.settings import load_settings
from edgeserve.wire.errors import InvalidInput


def test_defaults_serve_the_embedded_model_on_loopback(monkeypatch):
    monkeypatch.delenv("EDGESERVE_AGENT_PORT", raising=False)
    config = load_settings(AgentConfig)
    assert config.host == "127.0.0.1"
    assert config.models == ["digits-edge"]


def test_file_values_apply_and_environment_overrides_them(tmp_path: Path, monkeypatch):
    path = tmp_path / "agent.toml"
    path.write_text('port = 9001\nmodels = ["a", "b"]\ncache_entries = 7\n')
    monkeypatch.setenv("EDGESERVE_AGENT_PORT", "9002")
    config = load_settings(AgentConfig, path)
    assert (config.port, config.models, config.cache_entries) == (9002, ["a", "b"], 7)


def test_missing_config_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(InvalidInput, match="does not exist"):
        load_settings(AgentConfig, tmp_path / "missing.toml")


def test_unknown_key_in_file_is_refused(tmp_path: Path):
    path = tmp_path / "agent.toml"
    path.write_text("prot = 1\n")
    with pytest.raises(ValueError, match="prot"):
        load_settings(AgentConfig, path)
