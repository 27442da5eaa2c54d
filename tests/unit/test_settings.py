"""Service config: defaults that work, a TOML file, and the environment on top."""

from pathlib import Path

import pytest

from edge_agent.config import AgentConfig
from edgeserve.settings import ConfigError, load_settings
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
    with pytest.raises(ConfigError, match="prot: Extra inputs"):
        load_settings(AgentConfig, path)


def test_a_relative_path_in_a_file_is_relative_to_that_files_folder(tmp_path: Path, monkeypatch):
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "ca.pem").write_text("ca")
    path = folder / "agent.toml"
    path.write_text('sync_ca = "ca.pem"\nstate_dir = "state"\n')
    monkeypatch.chdir(tmp_path)

    config = load_settings(AgentConfig, path)

    assert (config.sync_ca, config.state_dir) == (folder / "ca.pem", folder / "state")


def test_a_relative_path_from_the_environment_stays_relative_to_the_working_folder(
    tmp_path: Path, monkeypatch
):
    path = tmp_path / "agent.toml"
    path.write_text('state_dir = "from-file"\n')
    monkeypatch.setenv("EDGESERVE_AGENT_STATE_DIR", "from-env")
    assert load_settings(AgentConfig, path).state_dir == Path("from-env")


def test_a_credential_file_the_config_names_must_exist(tmp_path: Path):
    path = tmp_path / "agent.toml"
    path.write_text('operator_public_key = "keys/operator.pub"\n')
    with pytest.raises(ConfigError, match=r"operator_public_key = .*keys/operator.pub: no such"):
        load_settings(AgentConfig, path)


def test_a_bad_value_is_one_error_naming_the_file_and_key(tmp_path: Path):
    path = tmp_path / "agent.toml"
    path.write_text("port = 70000\n")
    with pytest.raises(ConfigError, match=r"agent.toml: port: .*65535"):
        load_settings(AgentConfig, path)
