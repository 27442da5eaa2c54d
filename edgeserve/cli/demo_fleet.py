"""The demo's fleet part: four agents kept in sync over MQTT, a signed delta rollout.

A broker (Mosquitto, or the embedded fallback, said out loud), the sync service and four
agents enrolled with their own passwords and client certificates run as real processes.
The demo watches them come online, sends them the test digits and reads the traffic back
from the fleet's telemetry, rolls a fine-tuned version 2 out as signed deltas stage by
stage, then plays the attacker: garbage and a forged manifest are refused and counted,
and a device writing to another device's topic is stopped by the broker's ACL. Last,
the fault drill of ``demo_faults``: the broker and an agent killed, nothing lost.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from edgeserve.artifacts import packaged_artifacts
from edgeserve.client import OipHttpClient, metric_value
from edgeserve.eval.fleet import OPERATOR_USER, BrokerKind, FleetStack, start_fleet
from edgeserve.mqtt import BrokerAddress
from edgeserve.polling import wait_until
from edgeserve.wire import topics
from edgeserve.wire.errors import DeadlineExceeded
from edgeserve.wire.model_card import ModelCard
from edgeserve.wire.sync_messages import DesiredState, DeviceStatus, decode
from models.data import load_split
from sync.admin_client import AdminClient

DEVICES = ["edge-0", "edge-1", "edge-2", "edge-3"]
MODEL = "digits-edge"
Digits = tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]
T = TypeVar("T")


def show_fleet(console: Console, workdir: Path, broker_kind: BrokerKind = "auto") -> dict[str, int]:
    """Run the fleet sections; the exit codes of the processes stopped at the end."""
    from edgeserve.cli.demo_faults import show_faults

    console.rule("8. a fleet over MQTT: broker, sync service, four enrolled agents")
    started = time.perf_counter()
    x, y = load_split(packaged_artifacts(), "test")
    # torch only when the demo trains v2, not whenever the CLI is imported
    from models.finetune import build_edge_version

    artifact, card = build_edge_version(workdir / "v2")
    stack = start_fleet(workdir / "fleet", DEVICES, broker_kind=broker_kind)
    try:
        _announce(console, stack, broker_kind)
        with stack.admin() as admin:
            _online(console, admin)
            before = _serve_all(stack, x, y)
            _telemetry(console, admin, len(x))
            _rollout(console, stack, admin, artifact, card, (x, y), before)
            _refusals(console, stack, admin)
            show_faults(console, stack, admin, lambda: _serve_all(stack, x, y), len(x), "2")
    finally:
        codes = stack.stop()
    console.print(f"fleet sections took {time.perf_counter() - started:.1f}s")
    return codes


def _announce(console: Console, stack: FleetStack, asked: BrokerKind) -> None:
    broker = stack.broker
    why = "as asked" if asked == "embedded" else "mosquitto is not installed"
    if broker.supports_mqtt5:
        said = f"Mosquitto on 127.0.0.1:{stack.setup.port} (MQTT 5, TLS + client certificates)"
    else:
        said = (
            f"[yellow]{why}: fell back to the {broker.kind} on "
            f"127.0.0.1:{stack.setup.port} (MQTT 3.1.1 only, no persistence)[/yellow]"
        )
    console.print(
        f"broker: {said}; sync service pid {stack.sync.pid} (admin API {stack.admin_url}); "
        f"agents {', '.join(f'{d} pid {p.pid}' for d, p in stack.agents.items())}, each with "
        f"its own password and client certificate, pinning the operator's public key"
    )


def _online(console: Console, admin: AdminClient) -> None:
    def ready() -> list[dict[str, Any]] | None:
        rows: list[dict[str, Any]] = admin.devices()
        up = [r for r in rows if r["online"] and r["running"].get(MODEL, {}).get("version") == "1"]
        reported = all(r["cert_days_left"] is not None for r in up)
        return rows if len(up) == len(DEVICES) and reported else None

    waited = time.perf_counter()
    rows = wait_until(ready, 20, "all devices online running version 1")
    table = Table("device", "online", "group", "agent", f"{MODEL} running", "slot")
    for row in sorted(rows, key=lambda r: str(r["device_id"])):
        model = row["running"][MODEL]
        table.add_row(
            row["device_id"],
            "yes",
            row["group"],
            row["agent_version"],
            f"v{model['version']} ({model['sha256'][:12]})",
            model["slot"],
        )
    console.print(table)
    console.print(
        f"all {len(DEVICES)} online running v1, as their status and reported state "
        f"said over MQTT ({_since(waited)} of waiting)"
    )
    soonest = min(float(r["cert_days_left"]) for r in rows)
    console.print(
        f"their certificates, reported over MQTT too: the soonest expires in {soonest:.0f} "
        "days; each agent renews its own at two thirds of its lifetime (fleet certs)"
    )


def _telemetry(console: Console, admin: AdminClient, expected: int) -> None:
    console.rule("9. telemetry: test digits over four devices, counted centrally")
    waited = time.perf_counter()
    summary = wait_until(lambda: _counted(admin, "1", expected), 20, f"{expected} requests counted")
    table = Table(
        "version",
        "devices",
        "requests",
        "escal.",
        "p50 ms",
        "p99 ms",
        "errors",
        "dropped",
        title=f"{MODEL}, the fleet's telemetry summary",
    )
    for row in summary:
        table.add_row(
            f"v{row['version']}",
            str(row["devices"]),
            str(row["requests"]),
            f"{row['escalation_rate']:.1%}",
            f"{row['p50_latency_ms']:.2f}",
            f"{row['p99_latency_ms']:.2f}",
            f"{row['error_rate']:.1%}",
            str(row["dropped"]),
        )
    console.print(table)
    console.print(
        f"every answer reached the sync service in the agents' telemetry batches "
        f"{_since(waited)} after the last one (no cloud gateway here: nothing escalates)"
    )


def _counted(admin: AdminClient, version: str, expected: int) -> list[dict[str, Any]] | None:
    summary: list[dict[str, Any]] = admin.telemetry(MODEL)
    done = sum(row["requests"] for row in summary if row["version"] == version)
    return summary if done >= expected else None


def _rollout(
    console: Console,
    stack: FleetStack,
    admin: AdminClient,
    artifact: Path,
    card: ModelCard,
    digits: Digits,
    before: dict[str, float],
) -> None:
    console.rule("10. a signed delta rollout of a fine-tuned v2: canary, 50%, 100%")
    accuracy = card.metrics.test_accuracy if card.metrics else float("nan")
    console.print(
        f"v1 (the agents' factory model) is registered as the delta base; pushing v2 "
        f"({artifact.stat().st_size} B, test accuracy {accuracy:.2%})"
    )
    started = time.perf_counter()
    rollout_id = stack.push(artifact, card, canary=1, stages=[0.5, 1.0])
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
    ) as progress:
        view = stack.wait_rollout(rollout_id, timeout=30, on_view=_StageBars(progress))
    console.print(
        f"rollout {rollout_id} {view['state']} {_since(started)} after the upload "
        f"(golden self-test, manifests signed per device, chunks fetched, installed)"
    )
    after = _serve_all(stack, *digits)
    _rollout_table(console, stack, view, before, after)
    sync, size, total = _sync_metrics(stack), artifact.stat().st_size, len(digits[1])
    sent = metric_value(sync, "edgeserve_sync_chunk_bytes_total") / len(DEVICES)
    console.print(
        f"payloads: edgeserve_sync_updates_issued_total "
        f"{_samples(sync, 'edgeserve_sync_updates_issued_total')}, "
        f"{sent:.0f} B of chunks per device vs {size} B for the whole model ({sent / size:.1%}); "
        f"test digits right {sum(before.values()):.0f}/{total} -> {sum(after.values()):.0f}/{total}"
        f" ({sum(before.values()) / total:.2%} -> {sum(after.values()) / total:.2%})"
    )


class _StageBars:
    """Turns each rollout view into one progress bar per stage, devices named by state."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[int, TaskID] = {}

    def __call__(self, view: dict[str, Any]) -> None:
        for stage, size in enumerate(view["stage_sizes"]):
            members = [d for d in view["devices"] if d["stage"] == stage]
            states = ", ".join(f"{d['device_id']} {d['state']}" for d in members)
            text = f"{_stage_name(stage):8} {states}"
            if stage not in self.tasks:
                self.tasks[stage] = self.progress.add_task(text, total=size)
            task = self.tasks[stage]
            done = sum(d["state"] == "installed" for d in members)
            self.progress.update(task, description=text, completed=done)


def _rollout_table(
    console: Console,
    stack: FleetStack,
    view: dict[str, Any],
    before: dict[str, float],
    after: dict[str, float],
) -> None:
    stages = {d["device_id"]: d["stage"] for d in view["devices"]}
    table = Table("device", "stage", "serves", "updates installed", "right before", "after")
    for device in DEVICES:
        with OipHttpClient(stack.agent_url(device)) as client:
            versions = client.model_metadata(MODEL)["versions"]
            installed = client.metric('edgeserve_agent_sync_updates_total{result="installed"}')
        table.add_row(
            device,
            _stage_name(stages.get(device)),
            ", ".join(f"v{v}" for v in versions),
            f"{installed:.0f}",
            f"{before[device]:.0f}",
            f"{after[device]:.0f}",
        )
    console.print(table)


def _refusals(console: Console, stack: FleetStack, admin: AdminClient) -> None:
    console.rule("11. refused: garbage, a forged manifest, another device's topic or id")
    mqtt4 = not stack.broker.supports_mqtt5
    # The attacker is an enrolled device of its own (edge-x, no agent): its credentials
    # are valid, the broker takes its client id from them whatever it asks for.
    stack.setup.add_device("edge-x")
    as_edgex = _address(stack, "edge-x", mqtt4)
    other = topics.status("edge-1")
    fake = DeviceStatus(device_id="edge-1", online=False, ts=time.time()).to_bytes()
    with _Connection(as_edgex, "edge-1") as edgex:  # asks for edge-1's client id
        acl = edgex.publish(other, fake, retain=True)
        edgex.publish(topics.telemetry("edge-x"), b"\x00garbage, not a zstd batch")
    sync = wait_until(
        lambda: _samples(_sync_metrics(stack), "edgeserve_sync_rejected_total"),
        10,
        "the sync service counting the garbage",
    )
    edge1 = next(r for r in admin.devices() if r["device_id"] == "edge-1")
    silent = acl == "Success"  # MQTT 3.1.1 has no reason codes: a denied publish is acked
    how = "dropped it silently" if silent else f"refused it ({acl})"
    console.print(
        f"edge-x, connecting under edge-1's client id, writing 'offline' to edge-1's status "
        f"topic: the broker ACL {how} and kept edge-1's own connection; edge-1 "
        f"{'still online' if edge1['online'] else '[red]marked offline[/red]'} in the fleet "
        f"view after the sync service had seen edge-x's next message"
    )
    console.print(
        f"edge-x sending garbage on its own telemetry topic: sync service rejected "
        f"it and counted edgeserve_sync_rejected_total {sync}"
    )
    with _Connection(_address(stack, OPERATOR_USER, mqtt4), "demo-forger") as forger:
        desired = decode(DesiredState, forger.retained(topics.desired("edge-0")))
        forged = _forged(desired)
        forger.publish(topics.desired("edge-0"), forged.to_bytes())
    with OipHttpClient(stack.agent_url("edge-0")) as client:
        # Wait for this refusal's own label: a redelivered retained state may already
        # have been counted as "stale".
        wait_until(
            lambda: 'reason="signature"' in client.metrics(),
            10,
            "edge-0 counting the forged manifest",
        )
        agent = _samples(client.metrics(), "edgeserve_agent_sync_rejected_total")
        serves = client.model_metadata(MODEL)["versions"]
    console.print(
        f"forged desired state sent as {OPERATOR_USER} (revision {forged.revision}, an hour "
        f"ahead, the signed v2 manifest edited to say v3): edge-0 refused it whole, counted "
        f"edgeserve_agent_sync_rejected_total {agent}, still serves "
        f"{', '.join(f'v{v}' for v in serves)} and did not adopt the forged revision, so "
        f"the fleet's next genuine one still applies"
    )


def _forged(desired: DesiredState) -> DesiredState:
    envelope = desired.models[MODEL]
    manifest = json.loads(base64.b64decode(envelope.manifest))
    manifest["version"] = "3"
    edited = base64.b64encode(json.dumps(manifest).encode()).decode()
    models = {MODEL: envelope.model_copy(update={"manifest": edited})}
    # Far ahead of the service's revisions (the clock in ms): had the device adopted it,
    # every genuine desired state of the next hour would have been "stale".
    ahead = desired.revision + 3_600_000
    return desired.model_copy(update={"revision": ahead, "models": models})


class _Connection:
    """One short MQTT connection as a given user: publish and wait for the broker's answer."""

    def __init__(self, address: BrokerAddress, client_id: str) -> None:
        protocol = paho.MQTTv5 if address.protocol == 5 else paho.MQTTv311
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id, protocol=protocol)
        self.client.username_pw_set(address.username, address.password)
        self.client.tls_set(str(address.ca), str(address.cert), str(address.key))
        self.address, self.arrived = address, threading.Condition()
        self.answers: dict[int, str] = {}  # the broker's PUBACK reason per message id
        self.messages: dict[str, bytes] = {}
        self.client.on_publish = lambda c, u, mid, code, p: self.answers.__setitem__(mid, str(code))
        self.client.on_message = self._on_message

    def __enter__(self) -> _Connection:
        self.client.connect(self.address.host, self.address.port)
        self.client.loop_start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> str:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5)
        return self.answers.get(info.mid, "no answer")

    def retained(self, topic: str) -> bytes:
        self.client.subscribe(topic, qos=1)
        with self.arrived:
            if not self.arrived.wait_for(lambda: topic in self.messages, 5):
                raise DeadlineExceeded(f"no retained message on {topic}")
            return self.messages[topic]

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        with self.arrived:
            self.messages[msg.topic] = bytes(msg.payload)
            self.arrived.notify_all()


def _address(stack: FleetStack, user: str, mqtt4: bool) -> BrokerAddress:
    address = stack.setup.address(user)
    return dataclasses.replace(address, protocol=4) if mqtt4 else address


def _serve_all(
    stack: FleetStack, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]
) -> dict[str, float]:
    """The test digits split over the devices, sent concurrently; right answers per device."""

    def serve(device: str, rows: npt.NDArray[np.float32], labels: npt.NDArray[np.int64]) -> float:
        with OipHttpClient(stack.agent_url(device)) as client:
            answers = [client.infer(MODEL, {"input": row[None, :]}) for row in rows]
        predicted = [int(np.argmax(answer.output("logits").data)) for answer in answers]
        return float(np.sum(np.array(predicted) == labels))

    n = len(DEVICES)
    with ThreadPoolExecutor(n) as pool:
        done = pool.map(serve, DEVICES, np.array_split(x, n), np.array_split(y, n))
        return dict(zip(DEVICES, done, strict=True))


def _sync_metrics(stack: FleetStack) -> str:
    with OipHttpClient(stack.admin_url) as client:
        return client.metrics()


def _samples(exposition: str, name: str) -> str | None:
    lines = [line for line in exposition.splitlines() if line.startswith(name + "{")]
    return (
        ", ".join(
            f"{{{line.split('{')[1].split('}')[0]}}} {float(line.rsplit(' ', 1)[1]):g}"
            for line in lines
        )
        or None
    )


def _stage_name(stage: int | None) -> str:
    return "-" if stage is None else "canary" if stage == 0 else f"stage {stage}"


def _since(started: float) -> str:
    return f"{time.perf_counter() - started:.2f}s"
