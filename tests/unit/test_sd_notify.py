"""The sd_notify client and the watchdog, against real AF_UNIX datagram sockets."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_agent.executor import BoundedExecutor
from edge_agent.systemd import (
    Notifier,
    Watchdog,
    agent_health_check,
    inference_probe,
    watchdog_interval,
)
from edgeserve.testing.notify import NotifyListener

INTERVAL_S = 0.05


@pytest.fixture
def abstract_receiver() -> Iterator[NotifyListener]:
    with NotifyListener.abstract("edgeserve-test") as receiver:
        yield receiver


@pytest.fixture
def path_receiver() -> Iterator[NotifyListener]:
    # A short folder: AF_UNIX paths are limited to 107 bytes, pytest's tmp_path can be longer.
    folder = Path(tempfile.mkdtemp(prefix="sdn-"))
    try:
        with NotifyListener.at(folder / "notify") as receiver:
            yield receiver
    finally:
        shutil.rmtree(folder)


def test_ready_watchdog_and_stopping_reach_a_path_socket(path_receiver: NotifyListener) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path_receiver.address})
    try:
        assert notifier.ready("serving on 127.0.0.1:8710")
        assert notifier.watchdog()
        assert notifier.stopping()
    finally:
        notifier.close()
    assert path_receiver.next() == "READY=1\nSTATUS=serving on 127.0.0.1:8710"
    assert path_receiver.next() == "WATCHDOG=1"
    assert path_receiver.next() == "STOPPING=1\nSTATUS=stopping"


def test_an_abstract_socket_is_reached_through_its_at_sign_name(
    abstract_receiver: NotifyListener,
) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": abstract_receiver.address})
    try:
        assert notifier.status("loading models")
    finally:
        notifier.close()
    assert abstract_receiver.next() == "STATUS=loading models"


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert not notifier.ready("serving")
    assert not notifier.watchdog()
    assert not notifier.stopping()


def test_a_relative_notify_socket_is_refused() -> None:
    with pytest.raises(ValueError, match="neither a path nor"):
        Notifier("notify.sock")


def test_a_vanished_socket_makes_notify_fail_without_raising(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "gone"))
    try:
        assert not notifier.watchdog()
    finally:
        notifier.close()


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}) == 1.0


def test_watchdog_meant_for_another_pid_sends_no_pings() -> None:
    environ = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert watchdog_interval(environ) is None


@pytest.mark.parametrize("usec", ["", "0", "-5", "soon"])
def test_no_or_malformed_watchdog_usec_disables_the_watchdog(usec: str) -> None:
    assert watchdog_interval({"WATCHDOG_USEC": usec}) is None


class _Core:
    """Just the part of AgentCore the health check reads."""

    def __init__(self, models: list[str]) -> None:
        self.models = models

    def model_names(self) -> list[str]:
        return self.models


Scenario = Callable[[BoundedExecutor, asyncio.AbstractEventLoop], None]


def _run_watchdog(receiver: NotifyListener, core: _Core, scenario: Scenario) -> None:
    """Run a watchdog over a real one-thread executor while ``scenario`` runs in a thread
    (it blocks on the receiver; the loop must stay free to ping)."""

    async def main() -> None:
        executor = BoundedExecutor(workers=1, max_pending=8)
        notifier = Notifier(receiver.address)
        probe = inference_probe(executor, timeout_s=INTERVAL_S / 2)
        watchdog = Watchdog(notifier, INTERVAL_S, agent_health_check(core, probe))
        watchdog.start()
        try:
            await asyncio.to_thread(scenario, executor, asyncio.get_running_loop())
        finally:
            await watchdog.stop()
            notifier.close()
            executor.shutdown()

    asyncio.run(main())


def test_a_healthy_agent_pings_repeatedly(abstract_receiver: NotifyListener) -> None:
    def scenario(executor: BoundedExecutor, loop: asyncio.AbstractEventLoop) -> None:
        for _ in range(3):
            abstract_receiver.wait_for("WATCHDOG=1")

    _run_watchdog(abstract_receiver, _Core(["digits-edge"]), scenario)


def test_wedged_inference_threads_stop_the_pings_until_they_recover(
    abstract_receiver: NotifyListener,
) -> None:
    release, running = threading.Event(), threading.Event()

    def wedge() -> None:
        running.set()
        release.wait(30)

    def scenario(executor: BoundedExecutor, loop: asyncio.AbstractEventLoop) -> None:
        abstract_receiver.wait_for("WATCHDOG=1")
        # A request whose inference never returns holds the only inference thread.
        stuck = asyncio.run_coroutine_threadsafe(executor.run(wedge), loop)
        assert running.wait(5)
        unhealthy = "STATUS=unhealthy: inference threads did not answer a liveness probe"
        abstract_receiver.wait_for(unhealthy)
        assert abstract_receiver.silent_for("WATCHDOG=1", seconds=10 * INTERVAL_S)
        release.set()
        stuck.result(5)
        abstract_receiver.wait_for("STATUS=serving")
        abstract_receiver.wait_for("WATCHDOG=1")

    try:
        _run_watchdog(abstract_receiver, _Core(["digits-edge"]), scenario)
    finally:
        release.set()


def test_an_agent_with_no_model_loaded_sends_no_pings(abstract_receiver: NotifyListener) -> None:
    def scenario(executor: BoundedExecutor, loop: asyncio.AbstractEventLoop) -> None:
        abstract_receiver.wait_for("STATUS=unhealthy: no model loaded")
        assert abstract_receiver.silent_for("WATCHDOG=1", seconds=10 * INTERVAL_S)

    _run_watchdog(abstract_receiver, _Core([]), scenario)
