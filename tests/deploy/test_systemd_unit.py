"""The systemd unit and the agent's side of its contract (Type=notify, WatchdogSec=).

The unit is rendered by the install script and checked with the real
``systemd-analyze``; the agent runs as a real process with ``NOTIFY_SOCKET`` pointing
at a datagram socket this test binds, as systemd would.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgeserve.artifacts import packaged_artifacts
from edgeserve.client import OipHttpClient
from edgeserve.processes import ServiceProcess, agent_process
from edgeserve.testing.notify import NotifyListener
from models.data import load_split

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "install-agent.sh"
JETSON_DROP_IN = REPO / "deploy" / "systemd" / "jetson-gpu.conf"
UNIT = "edgeserve-agent.service"
WATCHDOG_USEC = 200_000  # pings every 0.1 s

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def _render(unit_dir: Path, prefix: Path = Path(sys.prefix)) -> Path:
    """The unit as the installer writes it, for this interpreter's venv (ExecStart exists)."""
    unit_dir.mkdir(parents=True, exist_ok=True)
    rendered = subprocess.run(
        ["bash", str(SCRIPT), "render-unit", "--prefix", str(prefix)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    (unit_dir / UNIT).write_text(rendered.stdout)
    return unit_dir / UNIT


def _directives(unit: Path) -> dict[str, list[str]]:
    """``Key`` -> every value it is given (systemd allows repeating a key)."""
    found: dict[str, list[str]] = {}
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


# -- the unit file ------------------------------------------------------------------------


@needs_systemd_analyze
def test_the_rendered_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = _render(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_systemd_analyze
def test_the_jetson_drop_in_verifies_with_the_unit(tmp_path: Path) -> None:
    _render(tmp_path)
    (tmp_path / f"{UNIT}.d").mkdir()
    shutil.copy(JETSON_DROP_IN, tmp_path / f"{UNIT}.d" / JETSON_DROP_IN.name)
    # With the unit path set, verify loads the unit by name and its drop-in folder too.
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"}
    result = subprocess.run(
        ["systemd-analyze", "verify", UNIT], capture_output=True, text=True, env=env
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_systemd_analyze
def test_the_units_exposure_level_stays_at_or_below_two(tmp_path: Path) -> None:
    unit = _render(tmp_path)
    # --threshold is in tenths: 20 fails the run above an overall exposure of 2.0.
    command = ["systemd-analyze", "security", "--offline=yes", "--threshold=20", "--no-pager"]
    result = subprocess.run([*command, str(unit)], capture_output=True, text=True)
    if "--offline" in result.stderr:
        pytest.skip("this systemd-analyze cannot analyze a unit offline")
    assert result.returncode == 0, result.stdout[-2000:]


def test_the_unit_is_a_notify_service_with_a_watchdog_and_its_own_user() -> None:
    unit = _directives(REPO / "deploy" / "systemd" / UNIT)
    expected = {
        "Type": ["notify"],
        "NotifyAccess": ["main"],
        "WatchdogSec": ["30s"],
        "Restart": ["on-failure"],
        "User": ["edgeserve"],
        "Group": ["edgeserve"],
        "StateDirectory": ["edgeserve"],
        "ConfigurationDirectory": ["edgeserve"],
        "UMask": ["0077"],
    }
    assert {key: unit.get(key) for key in expected} == expected
    assert unit["ExecStart"] == [
        "/opt/edgeserve/bin/edgeserve agent run --config /etc/edgeserve/agent.toml"
    ]
    for key in ("RestartSec", "StartLimitIntervalSec", "StartLimitBurst", "LimitNOFILE"):
        assert key in unit


def test_the_unit_has_the_hardening_the_issue_names() -> None:
    unit = _directives(REPO / "deploy" / "systemd" / UNIT)
    hardening = {
        "ProtectSystem": ["strict"],
        "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"],
        "PrivateDevices": ["yes"],
        "NoNewPrivileges": ["yes"],
        "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
        "ProtectKernelTunables": ["yes"],
        "ProtectKernelModules": ["yes"],
        "ProtectKernelLogs": ["yes"],
        "ProtectControlGroups": ["yes"],
        "RestrictNamespaces": ["yes"],
        "LockPersonality": ["yes"],
        "MemoryDenyWriteExecute": ["yes"],
        "RestrictRealtime": ["yes"],
        "CapabilityBoundingSet": [""],
    }
    assert {key: unit.get(key) for key in hardening} == hardening
    assert "@system-service" in unit["SystemCallFilter"]


# -- the agent under a notify socket --------------------------------------------------------


@pytest.fixture
def notify() -> Iterator[NotifyListener]:
    with NotifyListener.abstract("edgeserve-test") as receiver:
        yield receiver


@pytest.fixture
def supervised(tmp_path: Path, notify: NotifyListener) -> Iterator[ServiceProcess]:
    """An agent started as systemd starts it: NOTIFY_SOCKET and WATCHDOG_USEC set."""
    agent = agent_process(tmp_path)
    agent.env |= {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    try:
        agent.start()
        yield agent
    finally:
        agent.stop()


@pytest.mark.integration
def test_ready_arrives_once_the_port_serves(
    tmp_path: Path, notify: NotifyListener, supervised: ServiceProcess
) -> None:
    messages = notify.wait_for("READY=1")
    # By READY=1 the port was written and answers: nothing may reach the agent too early.
    port = int((tmp_path / "agent.port").read_text())
    assert httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200
    ready = messages[-1].split("\n")
    assert f"STATUS=serving on 127.0.0.1:{port}; models: digits-edge" in ready
    assert "STATUS=loading models" in messages[0]


@pytest.mark.integration
def test_a_healthy_agent_pings_the_watchdog_repeatedly(
    notify: NotifyListener, supervised: ServiceProcess
) -> None:
    notify.wait_for("READY=1")
    for _ in range(3):
        notify.wait_for("WATCHDOG=1", timeout=5)


@pytest.mark.integration
def test_a_stopped_agent_sends_no_pings_until_it_runs_again(
    notify: NotifyListener, supervised: ServiceProcess
) -> None:
    notify.wait_for("WATCHDOG=1")
    os.kill(supervised.pid, signal.SIGSTOP)  # a hung process, as the watchdog sees it
    try:
        _wait_until_stopped(supervised.pid)
        notify.drain()
        assert notify.silent_for("WATCHDOG=1", seconds=5 * WATCHDOG_USEC / 1e6)
    finally:
        os.kill(supervised.pid, signal.SIGCONT)
    notify.wait_for("WATCHDOG=1", timeout=5)


@pytest.mark.integration
def test_sigterm_sends_stopping_and_the_agent_exits_cleanly(
    notify: NotifyListener, supervised: ServiceProcess
) -> None:
    notify.wait_for("READY=1")
    os.kill(supervised.pid, signal.SIGTERM)
    notify.wait_for("STOPPING=1")
    assert supervised.stop() == 0


@pytest.mark.integration
def test_watchdog_meant_for_another_pid_gets_no_pings(
    tmp_path: Path, notify: NotifyListener
) -> None:
    agent = agent_process(tmp_path)
    agent.env |= {
        "NOTIFY_SOCKET": notify.address,
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
        "WATCHDOG_PID": "1",
    }
    try:
        agent.start()
        notify.wait_for("READY=1")
        assert notify.silent_for("WATCHDOG=1", seconds=5 * WATCHDOG_USEC / 1e6)
    finally:
        agent.stop()


def _wait_until_stopped(pid: int, timeout: float = 5.0) -> None:
    """Block until the kernel reports ``pid`` stopped (state T)."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, f"process {pid} did not stop"
        time.sleep(0.01)


# -- MemoryDenyWriteExecute=yes --------------------------------------------------------------

PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1
# Sets the kernel's memory-deny-write-execute (inherited across exec), then becomes the agent.
_MDWE_EXEC = (
    "import ctypes, os, sys;"
    "libc = ctypes.CDLL(None, use_errno=True);"
    f"assert libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) == 0;"
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def _kernel_has_mdwe() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(PR_GET_MDWE, 0, 0, 0, 0)) >= 0


@pytest.mark.integration
@pytest.mark.skipif(not _kernel_has_mdwe(), reason="the kernel has no PR_SET_MDWE (Linux < 6.3)")
def test_the_agent_serves_with_write_execute_memory_denied(tmp_path: Path) -> None:
    """Why the unit can say MemoryDenyWriteExecute=yes: ONNX Runtime's CPU path needs no
    writable-and-executable memory. The kernel's prctl is the same rule as systemd's
    seccomp filter for mappings (systemd also refuses mprotect(PROT_EXEC) outright)."""
    port_file = tmp_path / "agent.port"
    args = [sys.executable, "-c", _MDWE_EXEC, sys.executable, "-m", "edgeserve"]
    agent = ServiceProcess(
        [*args, "agent", "run", "--port-file", str(port_file)],
        port_file,
        env={"EDGESERVE_AGENT_PORT": "0", "EDGESERVE_AGENT_STATE_DIR": str(tmp_path / "state")},
        log_file=tmp_path / "agent.log",
    )
    x, y = load_split(packaged_artifacts(), "test")
    try:
        agent.start()
        with OipHttpClient(f"http://127.0.0.1:{agent.port}") as client:
            answer = client.infer("digits-edge", {"input": x[:32]})
        predictions = [int(p) for p in answer.parameters["prediction"]]
        assert sum(p == int(t) for p, t in zip(predictions, y[:32], strict=True)) >= 28
    finally:
        agent.stop()


@pytest.mark.skipif(not _kernel_has_mdwe(), reason="the kernel has no PR_SET_MDWE (Linux < 6.3)")
def test_the_rule_set_by_the_wrapper_holds_in_the_program_it_executes() -> None:
    probe = f"import ctypes; print(ctypes.CDLL(None).prctl({PR_GET_MDWE}, 0, 0, 0, 0))"
    result = subprocess.run(
        [sys.executable, "-c", _MDWE_EXEC, sys.executable, "-c", probe],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert result.stdout.strip() == str(PR_MDWE_REFUSE_EXEC_GAIN)
