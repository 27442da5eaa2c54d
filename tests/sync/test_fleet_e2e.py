"""The fleet end to end: real Mosquitto, the real sync service, real agent processes.

Each test starts its own fleet (``edgeserve.eval.fleet.start_fleet``) in a temporary
folder: a broker with per-device passwords, certificates and ACL, the sync service with
the operator key, and agents pinning its public half. Faults are real: the broker is
killed with SIGKILL and restarted on its port, a device's link runs through a
fault-injecting TCP proxy, forged messages are published with real credentials.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgeserve.artifacts import packaged_artifacts
from edgeserve.broker import find_mosquitto
from edgeserve.client import OipHttpClient, metric_value
from edgeserve.eval.fleet import OPERATOR_USER, FleetStack, start_fleet
from edgeserve.polling import wait_until
from edgeserve.security.signing import OperatorKey, ensure_operator_key
from edgeserve.testing.fault_proxy import FaultProxy
from edgeserve.wire import topics
from edgeserve.wire.delta import build_payload
from edgeserve.wire.manifest import PayloadSpec, SignedManifest, UpdateManifest
from edgeserve.wire.model_card import ModelCard
from edgeserve.wire.sync_messages import DesiredState, UpdateResult
from models.data import load_split
from models.finetune import build_edge_version
from models.train import TrainConfig
from sync.golden import compute_self_test
from tests.sync.broker_client import BrokerClient

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed"),
]

MODEL = "digits-edge"


@dataclass(frozen=True)
class Release:
    artifact: Path
    card: ModelCard


@pytest.fixture(scope="module")
def v2(tmp_path_factory: pytest.TempPathFactory) -> Release:
    artifact, card = build_edge_version(tmp_path_factory.mktemp("v2"))
    return Release(artifact, card)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., FleetStack]]:
    stacks: list[FleetStack] = []

    def start_stack(devices: list[str], **kwargs: object) -> FleetStack:
        stack = start_fleet(tmp_path / f"fleet-{len(stacks)}", devices, **kwargs)  # type: ignore[arg-type]
        stacks.append(stack)
        wait_until(lambda: online(stack) == len(devices), 30, "devices online")
        return stack

    yield start_stack
    for stack in stacks:
        stack.stop()


# -- rollouts --------------------------------------------------------------------------


def test_a_rollout_to_five_agents_completes_with_deltas(start, v2: Release) -> None:
    stack = start([f"dev-{i}" for i in range(5)])
    rollout = stack.push(v2.artifact, v2.card, canary=1, stages=[0.5, 1.0])

    view = stack.wait_rollout(rollout, timeout=60)

    assert view["state"] == "completed", view
    assert [served_version(stack, d) for d in stack.agents] == ["2"] * 5
    metrics = sync_metrics(stack)
    deltas = ("zstd-patch", "tensor-delta", "tensor-delta-2")  # whichever is smallest
    issued = [f'edgeserve_sync_updates_issued_total{{encoding="{name}"}}' for name in deltas]
    assert sum(metric_value(metrics, name) for name in issued) == 5
    # every device fetched a delta, not the artifact: 5% of the full size each, at most
    assert metric_value(metrics, "edgeserve_sync_chunk_bytes_total") < 5 * 0.05 * v2.card.size_bytes


def test_a_transfer_cut_by_a_broker_kill_resumes_and_completes(start, v2: Release) -> None:
    # No base registered: the full artifact goes out, in 18 chunks of 1 KiB asked for two at
    # a time through a slow link, so the broker dies with the transfer half done.
    stack = start([], baseline=(), chunk_size="1024")
    with FaultProxy(stack.setup.host, stack.setup.port).run_in_thread() as proxy:
        proxy.delay(0.05)
        stack.start_agent(
            "dev-0",
            sync_broker=f"127.0.0.1:{proxy.port}",
            sync_chunk_window="2",
            sync_chunk_timeout_s="2",
        )
        wait_until(lambda: online(stack) == 1, 30, "device online")
        rollout = stack.push(v2.artifact, v2.card, canary=1, stages=[1.0])
        chunks = stack.workdir / "dev-0-state" / "downloads"
        wait_until(lambda: stored_chunks(chunks) >= 2, 30, "first chunks stored")

        proxy.stall()  # freeze the device's link, then cut the broker: mid-transfer for sure
        stack.broker.kill()
        received_before_restart, total = stored_chunks(chunks), chunk_total(chunks)
        assert served_version(stack, "dev-0") == "1"  # still serving while cut off
        stack.broker.start()
        proxy.pass_through()

        assert stack.wait_rollout(rollout, timeout=60)["state"] == "completed"
    assert 0 < received_before_restart < total
    assert served_version(stack, "dev-0") == "2"


def test_a_version_with_a_new_bank_ships_it_and_the_device_routes_with_it(
    start, v2: Release, tmp_path: Path
) -> None:
    stack = start(["dev-0"])
    release = with_a_smaller_bank(v2, tmp_path / "v2-bank")
    rollout = stack.push(release.artifact, release.card, canary=1, stages=[1.0])
    assert stack.wait_rollout(rollout, timeout=60)["state"] == "completed"

    send_digits(stack, 20)  # routed: each scored with the installed version's bank

    bank = release.card.bank
    assert bank is not None
    slot = next((stack.workdir / "dev-0-state" / "models" / MODEL).glob(f"*/{bank.file}"))
    assert hashlib.sha256(slot.read_bytes()).hexdigest() == bank.sha256
    with OipHttpClient(stack.agent_url("dev-0")) as client:
        assert client.metric("edgeserve_agent_router_bank_failures_total") == 0


def with_a_smaller_bank(release: Release, folder: Path) -> Release:
    """``release`` re-packaged with every other bank row: a new bank, still a valid one."""
    assert release.card.bank is not None
    folder.mkdir()
    artifact = folder / release.artifact.name
    shutil.copyfile(release.artifact, artifact)
    with np.load(release.artifact.parent / release.card.bank.file) as bank:
        x, y = bank["x"][::2], bank["y"][::2]
    path = folder / release.card.bank.file
    with path.open("wb") as out:
        np.savez(out, x=x, y=y)
    data = path.read_bytes()
    named = release.card.bank.model_copy(
        update={"sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data), "rows": len(y)}
    )
    return Release(artifact, release.card.model_copy(update={"bank": named}))


# -- refusals ---------------------------------------------------------------------------


def test_a_manifest_with_a_bad_signature_is_refused_and_the_old_model_serves(
    start, v2: Release
) -> None:
    stack = start(["dev-0"])
    forged, _ = sign_update(stack, v2, issued_at=time.time())
    tampered = forged.model_copy(update={"signature": flip_b64(forged.signature)})
    with FleetClient(stack) as fleet:
        publish_desired(fleet, "dev-0", tampered, revision=ahead_of_the_service())
        result = next_result(fleet, "dev-0")

    assert (result.ok, result.stage, result.running_version) == (False, "verify", "1")
    assert "signature" in result.reason
    assert agent_rejections(stack, "dev-0", "signature") >= 1
    assert served_version(stack, "dev-0") == "1"


def test_a_tampered_chunk_is_refused_and_only_the_true_bytes_install(start, v2: Release) -> None:
    stack = start(["dev-0"])
    envelope, chunks = sign_update(stack, v2, issued_at=time.time())
    update_id = UpdateManifest.model_validate_json(
        base64.b64decode(envelope.manifest)
    ).payload.update_id
    with FleetClient(stack) as fleet:
        publish_desired(fleet, "dev-0", envelope, revision=ahead_of_the_service())
        fleet.receive_until(topics.update_request("dev-0", update_id))
        evil = bytes(b ^ 0xFF for b in chunks[0])
        fleet.publish(topics.chunk("dev-0", update_id, 0), evil)
        wait_until(lambda: agent_rejections(stack, "dev-0", "integrity") >= 1, 15, "refusal")
        assert served_version(stack, "dev-0") == "1"

        for index, chunk in enumerate(chunks):
            fleet.publish(topics.chunk("dev-0", update_id, index), chunk)
        result = next_result(fleet, "dev-0")
    assert (result.ok, result.running_version) == (True, "2")
    assert served_version(stack, "dev-0") == "2"


def test_a_replayed_older_manifest_is_refused(start, v2: Release, tmp_path: Path) -> None:
    stack = start(["dev-0"])
    old_release = Release(*build_edge_version(tmp_path / "v1b", version="1", config=OLD))
    replayed, _ = sign_update(stack, old_release, issued_at=time.time() - 3600)
    rollout = stack.push(v2.artifact, v2.card, canary=1, stages=[1.0])
    assert stack.wait_rollout(rollout, timeout=60)["state"] == "completed"

    with FleetClient(stack) as fleet:
        publish_desired(fleet, "dev-0", replayed, revision=ahead_of_the_service())
        result = next_result(fleet, "dev-0")

    assert (result.ok, result.stage, result.running_version) == (False, "verify", "2")
    assert agent_rejections(stack, "dev-0", "refused") >= 1
    assert served_version(stack, "dev-0") == "2"


# -- an enrolled device attacking the fleet -------------------------------------------------


def test_a_device_reporting_a_huge_desired_revision_stops_no_rollout(start, v2: Release) -> None:
    stack = start(["dev-0", "dev-1"])
    stack.setup.add_device("dev-x")
    attacker = BrokerClient(stack.setup.address("dev-x"))
    assert attacker.connect()[0]
    reported = {"schema": "edgeserve.reported/1", "device_id": "dev-x", "desired_revision": 0}
    for claimed in (2**63 - 1, 2**53 - 1):  # out of range; then in range, but not ours
        reported["desired_revision"] = claimed
        attacker.publish(topics.reported("dev-x"), json.dumps(reported).encode(), retain=True)
    with stack.admin() as admin:
        wait_until(lambda: any(d["device_id"] == "dev-x" for d in admin.devices()), 10, "dev-x")

    rollout = stack.push(v2.artifact, v2.card, canary=2, stages=[1.0], soak_s=0)
    wait_until(
        lambda: [served_version(stack, d) for d in stack.agents] == ["2", "2"], 60, "v2 on both"
    )

    attacker.close()
    with stack.admin() as admin:
        view = admin.rollout(rollout)
    states = {device["device_id"]: device["state"] for device in view["devices"]}
    assert states == {"dev-0": "installed", "dev-1": "installed", "dev-x": "assigned"}
    rejected = 'edgeserve_sync_rejected_total{kind="reported",reason="invalid_input"}'
    assert metric_value(sync_metrics(stack), rejected) == 1


def test_a_payload_rotten_on_the_sync_services_disk_is_rebuilt_and_the_rollout_completes(
    start, v2: Release
) -> None:
    stack = start(["dev-0"])
    first = stack.push(v2.artifact, v2.card, canary=1, stages=[1.0])
    assert stack.wait_rollout(first, timeout=60)["state"] == "completed"
    payloads = [p for p in (stack.sync_state / "store" / "payloads").rglob("*") if p.is_file()]
    for payload in payloads:  # the delta dev-0 fetched, which dev-1 (also on v1) gets too
        payload.write_bytes(bytes([payload.read_bytes()[0] ^ 0xFF]) + payload.read_bytes()[1:])

    stack.start_agent("dev-1")
    wait_until(lambda: online(stack) == 2, 30, "dev-1 online")
    second = stack.push(v2.artifact, v2.card, canary=2, stages=[1.0])

    assert stack.wait_rollout(second, timeout=60)["state"] == "completed"
    assert served_version(stack, "dev-1") == "2"
    rotten = 'edgeserve_sync_store_corrupt_total{what="payload"}'
    assert metric_value(sync_metrics(stack), rotten) >= 1


# -- telemetry --------------------------------------------------------------------------


def test_telemetry_made_while_the_broker_is_down_arrives_once(start) -> None:
    stack = start(["dev-0", "dev-1"])
    send_digits(stack, 30)
    wait_until(lambda: fleet_requests(stack) == 60, 30, "first telemetry home")

    stack.broker.kill()
    send_digits(stack, 50)  # answered offline, kept in the outboxes
    stack.broker.start()

    wait_until(lambda: fleet_requests(stack) == 160, 60, "offline telemetry home")
    wait_until(lambda: all(outbox_pending(stack, d) == 0 for d in stack.agents), 30, "acked")
    assert fleet_requests(stack) == 160  # none lost, none counted twice
    with stack.admin() as admin:
        assert all(row["dropped"] == 0 for row in admin.telemetry())


# -- helpers -----------------------------------------------------------------------------

OLD = TrainConfig(epochs=5, learning_rate=5e-4, batch_size=64, seed=7)


def online(stack: FleetStack) -> int:
    with stack.admin() as admin:
        return sum(1 for device in admin.devices() if device["online"])


def served_version(stack: FleetStack, device: str) -> str:
    with OipHttpClient(stack.agent_url(device)) as client:
        versions: list[str] = client.model_metadata(MODEL)["versions"]
    return versions[0]


def sync_metrics(stack: FleetStack) -> str:
    import httpx

    return httpx.get(f"{stack.admin_url}/metrics").text


def agent_rejections(stack: FleetStack, device: str, reason: str) -> float:
    with OipHttpClient(stack.agent_url(device)) as client:
        return client.metric(f'edgeserve_agent_sync_rejected_total{{reason="{reason}"}}')


def outbox_pending(stack: FleetStack, device: str) -> float:
    with OipHttpClient(stack.agent_url(device)) as client:
        return client.metric("edgeserve_agent_telemetry_outbox_pending")


def fleet_requests(stack: FleetStack) -> int:
    with stack.admin() as admin:
        return sum(int(row["requests"]) for row in admin.telemetry())


def stored_chunks(downloads: Path) -> int:
    return sum(1 for path in downloads.glob("*/chunks/*") if path.name.isdigit())


def chunk_total(downloads: Path) -> int:
    """Chunks in the update being downloaded, from the manifest the agent keeps with it."""
    (manifest_file,) = downloads.glob("*/manifest.json")
    envelope = SignedManifest.model_validate_json(manifest_file.read_bytes())
    manifest = UpdateManifest.model_validate_json(base64.b64decode(envelope.manifest))
    return len(manifest.payload.chunks)


def send_digits(stack: FleetStack, count: int) -> None:
    x, _ = load_split(packaged_artifacts(), "test")
    for device in stack.agents:
        with OipHttpClient(stack.agent_url(device)) as client:
            for row in x[:count]:
                client.infer(MODEL, {"input": row[np.newaxis, :]})


class FleetClient:
    """The test acting as the fleet: a service user's credentials, the whole tree."""

    def __init__(self, stack: FleetStack) -> None:
        self.client = BrokerClient(stack.setup.address(OPERATOR_USER))

    def __enter__(self) -> BrokerClient:
        connected, reason = self.client.connect()
        assert connected, reason
        self.client.subscribe(f"{topics.ROOT}/devices/+/update/#")
        return self.client

    def __exit__(self, *exc: object) -> None:
        self.client.close()


def ahead_of_the_service() -> int:
    """A revision the device takes as new: the service's are the clock in ms, or just past."""
    return int(time.time() * 1000) + 3_600_000


def publish_desired(
    fleet: BrokerClient, device: str, envelope: SignedManifest, revision: int
) -> None:
    state = DesiredState(device_id=device, revision=revision, models={MODEL: envelope})
    fleet.publish(topics.desired(device), state.to_bytes(), retain=True)


def next_result(fleet: BrokerClient, device: str) -> UpdateResult:
    message = fleet.receive_until(topics.update_result(device), timeout=30)[-1]
    return UpdateResult.model_validate_json(message.payload)


def sign_update(
    stack: FleetStack, release: Release, issued_at: float
) -> tuple[SignedManifest, list[bytes]]:
    """A manifest signed with the fleet's operator key, as the sync service would issue
    it for a device on the packaged version 1, and its chunks."""
    key: OperatorKey = ensure_operator_key(stack.sync_state / "keys")
    base_card = ModelCard.load(packaged_artifacts() / f"{MODEL}.card.json")
    base = (packaged_artifacts() / base_card.file).read_bytes()
    payload = build_payload(release.artifact.read_bytes(), base)
    chunk_size = 1024
    chunks = [payload.data[i : i + chunk_size] for i in range(0, len(payload.data), chunk_size)]
    spec = PayloadSpec(
        encoding=payload.encoding,
        base_version=base_card.version if payload.encoding != "zstd" else None,
        base_sha256=base_card.sha256 if payload.encoding != "zstd" else None,
        sha256=hashlib.sha256(payload.data).hexdigest(),
        size=len(payload.data),
        chunk_size=chunk_size,
        chunks=[hashlib.sha256(chunk).hexdigest() for chunk in chunks],
    )
    manifest = UpdateManifest(
        model=MODEL,
        version=release.card.version,
        issued_at=issued_at,
        expires_at=time.time() + 3600,
        card=release.card,
        payload=spec,
        self_test=compute_self_test(release.card, release.artifact),
    )
    return key.sign(manifest), chunks


def flip_b64(value: str) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[0] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()
