"""``edgeserve bench fleet-sim``: a thousand simulated devices against the real fleet.

Everything but the devices is what an operator runs: Mosquitto over TLS with one
password and one client certificate per device and the ACL, the sync service process
with its registry, store and payload worker. The devices are ``SimDevice``s, many on one
event loop (``fleet_sim_fleet``), speaking the real wire protocol. For each fleet size:

1. **join**: every device connects, announces itself and is known to the registry;
2. **rollout**: ``digits-wide`` v1 → v2 (a last-layer delta of a 51 MB model), canary
   1% → 10% → all; time to completed, bytes the devices exchanged with the broker, the
   sync service's CPU time over the rollout;
3. **broker kill**: rollout v2 → v3; once a tenth of the fleet has v3 the broker is
   killed (SIGKILL) and started again on its port; time from the broker being back to
   99% (and 100%) of the devices connected again, whether the rollout completes and how
   many devices are left behind;
4. **telemetry**: every device made ``records_per_s`` request records a second through
   all of the above, then alone for 20 s (records acknowledged a second, the largest
   backlog in seconds of production, the sync service's CPU share: "keeps up"); at the
   end generation stops, every record must be acknowledged, and the service must hold
   exactly as many as were made (lost, doubled).

The sync service's peak RSS is the kernel's high-water mark (``VmHWM``), over the run.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from edgeserve.bench.fleet_sim_fleet import SimFleet
from edgeserve.bench.fleet_sim_model import SimRelease, build_releases
from edgeserve.broker import BrokerSetup, start_broker
from edgeserve.broker.config import MAX_QUEUED_MESSAGES, MosquittoConfig
from edgeserve.eval.fleet import SYNC_USER, FleetStack, start_sync
from edgeserve.polling import wait_until
from edgeserve.processes import free_port
from edgeserve.security.pki import ensure_dev_pki
from edgeserve.security.signing import load_public_key
from edgeserve.wire.errors import DeadlineExceeded
from edgeserve.wire.sync_messages import RunningModel

STAGES = {"canary": 0.01, "stages": [0.1, 1.0]}
KILL_AT = 0.1  # share of the fleet on v3 when the broker is killed
STEADY_S = 20.0  # telemetry alone, after the rollouts
JOIN_S = 120.0
DRAIN_S = 120.0
ROLLOUT_TIMEOUT_S = 300.0


class BenchBrokerSetup(BrokerSetup):
    """The project's broker config with a larger per-client queue (``queue`` messages).

    Mosquitto keeps at most ``max_queued_messages`` QoS 1 messages for a client that is
    behind and drops the rest. The sync service is one client receiving every device's
    messages, so a thousand devices connecting at once (a start, a broker restart) can
    overflow its queue of 1,000: status and reported states are lost and those devices
    stay unknown. The benchmark measures both the project's default and a raised queue.
    """

    queue: int | None = None

    def mosquitto_config(self) -> MosquittoConfig:
        config = super().mosquitto_config()
        if self.queue is None:
            return config
        return replace(config, max_queued_messages=self.queue, max_queued_bytes=512 << 20)


@dataclass
class SizeResult:
    devices: int
    broker_queue: int
    known_after_join: int
    join_s: float
    rollout_s: float
    rollout_state: str
    rollout_broker_mb: float
    rollout_mb_by_kind: dict[str, float]
    rollout_sync_cpu_s: float
    kill_rollout_state: str
    kill_rollout_s: float
    reconnect_99_s: float
    reconnect_all_s: float
    devices_left_behind: int
    left_behind_by_cause: dict[str, int]
    device_errors: int
    sync_peak_rss_mb: float
    worker_peak_rss_mb: float
    records_made: int
    records_stored: int
    # Made but not stored when the drain ended: still in the devices' outboxes (ingest
    # behind), or lost; 0 proves none was lost.
    records_pending_at_end: int
    records_doubled: int
    telemetry_max_backlog_s: float
    telemetry_offered_per_s: int
    catch_up_s: float
    steady_acked_per_s: float
    steady_max_backlog_s: float
    steady_sync_cpu_share: float


def run_fleet_sim(
    out_dir: Path,
    sizes: tuple[int, ...] = (100, 300, 1000),
    records_per_s: int = 10,
    broker_queue: int | None = None,
    say: Callable[[str], None] = print,
) -> list[SizeResult]:
    """Run every size in turn, write ``results.json`` into ``out_dir``; the rows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="edgeserve-fleet-sim-") as scratch:
        root = Path(scratch)
        say("building digits-wide v1, v2, v3 (51 MB, last-layer successors)")
        releases = build_releases(root / "model")
        for size in sizes:
            say(f"-- {size} devices")
            row = run_size(root / f"fleet-{size}", size, releases, records_per_s, broker_queue, say)
            say(json.dumps(asdict(row)))
            results.append(row)
            # After every size: a long run that fails later keeps what it measured.
            (out_dir / "results.json").write_text(
                json.dumps([asdict(r) for r in results], indent=2) + "\n"
            )
    return results


def run_size(
    workdir: Path,
    size: int,
    releases: dict[str, SimRelease],
    records_per_s: int,
    broker_queue: int | None = None,
    say: Callable[[str], None] = print,
) -> SizeResult:
    ids = [f"sim-{i:05d}" for i in range(size)]
    stack = _start_stack(workdir, ids, broker_queue)
    v1 = releases["1"].card
    fleet = SimFleet(
        stack.setup,
        ids,
        v1.name,
        RunningModel(version="1", sha256=v1.sha256),
        load_public_key(stack.operator_public_key),
        records_per_s=records_per_s,
    )
    sync = stack.sync.pid
    backlog = _Backlog(fleet, records_per_s * size)
    try:
        with stack.admin() as admin:
            for release in releases.values():
                admin.upload(release.artifact, release.card)
        started = time.monotonic()
        fleet.start()
        known = _join(stack, size)
        join_s = time.monotonic() - started
        say(f"{known} of {size} devices known and online after {join_s:.1f} s")
        rollout = _rollout(stack, fleet, sync, releases["2"], backlog)
        say(f"rollout v2: {rollout}")
        killed = _rollout_with_broker_kill(stack, fleet, releases["3"], backlog)
        say(f"rollout v3 with a broker kill: {killed}")
        steady = _steady_telemetry(fleet, sync, records_per_s * size)
        say(f"steady telemetry: {steady}")
        telemetry = _drain_telemetry(stack, fleet, backlog)
        peaks = _peak_rss_mb(sync)
    finally:
        fleet.stop()
        stack.stop()
    return SizeResult(
        devices=size,
        broker_queue=broker_queue or MAX_QUEUED_MESSAGES,
        known_after_join=known,
        join_s=round(join_s, 2),
        **rollout,
        **killed,
        sync_peak_rss_mb=peaks[0],
        worker_peak_rss_mb=peaks[1],
        **telemetry,
        device_errors=fleet.counters.errors,
        telemetry_offered_per_s=records_per_s * size,
        **steady,
    )


def _join(stack: FleetStack, size: int) -> int:
    """Devices the sync service knows online once the count stops growing (≤ 120 s)."""
    deadline, last, since = time.monotonic() + JOIN_S, -1, time.monotonic()
    while time.monotonic() < deadline:
        known = _known_online(stack)
        if known >= size:
            return known
        if known != last:
            last, since = known, time.monotonic()
        elif time.monotonic() - since > 20:  # nothing new for 20 s: the rest were lost
            return known
        time.sleep(0.5)
    return last


def _start_stack(workdir: Path, ids: list[str], queue: int | None = None) -> FleetStack:
    pki = ensure_dev_pki(workdir / "pki", devices=ids)
    kind: type[BenchBrokerSetup] = type("QueuedSetup", (BenchBrokerSetup,), {"queue": queue})
    setup = kind.create(workdir / "broker", pki, free_port(), ids, [SYNC_USER])
    broker = start_broker(setup, kind="mosquitto")
    try:
        settings = {"tick_interval_s": "0.5", "rollout_soak_s": "0", "log_level": "WARNING"}
        sync = start_sync(workdir, setup, broker.supports_mqtt5, settings)
    except BaseException:
        broker.stop()
        raise
    return FleetStack(workdir, setup, broker, sync)


def _rollout(
    stack: FleetStack, fleet: SimFleet, sync: int, target: SimRelease, backlog: _Backlog
) -> dict[str, Any]:
    cpu_before = _cpu_s(sync)
    bytes_before = fleet.broker_bytes()
    kinds_before = _by_kind(fleet)
    started = time.monotonic()
    with stack.admin() as admin:
        rollout_id = int(admin.start_rollout(_spec(target))["id"])
    view = _wait_rollout(stack, rollout_id, backlog)
    return {
        "rollout_s": round(time.monotonic() - started, 2),
        "rollout_state": view["state"],
        "rollout_broker_mb": round((fleet.broker_bytes() - bytes_before) / 1e6, 2),
        "rollout_mb_by_kind": {
            kind: round((count - kinds_before.get(kind, 0)) / 1e6, 2)
            for kind, count in _by_kind(fleet).items()
        },
        "rollout_sync_cpu_s": round(_cpu_s(sync) - cpu_before, 2),
    }


def _rollout_with_broker_kill(
    stack: FleetStack, fleet: SimFleet, target: SimRelease, backlog: _Backlog
) -> dict[str, Any]:
    size = len(fleet.devices)
    started = time.monotonic()
    with stack.admin() as admin:
        rollout_id = int(admin.start_rollout(_spec(target))["id"])
    wait_until(
        lambda: backlog.sample() or fleet.running(target.card.sha256) >= KILL_AT * size,
        600,
        "a tenth of the fleet on the new version",
        0.2,
    )
    stack.broker.kill()
    killed = time.monotonic()
    stack.broker.start()
    # Back = ready for logins; the fastest devices may be in before start() returns (0 s).
    back = time.monotonic()
    wait_until(lambda: fleet.connected(killed) >= 0.99 * size, 300, "99% reconnected", 0.1)
    wait_until(lambda: fleet.connected(killed) >= size, 300, "all reconnected", 0.1)
    times = [max(0.0, at - (back - killed)) for at in fleet.reconnected_at(killed)]
    view = _wait_rollout(stack, rollout_id, backlog)
    return {
        "kill_rollout_state": view["state"],
        "kill_rollout_s": round(time.monotonic() - started, 2),
        "reconnect_99_s": round(times[max(0, int(0.99 * size) - 1)], 2),
        "reconnect_all_s": round(times[-1], 2),
        "devices_left_behind": size - fleet.running(target.card.sha256),
        "left_behind_by_cause": fleet.behind(target.card.sha256),
    }


def _steady_telemetry(fleet: SimFleet, sync: int, offered_per_s: int) -> dict[str, Any]:
    """Telemetry alone for ``STEADY_S``, once the backlog left by the rollouts is under a
    second of production: records acknowledged a second, the largest backlog (seconds
    of production not yet acknowledged), the sync service's CPU share."""
    counters = fleet.counters
    started = time.monotonic()
    while counters.records_sent - counters.records_acked > offered_per_s:
        if time.monotonic() - started > DRAIN_S:
            break
        time.sleep(0.2)
    catch_up_s = time.monotonic() - started
    window = _Backlog(fleet, offered_per_s)
    acked, cpu, started = counters.records_acked, _cpu_s(sync), time.monotonic()
    while time.monotonic() - started < STEADY_S:
        window.sample()
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    return {
        "catch_up_s": round(catch_up_s, 2),
        "steady_acked_per_s": round((counters.records_acked - acked) / elapsed, 1),
        "steady_max_backlog_s": round(window.worst_s, 2),
        "steady_sync_cpu_share": round((_cpu_s(sync) - cpu) / elapsed, 3),
    }


def _drain_telemetry(stack: FleetStack, fleet: SimFleet, backlog: _Backlog) -> dict[str, Any]:
    fleet.stop_telemetry()
    counters = fleet.counters
    deadline = time.monotonic() + DRAIN_S
    while counters.records_acked < counters.records_sent and time.monotonic() < deadline:
        backlog.sample()
        time.sleep(0.2)
    with stack.admin() as admin:
        stored = sum(int(row["requests"]) for row in admin.telemetry(fleet.model))
    made = counters.records_sent
    return {
        "records_made": made,
        "records_stored": stored,
        "records_pending_at_end": max(0, made - stored),
        "records_doubled": max(0, stored - made),
        "telemetry_max_backlog_s": round(backlog.worst_s, 2),
    }


class _Backlog:
    """The largest number of unacknowledged records seen, in seconds of production."""

    def __init__(self, fleet: SimFleet, offered_per_s: int) -> None:
        self.fleet = fleet
        self.offered_per_s = max(offered_per_s, 1)
        self.worst_s = 0.0

    def on_view(self, view: dict[str, Any]) -> None:
        self.sample()

    def sample(self) -> bool:
        counters = self.fleet.counters
        pending = counters.records_sent - counters.records_acked
        self.worst_s = max(self.worst_s, pending / self.offered_per_s)
        return False


def _wait_rollout(stack: FleetStack, rollout_id: int, backlog: _Backlog) -> dict[str, Any]:
    """The rollout's final view, or its view after ``ROLLOUT_TIMEOUT_S`` (state suffixed
    "timed out"): a rollout that does not finish is a result, not a crash."""
    try:
        return stack.wait_rollout(rollout_id, timeout=ROLLOUT_TIMEOUT_S, on_view=backlog.on_view)
    except DeadlineExceeded:
        with stack.admin() as admin:
            view: dict[str, Any] = admin.rollout(rollout_id)
        return view | {"state": f"{view['state']} (timed out)"}


def _by_kind(fleet: SimFleet) -> dict[str, int]:
    counters = fleet.counters
    received = {f"in:{kind}": count for kind, count in list(counters.received.items())}
    return received | {f"out:{kind}": count for kind, count in list(counters.sent.items())}


def _spec(target: SimRelease) -> dict[str, Any]:
    return {"model": target.card.name, "version": target.card.version, **STAGES}


def _known_online(stack: FleetStack) -> int:
    with stack.admin() as admin:
        return sum(1 for device in admin.devices() if device["online"])


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of the sync service and its payload worker."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for each in _family(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def _family(pid: int) -> list[int]:
    """``pid`` and its descendants, from the kernel's per-thread children lists."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                pending += [int(child) for child in task.read_text().split()]
            except FileNotFoundError:
                continue
    return found


def _peak_rss_mb(pid: int) -> tuple[float, float]:
    """High-water RSS of the service and of its largest child (the payload worker)."""
    children = [_vm_hwm_mb(child) for child in _family(pid)[1:]]
    return _vm_hwm_mb(pid), max(children, default=0.0)


def _vm_hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except FileNotFoundError:
        pass
    return 0.0
