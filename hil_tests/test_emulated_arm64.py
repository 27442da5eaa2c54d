"""The edge agent on arm64, emulated: an aarch64 Debian root under qemu-user (see
``hil_tests/emulated_arm64.py``), the agent installed there by ``deploy/install-agent.sh``
from a wheel of this tree with aarch64 wheels of its dependencies.

What it proves: the agent installs on arm64 with one runtime and no heavy packages,
answers the held-out digits correctly with ONNX Runtime and with TFLite (LiteRT) built for
aarch64, takes a signed delta update from the host's sync service through the host's
Mosquitto and serves it, and after ``kill -9`` mid-update comes back on a model that
verifies. What it cannot: timing (emulation is many times slower than a device, so only
correctness is asserted), a Jetson's GPU, or a real power cut (a killed process is not a
lost page cache). It runs in the normal suite when the cached root exists and skips with
the command that builds it otherwise.
"""

from __future__ import annotations

import platform
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeserve.artifacts import packaged_artifacts
from edgeserve.broker import find_mosquitto
from edgeserve.client import OipHttpClient
from edgeserve.eval.fleet import FleetStack, start_fleet
from edgeserve.polling import wait_until
from edgeserve.processes import ServiceProcess, agent_process
from edgeserve.runtimes import RuntimeOptions, open_session
from edgeserve.wire.model_card import ModelCard
from hil_tests import emulated_arm64 as arm
from hil_tests.hardware import skip_if
from models.data import load_split
from tests.faults.fleet import (
    MODEL,
    Release,
    active_sha256,
    build_release,
    expected_labels,
    online,
    packaged_release,
)

pytestmark = [pytest.mark.hil, pytest.mark.integration, pytest.mark.slow]

DEVICE = "arm-0"
TFLITE = "digits-edge-tflite"
ROWS = 64
EMULATED_S = 600.0  # a start or an update under emulation (a device is far faster)
SOURCE_FILES = ("edge_agent/server.py", "edgeserve/runtimes/onnx.py", "edgeserve/extras.py")


@pytest.fixture(scope="module")
def root_held() -> Iterator[None]:
    """The cached root, for this module alone (another test run waits)."""
    skip_if(arm.missing())
    with arm.exclusive():
        yield


@pytest.fixture(scope="module")
def installed(root_held: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """This tree's agent installed into the cached arm64 root, the way a device upgrades."""
    wheel = arm.build_wheel(tmp_path_factory.mktemp("wheel"))
    done = arm.install_agent(wheel, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    listed = arm.run_in_root([f"{arm.PREFIX}/bin/python", "-m", "pip", "list",
                              "--format=freeze"], timeout=300)  # fmt: skip
    probe = "import platform; print(platform.machine())"
    machine = arm.run_in_root([f"{arm.PREFIX}/bin/python", "-c", probe], timeout=300)
    packages = {line.split("==")[0].lower() for line in listed.stdout.split()}
    return {"bytes": arm.installed_bytes(), "packages": packages, "machine": machine.stdout.strip()}


@pytest.fixture(scope="module")
def fleet(
    installed: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FleetStack]:
    """The host's Mosquitto and sync service, and one agent in the arm64 root enrolled
    with them, serving the ONNX and the TFLite digits models. Small chunks, one asked for
    at a time, so that an update lasts long enough to be interrupted."""
    skip_if(None if find_mosquitto() else "mosquitto is not installed (apt-get install mosquitto)")
    workdir = tmp_path_factory.mktemp("arm-fleet")
    stack = start_fleet(workdir, [], broker_kind="mosquitto", baseline=(MODEL,), chunk_size="1024")
    try:
        stack.setup.add_device(DEVICE)
        process = emulated_agent(stack, workdir)
        process.start(timeout=EMULATED_S)
        wait_until(lambda: online(stack) == 1, EMULATED_S, "the arm64 agent online")
        yield stack
    finally:
        stack.stop()


def emulated_agent(stack: FleetStack, workdir: Path) -> ServiceProcess:
    """``edgeserve agent run`` by the root's venv, with the test's folder bound in at its
    own path so the host's certificates, keys and port file mean the same inside."""
    settings = stack.agent_settings(DEVICE) | {
        "models": f'["{MODEL}", "{TFLITE}"]',
        "routing_mode": "local",
        "sync_chunk_window": "1",
        "telemetry": "false",
    }
    process = agent_process(workdir, name=DEVICE, **settings)
    process.args = arm.in_root([f"{arm.PREFIX}/bin/python", *process.args[1:]], binds=(workdir,))
    process.env = arm.root_env({k: v for k, v in process.env.items() if k.startswith("EDGESERVE_")})
    stack.agents[DEVICE] = process
    return process


def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_split(packaged_artifacts(), "test")
    return np.asarray(x[:ROWS], dtype=np.float32), np.asarray(y[:ROWS])


def answers(stack: FleetStack, model: str, rows: np.ndarray) -> list[str]:
    with OipHttpClient(stack.agent_url(DEVICE), timeout=60) as client:
        return [
            client.infer(model, {"input": row[np.newaxis, :]}).parameters["prediction"][0]
            for row in rows
        ]


def host_labels(card_name: str, rows: np.ndarray) -> list[str]:
    """What the same packaged model answers on this (x86-64) host."""
    card = ModelCard.load(packaged_artifacts() / f"{card_name}.card.json")
    session = open_session(card.format, packaged_artifacts() / card.file, RuntimeOptions())
    try:
        logits = session.run({"input": rows}, [card.logits_output or "logits"])
    finally:
        session.close()
    return [str(i) for i in np.argmax(next(iter(logits.values())), axis=1)]


def served(stack: FleetStack) -> str:
    with OipHttpClient(stack.agent_url(DEVICE), timeout=60) as client:
        versions: list[str] = client.model_metadata(MODEL)["versions"]
    return versions[0]


def stored_chunks(state: Path) -> int:
    return sum(1 for path in (state / "downloads").glob("*/chunks/*") if path.name.isdigit())


def test_the_installer_puts_this_trees_agent_on_arm64_with_one_runtime_and_nothing_heavy(
    installed, record_figures
):
    assert installed["machine"] == "aarch64"
    site = next((arm.ROOT / arm.PREFIX.lstrip("/")).glob("lib/python3*/site-packages"))
    root = Path(__file__).resolve().parents[1]
    for name in SOURCE_FILES:  # the upgrade replaced the code, not only the dependencies
        assert (site / name).read_bytes() == (root / name).read_bytes(), name
    packages = installed["packages"]
    assert {"onnxruntime", "ai-edge-litert", "paho-mqtt", "uvloop", "httptools"} <= packages
    assert not {"onnxruntime-gpu", "torch", "grpcio", "fastapi", "websockets"} & packages
    record_figures("arm64_install", {"extras": arm.EXTRAS, "venv_mb": installed["bytes"] / 1e6,
                                     "packages": len(packages)})  # fmt: skip


def test_onnx_runtime_on_arm64_answers_the_digits_as_on_x86(fleet):
    rows, labels = digits()
    got = answers(fleet, MODEL, rows)
    assert got == host_labels(MODEL, rows)
    assert np.mean([g == str(y) for g, y in zip(got, labels, strict=True)]) >= 0.9


def test_tflite_on_arm64_answers_the_digits_as_on_x86(fleet):
    rows, labels = digits()
    got = answers(fleet, TFLITE, rows)
    assert got == host_labels(TFLITE, rows)
    assert np.mean([g == str(y) for g, y in zip(got, labels, strict=True)]) >= 0.9


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith("VmRSS")).split()[1]) / 1024


def test_the_agents_memory_serving_digits_is_recorded(fleet, tmp_path, record_figures):
    """Both models loaded and answering: the agent here in the arm64 root (qemu's
    translated code included, so it bounds a device's figure from above) and the same
    agent on the host with this suite's Python, for comparison."""
    rows, _ = digits()
    answers(fleet, MODEL, rows)
    answers(fleet, TFLITE, rows)
    host = agent_process(tmp_path, name="x86", models=f'["{MODEL}", "{TFLITE}"]',
                         routing_mode="local", cache_entries="0")  # fmt: skip
    with host:
        with OipHttpClient(f"http://127.0.0.1:{host.port}", timeout=60) as client:
            for model in (MODEL, TFLITE):
                for row in rows:
                    client.infer(model, {"input": row[np.newaxis, :]})
        host_mb = rss_mb(host.pid)
    figures = {"arm64_under_qemu": rss_mb(fleet.agents[DEVICE].pid), platform.machine(): host_mb}
    record_figures("agent_rss_mb_serving_digits", figures | {"models": [MODEL, TFLITE]})
    assert all(value > 0 for value in figures.values())


@pytest.fixture(scope="module")
def v2(tmp_path_factory: pytest.TempPathFactory) -> Release:
    return build_release(tmp_path_factory.mktemp("v2"))


def test_a_signed_delta_update_from_the_host_installs_and_serves_on_arm64(fleet, v2):
    rows, _ = digits()
    rollout = fleet.push(v2.artifact, v2.card, canary=1, stages=[1.0])
    view = fleet.wait_rollout(rollout, timeout=EMULATED_S)
    assert view["state"] == "completed", view
    assert served(fleet) == v2.card.version
    assert answers(fleet, MODEL, rows) == expected_labels(v2, rows)
    assert issued_by_encoding(fleet) == {"delta": 1}  # a delta against v1, not the file


def issued_by_encoding(stack: FleetStack) -> dict[str, int]:
    """Manifests the sync service issued: deltas against a base, or full artifacts."""
    import httpx

    counts: dict[str, int] = {}
    prefix = "edgeserve_sync_updates_issued_total{encoding="
    for line in httpx.get(f"{stack.admin_url}/metrics").text.splitlines():
        if line.startswith(prefix) and float(line.split()[-1]) > 0:
            encoding = line[len(prefix) :].split('"')[1]
            kind = "full" if encoding == "zstd" else "delta"
            counts[kind] = counts.get(kind, 0) + int(float(line.split()[-1]))
    return counts


def test_kill_9_mid_update_on_arm64_comes_back_on_a_verified_model(fleet, v2):
    """The device forgets version 2 (its state wiped: back to the packaged version 1),
    so on start it fetches the update again; it is killed with chunks on disk."""
    rows, _ = digits()
    agent, state = fleet.agents[DEVICE], fleet.workdir / f"{DEVICE}-state"
    v1 = packaged_release()
    known = {v1.card.sha256: v1.card.version, v2.card.sha256: v2.card.version}
    agent.stop()
    shutil.rmtree(state)
    agent.start(timeout=EMULATED_S)
    wait_until(lambda: stored_chunks(state) >= 1, EMULATED_S, "the update's first chunk")
    agent.kill()
    assert served_version_on_disk(state, known) == v1.card.version  # mid-update: still v1

    agent.start(timeout=EMULATED_S)
    assert served(fleet) in known.values()
    wait_until(lambda: served(fleet) == v2.card.version, EMULATED_S, "the resumed update")
    assert served_version_on_disk(state, known) == v2.card.version
    assert answers(fleet, MODEL, rows) == expected_labels(v2, rows)


def served_version_on_disk(state: Path, known: dict[str, str]) -> str | None:
    """The version whose bytes are in the active slot, or None if they match neither."""
    digest = active_sha256(state)
    return known.get(digest or "")
