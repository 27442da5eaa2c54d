"""The edge agent on a real ARM (or Jetson) device reached over SSH.

``EDGESERVE_HIL_ARM_HOST=user@host`` names the device (``EDGESERVE_HIL_ARM_SSH_KEY`` an
identity file if the default one does not log in). The source tree is copied over,
installed into a venv on the device with the ``edge`` extra (the device needs a Python
3.11+ and a package index or a pip wheelhouse it can reach), the agent is started there
as the operator would start it, and a probe that runs on the device measures local
answers (REST on loopback, batch 1) against the held-out digits: every answer must be
200 and correct as often as on x86. Where ``deploy/install-agent.sh`` is in the tree and
the login may ``sudo`` without a password, the installer does the install (into folders
and under a user of the test's own, purged afterwards), otherwise a plain venv does.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgeserve.bench.machine import SOURCE_ROOT
from hil_tests.hardware import ArmTarget

pytestmark = pytest.mark.hil

SHIPPED = ("edgeserve", "deploy", "pyproject.toml", "README.md")
INSTALL_TIMEOUT_S = 1800.0  # onnxruntime wheels for aarch64 are large; devices are slow
PROBE_REQUESTS = 1000

# Runs on the device with the agent's venv: REST on loopback, batch 1, keep-alive.
REMOTE_PROBE = """
import http.client, json, sys, time
import numpy as np
from edgeserve.artifacts import packaged_artifacts
from models.data import load_split
from edgeserve.wire import oip_rest
from edgeserve.wire.tensors import InferRequest, InferTensor

port, count = int(sys.argv[1]), int(sys.argv[2])
x, y = load_split(packaged_artifacts(), "test")
connection = http.client.HTTPConnection("127.0.0.1", port)
latencies, statuses, correct = [], {}, 0
for i in range(count):
    row = np.ascontiguousarray(x[i % len(x)][None, :])
    request = InferRequest("digits-edge", [InferTensor("input", "FP32", [1, 64], row)])
    body, _ = oip_rest.encode_request(request, binary=False)
    started = time.perf_counter()
    connection.request("POST", "/v2/models/digits-edge/infer", body)
    reply = connection.getresponse()
    data = reply.read()
    latencies.append(time.perf_counter() - started)
    statuses[reply.status] = statuses.get(reply.status, 0) + 1
    if reply.status == 200:
        answer = json.loads(data)
        correct += int(answer["parameters"]["prediction"][0] == str(y[i % len(y)]))
connection.close()
ms = np.array(latencies[50:]) * 1e3
print(json.dumps({"requests": count, "statuses": statuses, "accuracy": correct / count,
                  "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}))
"""


@dataclass
class Device:
    target: ArmTarget
    workdir: str  # on the device

    def run(self, command: str, timeout: float = 120.0, stdin: str | None = None) -> str:
        argv = ["ssh", *self.target.ssh_options(), self.target.host, command]
        done = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise AssertionError(f"on {self.target.host}: {command!r} exited {done.returncode}: "
                                 f"{done.stderr[-2000:] or done.stdout[-2000:]}")  # fmt: skip
        return done.stdout

    def copy(self, local: Path, remote: str) -> None:
        argv = ["scp", *self.target.ssh_options(), str(local), f"{self.target.host}:{remote}"]
        subprocess.run(argv, check=True, capture_output=True, timeout=600)


def source_archive(path: Path) -> Path:
    """The source tree as installable by pip (no caches, no venv, no build output)."""

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if "__pycache__" in info.name or info.name.endswith(".pyc") else info

    with tarfile.open(path, "w:gz") as archive:
        for name in SHIPPED:
            archive.add(SOURCE_ROOT / name, arcname=f"edgeserve-src/{name}", filter=keep)
    return path


@pytest.fixture(scope="module")
def device(arm_target: ArmTarget, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    """The device with the source unpacked in a fresh folder, removed afterwards."""
    name = f"edgeserve-hil-{uuid.uuid4().hex[:8]}"
    remote = Device(arm_target, f"/tmp/{name}")
    remote.run("true", timeout=60)  # reachable and logged in, or fail here with the reason
    archive = source_archive(tmp_path_factory.mktemp("arm") / "edgeserve-src.tar.gz")
    remote.run(f"mkdir -p {remote.workdir}")
    remote.copy(archive, f"{remote.workdir}/src.tar.gz")
    remote.run(f"cd {remote.workdir} && tar xzf src.tar.gz")
    try:
        yield remote
    finally:
        remote.run(f"rm -rf {shlex.quote(remote.workdir)}", timeout=300)


@dataclass(frozen=True)
class Installed:
    python: str  # the interpreter of the venv edgeserve[edge,cpu] was installed into
    by: str  # "install-agent.sh" or "pip"
    paths: dict[str, str]  # the installer's folders, when it was used


def can_use_installer(device: Device, script: str) -> bool:
    """The installer is in the copied tree and this login may run it as root."""
    probe = f"test -f {script} && sudo -n true 2>/dev/null && echo yes || echo no"
    return device.run(probe).strip() == "yes"


@pytest.fixture(scope="module")
def installed(device: Device) -> Iterator[Installed]:
    """edgeserve[edge,cpu] on the device: through deploy/install-agent.sh where it can run
    (into folders of its own, under a user of its own, purged afterwards), else pip."""
    source = f"{device.workdir}/edgeserve-src"
    script = f"{source}/deploy/install-agent.sh"
    if not can_use_installer(device, script):
        venv = f"{device.workdir}/venv"
        device.run(f"python3 -m venv {venv} && {venv}/bin/pip install -q '{source}[edge,cpu]'",
                   timeout=INSTALL_TIMEOUT_S)  # fmt: skip
        yield Installed(f"{venv}/bin/python", "pip", {})
        return
    # Never the device's real /opt/edgeserve or /etc/systemd/system: a test must not
    # replace an agent the device runs.
    paths = {name: f"{device.workdir}/{name}" for name in ("prefix", "config-dir", "unit-dir",
                                                           "state-dir")}  # fmt: skip
    options = " ".join(f"--{name} {path}" for name, path in paths.items())
    options += f" --user eshil{uuid.uuid4().hex[:8]}"
    device_id = f"hil-{uuid.uuid4().hex[:8]}"
    try:
        device.run(f"sudo -n bash {script} install --device-id {device_id} --source {source} "
                   f"--no-start {options}", timeout=INSTALL_TIMEOUT_S)  # fmt: skip
        yield Installed(f"{paths['prefix']}/bin/python", "install-agent.sh", paths)
    finally:
        device.run(f"sudo -n bash {script} uninstall --purge {options}", timeout=600)


def wait_for_port(device: Device, port_file: str, timeout: float = 180.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = device.run(f"cat {port_file} 2>/dev/null || true").strip()
        if text:
            document = json.loads(text)  # the port, or {"name": port, ...} main one first
            return int(document if isinstance(document, int) else next(iter(document.values())))
        time.sleep(0.5)  # polling a remote file: each round trip is itself the wait
    log = device.run(f"tail -50 {device.workdir}/agent.log || true")
    raise AssertionError(f"the agent wrote no port file in {timeout:.0f} s:\n{log}")


def test_agent_on_the_device_answers_locally_with_its_latency_measured(
    device, installed, record_figures
):
    machine = device.run("uname -m && nproc && (cat /proc/device-tree/model 2>/dev/null || true)")
    port_file, state = f"{device.workdir}/agent.port", f"{device.workdir}/state"
    pid = device.run(
        # No result cache (repeated rows would hit it) and no cloud: the local model path.
        f"cd {device.workdir} && EDGESERVE_AGENT_PORT=0 EDGESERVE_AGENT_STATE_DIR={state} "
        "EDGESERVE_AGENT_CACHE_ENTRIES=0 EDGESERVE_AGENT_ROUTING_MODE=local "
        f"nohup {installed.python} -m edgeserve agent run --port-file {port_file} "
        f"> agent.log 2>&1 < /dev/null & echo $!"
    ).strip()
    try:
        port = wait_for_port(device, port_file)
        probe = device.run(
            f"{installed.python} - {port} {PROBE_REQUESTS}", timeout=600, stdin=REMOTE_PROBE
        )
    finally:
        # SIGTERM is the graceful stop; after 10 s of not exiting, SIGKILL.
        device.run(f"kill {pid}; for i in $(seq 100); do kill -0 {pid} 2>/dev/null || exit 0; "
                   f"sleep 0.1; done; kill -9 {pid}; true")  # fmt: skip
    figures = json.loads(probe.strip().splitlines()[-1])
    figures |= {"device": machine.split(), "installed_by": installed.by}
    record_figures("arm_agent_local_rest", figures)
    assert figures["statuses"] == {"200": PROBE_REQUESTS}
    assert figures["accuracy"] >= 0.9


def test_install_script_renders_a_verified_unit_and_a_device_key(device, installed):
    if installed.by != "install-agent.sh":
        pytest.skip("deploy/install-agent.sh is absent or the login cannot sudo -n")
    unit = f"{installed.paths['unit-dir']}/edgeserve-agent.service"
    exec_start = device.run(f"grep '^ExecStart=' {unit}").strip()
    assert exec_start.startswith(f"ExecStart={installed.paths['prefix']}/bin/edgeserve agent run")
    # The installer ran systemd-analyze verify on it; here: it still verifies on the device.
    device.run(f"command -v systemd-analyze > /dev/null || exit 0; systemd-analyze verify {unit}")
    listing = device.run(f"sudo -n ls {installed.paths['config-dir']}")
    assert "device.key" in listing.split(), listing
