"""``docs/operations/fleet-setup.md`` run as written: every command, in order, for real.

The page's shell blocks (each after a ``<!-- step: NAME -->`` marker) run in one
working folder with the machine paths moved under a temporary root. ``systemctl
restart mosquitto`` starts the real Mosquitto on the installed config (as root it drops
to the ``mosquitto`` user, as it would under systemd, so the documented owners and
modes must be right); ``systemctl reload`` sends it SIGHUP; the sync service and the
agent are started from their documented command lines. The last step must list the
device online.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgeserve.broker import find_mosquitto
from edgeserve.polling import wait_until
from edgeserve.processes import free_port

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations" / "fleet-setup.md"
STEP = re.compile(r"<!-- step: ([\w-]+) -->\s*```sh\n(.*?)```", re.DOTALL)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the documented installs chgrp to mosquitto"),
]


def documented_steps() -> list[tuple[str, str]]:
    return [
        (name, body.replace("\\\n", " ").strip()) for name, body in STEP.findall(DOC.read_text())
    ]


class Machines:
    """The three machines of the page, folded into one temporary root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.work = root / "home"
        self.work.mkdir()
        self.broker_port, self.admin_port, self.agent_port = free_port(), free_port(), free_port()
        self.moves = {  # longest first: /etc/edgeserve is a prefix of /etc/edgeserve-sync
            "/etc/mosquitto/edgeserve": str(root / "etc/mosquitto/edgeserve"),
            "/etc/mosquitto/conf.d": str(root / "etc/mosquitto/conf.d"),
            "/etc/edgeserve-sync": str(root / "etc/edgeserve-sync"),
            "/var/lib/edgeserve-sync": str(root / "var/lib/edgeserve-sync"),
            "/var/lib/mosquitto": str(root / "var/lib/mosquitto"),
            "/etc/edgeserve": str(root / "etc/edgeserve"),
            "broker.example.net": "localhost",
            "8883": str(self.broker_port),
            "8720": str(self.admin_port),
        }
        (root / "etc/mosquitto/conf.d").mkdir(parents=True)
        persistence = root / "var/lib/mosquitto"
        persistence.mkdir(parents=True)
        shutil.chown(persistence, "mosquitto", "mosquitto")
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "EDGESERVE_AGENT_PORT": str(self.agent_port),
            "EDGESERVE_AGENT_STATE_DIR": str(root / "var/lib/edgeserve-agent"),
            "EDGESERVE_SYNC_ADMIN_PORT": str(self.admin_port),
        }
        self.services: dict[str, subprocess.Popen[bytes]] = {}

    def moved(self, text: str) -> str:
        for machine_path, here in self.moves.items():
            text = text.replace(machine_path, here)
        return text

    def run(self, command: str) -> str:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", self.moved(command)],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def start(self, name: str, command: list[str]) -> None:
        log = (self.root / f"{name}.log").open("wb")
        self.services[name] = subprocess.Popen(
            command, cwd=self.work, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def rehome(self, installed: str) -> Path:
        """Move the machine paths written inside an installed config file, too."""
        config = Path(self.moved(installed))
        config.write_text(self.moved(config.read_text()))
        return config

    def start_broker(self) -> None:
        config = self.rehome("/etc/mosquitto/conf.d/edgeserve.conf")
        self.start("broker", [str(find_mosquitto()), "-c", str(config)])
        wait_until(lambda: "running" in self.log_of_live("broker"), 20, "mosquitto running")

    def log_of_live(self, name: str) -> str:
        """The service's log so far; its whole log as the error if it has exited."""
        assert self.services[name].poll() is None, self.log(name)
        return self.log(name)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for process in self.services.values():
            process.terminate()
        for process in self.services.values():
            process.wait(timeout=30)


@pytest.fixture
def machines() -> Iterator[Machines]:
    # Not under pytest's 0700 temp folder: Mosquitto reads its files as its own user.
    root = Path(tempfile.mkdtemp(prefix="fleet-setup-"))
    root.chmod(0o755)
    machines = Machines(root)
    try:
        yield machines
    finally:
        machines.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_the_documented_fleet_setup_brings_a_device_online(machines: Machines) -> None:
    steps = documented_steps()
    assert [name for name, _ in steps] == [
        "operator-init",
        "broker-install",
        "broker-start",
        "sync-install",
        "sync-start",
        "sync-public-key",
        "device-request",
        "operator-enroll",
        "broker-reload",
        "device-accept",
        "device-start",
        "operator-check",
    ]
    devices: list[dict[str, object]] = []
    for name, command in steps:
        if command == "systemctl restart mosquitto":
            machines.start_broker()
        elif name == "broker-reload":
            install, reload = command.splitlines()
            assert reload.strip() == "systemctl reload mosquitto"
            machines.run(install)
            machines.services["broker"].send_signal(signal.SIGHUP)
        elif name in ("sync-start", "device-start"):
            if name == "sync-start":
                machines.rehome("/etc/edgeserve-sync/sync.toml")
            machines.start(name, machines.moved(command).split())
            wait_for_service(machines, name)
        elif name == "operator-check":
            listed = functools.partial(online, machines, command, devices)
            wait_until(listed, 30, "cam-017 online")
        else:
            machines.run(command)
    assert any(row["device_id"] == "cam-017" and row["online"] for row in devices)


def wait_for_service(machines: Machines, name: str) -> None:
    port = machines.admin_port if name == "sync-start" else machines.agent_port
    path = "/v1/health" if name == "sync-start" else "/v2/health/ready"

    def ready() -> bool:
        machines.log_of_live(name)
        try:
            return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, 60, f"{name} ready")


def online(machines: Machines, command: str, seen: list[dict[str, object]]) -> bool:
    seen[:] = json.loads(machines.run(command))
    return any(row["device_id"] == "cam-017" and row["online"] for row in seen)
