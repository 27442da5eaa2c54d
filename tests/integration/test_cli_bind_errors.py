"""A port that is taken, an address the machine lacks or a config naming a missing file is
the operator's to fix: each service says so in one line, with the fix, and exits 1
instead of printing a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def run_service(
    args: list[str], env: dict[str, str], tmp_path: object
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "XDG_STATE_HOME": str(tmp_path), **env}
    return subprocess.run(
        [sys.executable, "-m", "edgeserve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        check=False,
    )


def assert_one_line_with_the_fix(result: subprocess.CompletedProcess[str], address: str) -> None:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "╭" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "cannot listen for" in errors[0] and address in errors[0]


@pytest.mark.parametrize("door", ["HTTP_PORT", "GRPC_PORT", "GRPC_MTLS_PORT"])
def test_gateway_on_a_taken_port_says_which_and_how_to_fix_it(door, taken_port, tmp_path):
    ports = {"HTTP_PORT": "0", "GRPC_PORT": "0", "GRPC_MTLS_PORT": "0", door: str(taken_port)}
    env = {f"EDGESERVE_GATEWAY_{key}": value for key, value in ports.items()}
    result = run_service(["gateway", "run"], env, tmp_path)
    assert_one_line_with_the_fix(result, f"127.0.0.1:{taken_port}")
    assert "pick another port" in result.stderr


def test_agent_on_a_taken_port_says_which_and_how_to_fix_it(taken_port, tmp_path):
    result = run_service(["agent", "run"], {"EDGESERVE_AGENT_PORT": str(taken_port)}, tmp_path)
    assert_one_line_with_the_fix(result, f"127.0.0.1:{taken_port}")
    assert "Address already in use" in result.stderr


def test_agent_on_an_address_the_machine_lacks_names_the_address(tmp_path):
    # 192.0.2.0/24 is TEST-NET-1: documentation only, never assigned to a machine.
    env = {"EDGESERVE_AGENT_HOST": "192.0.2.7", "EDGESERVE_AGENT_PORT": "0"}
    result = run_service(["agent", "run"], env, tmp_path)
    assert_one_line_with_the_fix(result, "192.0.2.7:0")
    assert "no such address" in result.stderr


def test_sync_service_on_a_taken_admin_port_says_so(taken_port, tmp_path):
    result = run_service(["sync", "run"], {"EDGESERVE_SYNC_ADMIN_PORT": str(taken_port)}, tmp_path)
    assert_one_line_with_the_fix(result, f"127.0.0.1:{taken_port}")


def test_an_agent_config_naming_a_missing_key_file_is_one_line(tmp_path):
    config = tmp_path / "etc" / "agent.toml"
    config.parent.mkdir()
    config.write_text('sync_broker = "127.0.0.1:1"\noperator_public_key = "operator.pub"\n')
    result = run_service(["agent", "run", "--config", str(config)], {}, tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "╭" not in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert f"operator_public_key = {config.parent / 'operator.pub'}: no such file" in error
