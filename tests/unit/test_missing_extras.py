"""A feature configured without its extra stops with one line that names the fix.

Each probe runs in a fresh interpreter where the optional package cannot be imported
(``sys.modules[name] = None`` makes Python's import fail exactly as for an absent
package), so the rest of the environment stays the suite's own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeserve.artifacts import packaged_artifacts
from edgeserve.extras import MissingExtra, require
from edgeserve.security.signing import PUBLIC_NAME, ensure_operator_key


def run_agent_without(
    module: str, tmp_path: Path, **settings: str
) -> subprocess.CompletedProcess[str]:
    probe = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "from edgeserve.cli.main import main\n"
        "sys.argv = ['edgeserve', 'agent', 'run']\n"
        "main()\n"
    )
    env = os.environ | {
        "EDGESERVE_AGENT_STATE_DIR": str(tmp_path / "state"),
        "EDGESERVE_AGENT_PORT": "0",
        "EDGESERVE_AGENT_ROUTING_MODE": "escalate",
    }
    env |= {f"EDGESERVE_AGENT_{key.upper()}": value for key, value in settings.items()}
    return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip


def test_require_names_the_feature_the_extra_and_the_install_command() -> None:
    with pytest.raises(MissingExtra) as missing:
        require("edgeserve_no_such_package", "fleet", "fleet sync (sync_broker)")
    assert missing.value.message.startswith("fleet sync (sync_broker) needs the 'fleet' extra")
    assert missing.value.message.endswith("pip install 'edgeserve[fleet]'")


def test_an_agent_set_to_sync_without_the_fleet_extra_stops_with_one_line(tmp_path: Path) -> None:
    ensure_operator_key(tmp_path / "keys")
    result = run_agent_without(
        "paho", tmp_path, sync_broker="127.0.0.1:1883",
        operator_public_key=str(tmp_path / "keys" / PUBLIC_NAME),
    )  # fmt: skip
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "fleet sync (sync_broker) needs the 'fleet' extra" in result.stderr
    assert "pip install 'edgeserve[fleet]'" in result.stderr


def test_an_agent_set_to_escalate_without_the_escalation_extra_stops_with_one_line(
    tmp_path: Path,
) -> None:
    result = run_agent_without("grpc", tmp_path, cloud_target="127.0.0.1:8001")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "escalating to the cloud (cloud_target) needs the 'escalation' extra" in result.stderr


def test_an_onnx_model_without_onnxruntime_names_the_cpu_extra() -> None:
    model = packaged_artifacts() / "digits-edge.onnx"
    probe = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "from pathlib import Path\n"
        "from edgeserve.extras import MissingExtra\n"
        "from edgeserve.runtimes import RuntimeOptions, open_session\n"
        "try:\n"
        f"    open_session('onnx', Path({str(model)!r}), RuntimeOptions())\n"
        "except MissingExtra as exc:\n"
        "    print(exc.message)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60, check=True)  # fmt: skip
    assert "serving a 'onnx' model needs the 'cpu' extra" in result.stdout
    assert "pip install 'edgeserve[cpu]'" in result.stdout
