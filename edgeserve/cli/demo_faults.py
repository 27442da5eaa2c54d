"""The demo's fault drill: the fleet loses its broker and an agent, and loses nothing.

Run on the fleet the previous sections built, after the v2 rollout. The broker is killed
with SIGKILL while every agent keeps answering the test digits (the edge is
offline-first; the records wait in each agent's outbox on disk), then restarted on its
port: the sync service ends up counting each of those requests exactly once. Then one
agent is killed with SIGKILL, as a power cut would, and started again, as systemd's
``Restart=on-failure`` would: it comes back serving the very bytes (same sha256) it had
activated before the crash. The full suite of such faults is ``tests/faults``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from edgeserve.client import OipHttpClient
from edgeserve.eval.fleet import FleetStack
from edgeserve.polling import wait_until
from edgeserve.testing.notify import NotifyListener
from sync.admin_client import AdminClient

MODEL = "digits-edge"
CRASHED = "edge-3"


def show_faults(
    console: Console,
    stack: FleetStack,
    admin: AdminClient,
    serve_all: Callable[[], dict[str, float]],
    digits: int,
    version: str,
) -> None:
    """Section 12; ``serve_all`` sends the ``digits`` test digits over the devices once."""
    console.rule("12. faults: the broker and an agent killed with SIGKILL, nothing lost")
    counted = _all_acknowledged(stack, admin, version)
    _broker_outage(console, stack, admin, serve_all, (digits, counted), version)
    _agent_crash(console, stack, admin)


def _broker_outage(
    console: Console,
    stack: FleetStack,
    admin: AdminClient,
    serve_all: Callable[[], dict[str, float]],
    sent_counted: tuple[int, int],
    version: str,
) -> None:
    sent, counted = sent_counted
    stack.broker.kill()
    down = time.perf_counter()
    right = serve_all()
    waiting = _pending(stack)
    stack.broker.start()
    console.print(
        f"broker killed: the agents answered {sum(right.values()):.0f} digits right anyway, "
        f"{waiting:.0f} telemetry records waiting on their disks; broker restarted on its port "
        f"after {time.perf_counter() - down:.1f}s"
    )
    expected = counted + sent
    # Once every outbox is empty, a redelivered (doubled) batch would have been counted.
    arrived = _all_acknowledged(stack, admin, version)
    table = Table("before the outage", "requests during it", "counted after", "lost", "doubled")
    table.add_row(
        str(counted),
        str(sent),
        str(arrived),
        str(max(expected - arrived, 0)),
        str(max(arrived - expected, 0)),
    )
    console.print(table)


def _agent_crash(console: Console, stack: FleetStack, admin: AdminClient) -> None:
    before = _running(admin, CRASHED)
    process = stack.agents[CRASHED]
    old_pid = process.pid
    process.kill()
    # Play systemd for the restart: a notify socket and a watchdog interval, as the unit
    # (Type=notify, WatchdogSec=) gives the agent.
    with NotifyListener.abstract("edgeserve-demo") as manager:
        process.env |= {"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "1000000"}
        started = time.perf_counter()
        process.start()
        manager.wait_for("READY=1", 20)
        ready = time.perf_counter() - started
        manager.wait_for("WATCHDOG=1", 5)
        pings = manager.count("WATCHDOG=1", within_s=2.0)
    with OipHttpClient(stack.agent_url(CRASHED)) as client:
        versions = client.model_metadata(MODEL)["versions"]
    after = wait_until(
        lambda: r if (r := _running(admin, CRASHED)).get("online") else None,
        20,
        f"{CRASHED} back online",
    )
    same = (
        "= the one activated before the crash"
        if after["sha256"] == before["sha256"]
        else ("[red]changed[/red]")
    )
    console.print(
        f"{CRASHED} (pid {old_pid}) killed with SIGKILL and started again (pid {process.pid}) "
        f"as Restart=on-failure would: READY=1 after {ready:.1f}s, {pings} watchdog "
        f"keep-alives in 2s (WatchdogSec=1s), serving v{', v'.join(versions)} from its "
        f"active slot, sha256 {after['sha256'][:12]} {same}"
    )
    console.print(
        "[dim]the whole fault suite (network partitions through namespaces, a faulty proxy, "
        "kill -9 at random points of an update, broker restart storms, a full disk, a "
        "tenant flood): ./dev test tests/faults[/dim]"
    )


def _running(admin: AdminClient, device: str) -> dict[str, Any]:
    row = next(r for r in admin.devices() if r["device_id"] == device)
    model: dict[str, Any] = dict(row["running"].get(MODEL, {}))
    model["online"] = row["online"]
    return model


def _all_acknowledged(stack: FleetStack, admin: AdminClient, version: str) -> int:
    """The count of ``version``'s requests once every outbox is empty: each record the
    agents kept has been stored and acknowledged, so the count is final."""
    wait_until(lambda: _pending(stack) == 0, 30, "every outbox emptied")
    return _requests(admin, version)


def _requests(admin: AdminClient, version: str) -> int:
    return sum(int(r["requests"]) for r in admin.telemetry(MODEL) if r["version"] == version)


def _pending(stack: FleetStack) -> float:
    return sum(
        _agent_metric(stack, d, "edgeserve_agent_telemetry_outbox_pending") for d in stack.agents
    )


def _agent_metric(stack: FleetStack, device: str, name: str) -> float:
    with OipHttpClient(stack.agent_url(device)) as client:
        return float(client.metric(name))
