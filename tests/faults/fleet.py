"""A fleet whose agents can live in a network namespace, and the probes the fault tests use.

``start_reachable_fleet`` is ``edgeserve.eval.fleet.start_fleet`` with two changes a
namespaced agent needs: Mosquitto listens on every interface (the agent dials the host
end of its veth link, not loopback) and the broker's certificate names that address
too. A namespaced agent is driven over its unix socket (``unix_client``), which
stays reachable through the shared filesystem while its link is cut.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from edgeserve.artifacts import packaged_artifacts
from edgeserve.broker import BrokerSetup, find_mosquitto, start_broker
from edgeserve.broker.config import MosquittoConfig
from edgeserve.client import OipHttpClient
from edgeserve.eval.fleet import SYNC_USER, FleetStack, start_sync
from edgeserve.processes import ServiceProcess, agent_process, free_port
from edgeserve.security.pki import ensure_dev_pki
from edgeserve.testing.netns import NetNamespace
from edgeserve.wire.model_card import CARD_SUFFIX, ModelCard
from models.data import load_split
from models.finetune import build_edge_version

MODEL = "digits-edge"


@dataclass(frozen=True)
class Release:
    artifact: Path
    card: ModelCard


def build_release(folder: Path) -> Release:
    artifact, card = build_edge_version(folder)
    return Release(artifact, card)


def packaged_release() -> Release:
    card = ModelCard.load(packaged_artifacts() / f"{MODEL}{CARD_SUFFIX}")
    return Release(packaged_artifacts() / card.file, card)


class AllInterfacesSetup(BrokerSetup):
    """A broker setup whose Mosquitto listens on every interface, not only loopback."""

    def mosquitto_config(self) -> MosquittoConfig:
        return replace(super().mosquitto_config(), bind=None)


# The marks of every fault test that starts a fleet: it needs a real Mosquitto.
FLEET_FAULT_MARKS = [
    pytest.mark.faults,
    pytest.mark.integration,
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed"),
]


def start_reachable_fleet(
    workdir: Path,
    devices: Iterable[str],
    extra_ips: Iterable[str] = (),
    baseline: Iterable[str] = (MODEL,),
    agent_overrides: dict[str, str] | None = None,
    **sync_settings: str,
) -> FleetStack:
    """Broker (all interfaces, certificate naming ``extra_ips``), sync service, agents."""
    devices = list(devices)
    ips = ("127.0.0.1", "::1", *extra_ips)
    pki = ensure_dev_pki(workdir / "pki", devices=devices, ips=ips)
    setup = AllInterfacesSetup.create(workdir / "broker", pki, free_port(), devices, [SYNC_USER])
    broker = start_broker(setup, kind="mosquitto")
    try:
        sync = start_sync(workdir, setup, broker.supports_mqtt5, sync_settings)
    except BaseException:
        broker.stop()
        raise
    stack = FleetStack(workdir, setup, broker, sync, agent_overrides=agent_overrides or {})
    try:
        stack.register_packaged(baseline)
        for device in devices:
            stack.start_agent(device)
    except BaseException:
        stack.stop()
        raise
    return stack


def namespaced_agent(
    stack: FleetStack, device: str, namespace: NetNamespace, **settings: str
) -> ServiceProcess:
    """An agent of ``stack`` inside ``namespace``, dialing the broker over the veth link;
    not started. It listens on ``<workdir>/<device>.sock`` (see ``agent_socket``)."""
    if device not in stack.setup.users():
        stack.setup.add_device(device)
    enrolled = stack.agent_settings(device) | {
        "sync_broker": f"{namespace.host_ip}:{stack.setup.port}",
        "unix_socket": str(agent_socket(stack.workdir, device)),
    }
    process = agent_process(stack.workdir, name=device, **(enrolled | settings))
    process.args = namespace.command(process.args)
    stack.agents[device] = process
    return process


def agent_socket(workdir: Path, device: str) -> Path:
    return workdir / f"{device}.sock"


def unix_client(socket_path: Path, timeout: float = 10.0) -> OipHttpClient:
    """The OIP client over an agent's unix socket (reachable whatever its network does)."""
    return OipHttpClient("http://agent", timeout=timeout, unix_socket=str(socket_path))


# -- probes ------------------------------------------------------------------------------


def online(stack: FleetStack) -> int:
    with stack.admin() as admin:
        return sum(1 for device in admin.devices() if device["online"])


def fleet_requests(stack: FleetStack) -> int:
    """Request records the sync service stored, all devices together."""
    with stack.admin() as admin:
        return sum(int(row["requests"]) for row in admin.telemetry())


def fleet_dropped(stack: FleetStack) -> int:
    with stack.admin() as admin:
        return sum(int(row["dropped"]) for row in admin.telemetry())


def digits(count: int) -> npt.NDArray[np.float32]:
    x, _ = load_split(packaged_artifacts(), "test")
    return np.asarray(x[:count], dtype=np.float32)


def send(client: OipHttpClient, rows: npt.NDArray[np.float32]) -> list[dict[str, Any]]:
    """One request per row; the answers' parameters."""
    return [client.infer(MODEL, {"input": row[np.newaxis, :]}).parameters for row in rows]


def active_sha256(state_dir: Path) -> str | None:
    """sha256 of the bytes in the model's active slot on disk, or None if there is none."""
    folder = state_dir / "models" / MODEL
    try:
        slot = json.loads((folder / "state.json").read_text())["active"]
        card = ModelCard.load(folder / slot / "card.json")
        return hashlib.sha256((folder / slot / card.file).read_bytes()).hexdigest()
    except (FileNotFoundError, KeyError, ValueError):
        return None


def expected_labels(release: Release, rows: npt.NDArray[np.float32]) -> list[str]:
    """What ``release`` answers for ``rows``, computed here with ONNX Runtime."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(release.artifact), providers=["CPUExecutionProvider"])
    logits = session.run([release.card.logits_output or "logits"], {"input": rows})[0]
    labels = release.card.labels or [str(i) for i in range(logits.shape[1])]
    return [labels[int(i)] for i in np.argmax(logits, axis=1)]
