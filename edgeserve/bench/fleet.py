"""``run_fleet_bench``: what the sync feature costs a real fleet on this machine.

Two figures of issue 5, measured end to end with every part real (Mosquitto over TLS,
the sync service, agent processes, SQLite). (a) Time to update N agents: a fresh fleet
of N agents running ``digits-edge`` v1 gets v2 (a last-layer fine-tune), rolled out to
all devices at once (canary = N, one stage), twice: once with v1's artifact registered
with the service, so the payload may be a delta against what the devices report running
(the default path), and once — the baseline — with v1 left out of the registry, so the
service can only send the full artifact. (b) Telemetry ingest: 100 simulated devices,
each its own MQTT client with its own credentials, upload 500-record batches through
Mosquitto and wait for each ack before the next, as the agent does; the rate is set
beside the in-process figure of ``bench.telemetry`` taken in the same run, and every
record is checked to be stored once.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.progress import Progress, TaskID

from edgeserve.bench.fleet_report import (
    MODEL,
    MODES,
    FleetBenchResult,
    RolloutRow,
    TelemetryRow,
    rollout_table,
    telemetry_table,
    write_results,
)
from edgeserve.bench.telemetry import device_batches, run_ingest_bench
from edgeserve.bench.timing import machine_info
from edgeserve.broker import BrokerSetup, start_broker
from edgeserve.eval.fleet import SYNC_USER, FleetStack, start_fleet, start_sync
from edgeserve.mqtt import MqttLink
from edgeserve.processes import ServiceProcess, free_port
from edgeserve.security.pki import ensure_dev_pki
from edgeserve.wire import topics
from edgeserve.wire.errors import DeadlineExceeded, InternalError
from edgeserve.wire.model_card import ModelCard
from edgeserve.wire.sync_messages import DeviceStatus, ReportedState, TelemetryAck, decode
from models.finetune import build_edge_version
from sync.admin_client import AdminClient

__all__ = ["FleetBenchResult", "RolloutRow", "TelemetryRow", "run_fleet_bench"]

console = Console(width=140)
RECORDS_PER_DEVICE = 2000
BATCH_RECORDS = 500
ACK_TIMEOUT_S = 10.0  # the agent resends an unacked batch after a timeout; so do we
Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def run_fleet_bench(
    out_dir: Path, sizes: tuple[int, ...] = (1, 4, 8), telemetry_devices: int = 100
) -> FleetBenchResult:
    """Measure both, print the tables, write rollouts.csv, telemetry.csv, results.json
    and fleet.png into ``out_dir``; everything else lives in a scratch folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info(numpy=np.__version__)
    console.print(machine)
    with (
        tempfile.TemporaryDirectory(prefix="edgeserve-fleet-bench-") as scratch,
        Progress(console=console, transient=True) as progress,
    ):
        root = Path(scratch)
        console.print(f"[dim]building {MODEL} v2 (last-layer fine-tune of v1)[/]")
        artifact, card = build_edge_version(root / "v2")
        rollouts = [
            _fleet_rollouts(root, n, artifact, card, mode, progress)
            for n in sizes
            for mode in MODES
        ]
        telemetry = [_mqtt_ingest(root / "telemetry", telemetry_devices, progress)]
    baseline = run_ingest_bench(telemetry_devices, RECORDS_PER_DEVICE, BATCH_RECORDS)
    telemetry.append(
        TelemetryRow("in-process (baseline)", baseline.devices, baseline.records,
                     baseline.batches, baseline.redelivered_batches, baseline.seconds,
                     baseline.records_per_s)
    )  # fmt: skip
    result = FleetBenchResult(machine, rollouts, telemetry)
    console.print(rollout_table(rollouts))
    console.print(telemetry_table(telemetry))
    write_results(result, out_dir)
    console.print(f"wrote rollouts.csv, telemetry.csv, results.json and fleet.png to {out_dir}")
    return result


# -- (a) time to update N agents ---------------------------------------------------------


def _fleet_rollouts(
    root: Path, n: int, artifact: Path, card: ModelCard, mode: str, progress: Progress
) -> RolloutRow:
    """A fresh fleet of ``n`` agents on v1; ``mode`` "full" keeps v1 out of the registry."""
    task = progress.add_task(f"{mode}, fleet of {n}: starting agents", total=None)
    devices = [f"bench-{n}-{i}" for i in range(n)]
    baseline = (MODEL,) if mode == "delta" else ()
    stack = start_fleet(root / f"fleet-{n}-{mode}", devices, baseline=baseline)
    try:
        _wait_running(stack, devices, "1")
        progress.update(task, description=f"{mode}, fleet of {n}: rolling out v{card.version}")
        return _rollout(stack, n, mode, artifact, card)
    finally:
        progress.remove_task(task)
        codes = stack.stop()
        if any(codes.values()):
            console.print(f"[yellow]fleet of {n}: non-zero exit codes {codes}[/]")


def _wait_running(stack: FleetStack, devices: list[str], version: str) -> None:
    """Until the registry holds every device running ``version`` (what payloads build on)."""
    deadline = time.monotonic() + 120.0
    with stack.admin() as admin:
        while True:
            running = {
                d["device_id"]: d["running"].get(MODEL, {}).get("version") for d in admin.devices()
            }
            if all(running.get(device) == version for device in devices):
                return
            if time.monotonic() > deadline:
                raise DeadlineExceeded(f"devices not all on v{version}: {running}")
            time.sleep(0.1)


def _rollout(stack: FleetStack, n: int, mode: str, artifact: Path, card: ModelCard) -> RolloutRow:
    before = _metrics(stack.admin_url)
    start = time.perf_counter()
    with stack.admin() as admin:
        admin.upload(artifact, card)
        uploaded = time.perf_counter()
        request = {"model": card.name, "version": card.version, "canary": n, "stages": [1.0]}
        rollout_id = int(admin.start_rollout(request)["id"])
    view = stack.wait_rollout(rollout_id, timeout=300.0)
    done = time.perf_counter()
    delta = _diff(_metrics(stack.admin_url), before)
    installs = [
        device["updated"] - view["created"]
        for device in view["devices"]
        if device["state"] == "installed"
    ]
    issued = {dict(labels).get("encoding", "?"): value
              for (name, labels), value in delta.items()
              if name == "edgeserve_sync_updates_issued_total" and value > 0}  # fmt: skip
    return RolloutRow(
        devices=n, mode=mode,
        encoding=",".join(f"{enc}x{value:.0f}" for enc, value in sorted(issued.items())),
        payload_bytes=int(delta.get(("edgeserve_sync_chunk_bytes_total", ()), 0)),
        chunks=int(delta.get(("edgeserve_sync_chunks_served_total", ()), 0)),
        upload_s=uploaded - start, rollout_s=done - uploaded,
        install_p50_s=_percentile(installs, 50), install_p99_s=_percentile(installs, 99),
        state=view["state"],
    )  # fmt: skip


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _metrics(admin_url: str) -> Metrics:
    text = httpx.get(f"{admin_url}/metrics", timeout=10.0).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _diff(after: Metrics, before: Metrics) -> Metrics:
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


# -- (b) telemetry through Mosquitto -----------------------------------------------------


def _mqtt_ingest(root: Path, n: int, progress: Progress) -> TelemetryRow:
    devices = [f"sim-{i:03d}" for i in range(n)]
    pki = ensure_dev_pki(root / "pki", devices=devices)
    setup = BrokerSetup.create(root / "broker", pki, free_port(), devices, [SYNC_USER])
    broker = start_broker(setup)
    sync: ServiceProcess | None = None
    try:
        sync = start_sync(root, setup, broker.supports_mqtt5, {})
        rng = random.Random(11)
        uploads = {d: device_batches(d, RECORDS_PER_DEVICE, BATCH_RECORDS, rng) for d in devices}
        task = progress.add_task(f"telemetry: {n} devices via Mosquitto",
                                 total=sum(len(b) for b in uploads.values()))  # fmt: skip
        admin = AdminClient(f"http://127.0.0.1:{sync.ports['admin']}",
                            (root / "sync-state" / "admin.token").read_text().strip())  # fmt: skip
        with admin:
            seconds, resends = asyncio.run(
                _drive(setup, broker.supports_mqtt5, uploads, admin, progress, task)
            )
        progress.remove_task(task)
        _check_stored(root / "sync-state" / "registry.db", devices)
    finally:
        if sync is not None:
            sync.stop()
        broker.stop()
    records = n * RECORDS_PER_DEVICE
    batches = sum(len(b) for b in uploads.values())
    return TelemetryRow("MQTT (Mosquitto, TLS)", n, records, batches, resends, seconds,
                        records / seconds)  # fmt: skip


async def _drive(
    setup: BrokerSetup,
    mqtt5: bool,
    uploads: dict[str, list[bytes]],
    admin: AdminClient,
    progress: Progress,
    task: TaskID,
) -> tuple[float, int]:
    """Connect every simulated device, announce it, then time all uploads to the last ack."""
    links = {
        device: MqttLink(
            replace(setup.address(device), protocol=5 if mqtt5 else 4),
            client_id=device,
            subscriptions=[topics.telemetry_ack(device)],
        )
        for device in uploads
    }
    for link in links.values():
        link.start()
    try:
        await asyncio.gather(*(link.wait_connected(60.0) for link in links.values()))
        for device, link in links.items():
            _announce(link, device)
        await asyncio.to_thread(_wait_known, admin, set(uploads))
        start = time.perf_counter()
        resends = await asyncio.gather(
            *(_upload(links[d], d, batches, progress, task) for d, batches in uploads.items())
        )
        seconds = time.perf_counter() - start
    finally:
        await asyncio.gather(*(link.stop() for link in links.values()))
    return seconds, sum(resends)


def _announce(link: MqttLink, device: str) -> None:
    """What an agent publishes on connect; the service ignores telemetry of unknown devices."""
    now = time.time()
    status = DeviceStatus(device_id=device, online=True, agent_version="bench", ts=now)
    link.publish(topics.status(device), status.to_bytes(), retain=True)
    reported = ReportedState(device_id=device, agent_version="bench", ts=now)
    link.publish(topics.reported(device), reported.to_bytes(), retain=True)


def _wait_known(admin: AdminClient, devices: set[str]) -> None:
    deadline = time.monotonic() + 60.0
    while not devices <= {d["device_id"] for d in admin.devices()}:
        if time.monotonic() > deadline:
            raise DeadlineExceeded("the sync service did not register every simulated device")
        time.sleep(0.1)


async def _upload(
    link: MqttLink, device: str, batches: list[bytes], progress: Progress, task: TaskID
) -> int:
    """Send batches one at a time, each after the previous one's ack; the resends."""
    resends = 0
    for index, payload in enumerate(batches):
        to_seq = min(RECORDS_PER_DEVICE, (index + 1) * BATCH_RECORDS)
        while True:
            link.publish(topics.telemetry(device), payload)
            try:
                await asyncio.wait_for(_acked(link, to_seq), ACK_TIMEOUT_S)
                break
            except TimeoutError:
                resends += 1
        progress.advance(task)
    return resends


async def _acked(link: MqttLink, to_seq: int) -> None:
    while decode(TelemetryAck, (await link.messages.get()).payload).acked_seq < to_seq:
        pass


def _check_stored(registry_db: Path, devices: list[str]) -> None:
    """Every record stored exactly once, every device acked to its last record."""
    with sqlite3.connect(f"file:{registry_db}?mode=ro", uri=True) as conn:
        stored = sum(
            conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("telemetry_requests", "telemetry_other")
        )
        acked = conn.execute(
            "SELECT COUNT(*) FROM telemetry_cursor WHERE acked_seq = ?", (RECORDS_PER_DEVICE,)
        ).fetchone()[0]
    conn.close()
    if stored != len(devices) * RECORDS_PER_DEVICE or acked != len(devices):
        raise InternalError(f"MQTT ingest: stored {stored} records, {acked} devices fully acked")
    console.print(f"[green]checked: {stored:,} records stored once, {acked} devices acked[/]")
