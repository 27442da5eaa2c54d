"""systemd glue: readiness, status and watchdog keep-alives over ``$NOTIFY_SOCKET``.

A pure-Python ``sd_notify`` (no libsystemd): each message is one datagram of
``KEY=value`` lines sent to the socket systemd names in ``NOTIFY_SOCKET`` — a path, or
an abstract socket written with a leading ``@``. Outside systemd the variable is unset
and every call is a no-op, so the agent runs the same under a terminal or a test.

The watchdog pings (``WATCHDOG=1``) are sent from the event loop, and only while a
health check passes, every ``WATCHDOG_USEC / 2``: a hung loop sends nothing, and so does
a loop whose health check fails (no model loaded, inference threads wedged). systemd
then kills and restarts the service after ``WatchdogSec=``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from edge_agent.executor import BoundedExecutor

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Health:
    """The outcome of one health check; ``reason`` says what is wrong when not healthy."""

    healthy: bool
    reason: str = ""


HealthCheck = Callable[[], Awaitable[Health]]
# Runs a function on the inference threads (outside any request bound) and awaits it.
RunOnWorkers = Callable[[Callable[[], None]], Awaitable[None]]


class Notifier:
    """Sends ``sd_notify`` messages to one socket; does nothing without one."""

    def __init__(self, address: str | None) -> None:
        self._address = _socket_address(address) if address else None
        self._sock: socket.socket | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``KEY=value``) as one message; False if none could be sent."""
        if self._address is None:
            return False
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Never block the event loop on a full receive queue: a lost ping is one
            # missed keep-alive, a blocked loop would be all of them.
            self._sock.setblocking(False)
        try:
            self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify failed", extra={"error": str(exc)})
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _socket_address(address: str) -> str | bytes:
    if address.startswith("@"):
        # Abstract namespace: a leading NUL byte instead of '@', no file behind it.
        return b"\0" + address[1:].encode()
    if not address.startswith("/"):
        raise ValueError(f"NOTIFY_SOCKET {address!r} is neither a path nor '@abstract'")
    return address


def watchdog_interval(
    environ: Mapping[str, str] = os.environ, pid: int | None = None
) -> float | None:
    """Seconds between keep-alives (half of ``WATCHDOG_USEC``), or None when the watchdog
    is off or meant for another process (``WATCHDOG_PID`` is not ours)."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    if not usec.isdigit() or int(usec) == 0:
        log.warning("ignoring malformed WATCHDOG_USEC", extra={"value": usec})
        return None
    return int(usec) / 2e6


class LivenessProbe:
    """Runs a no-op on the inference threads and says whether it came back in time.

    At most one probe is in flight: if the threads are wedged, the stuck probe is waited
    on again rather than a new one queued behind it at every tick.
    """

    def __init__(self, run_on_workers: RunOnWorkers, timeout_s: float) -> None:
        self._run_on_workers = run_on_workers
        self._timeout_s = timeout_s
        self._in_flight: asyncio.Future[None] | None = None

    async def __call__(self) -> bool:
        if self._in_flight is None or self._in_flight.done():
            self._in_flight = asyncio.ensure_future(self._run_on_workers(_noop))
        done, _ = await asyncio.wait({self._in_flight}, timeout=self._timeout_s)
        return bool(done) and self._in_flight.exception() is None


def _noop() -> None:
    pass


def inference_probe(executor: BoundedExecutor, timeout_s: float) -> LivenessProbe:
    """A probe through ``executor``'s threads, outside its pending bound: a full queue is
    load, not a wedge, and must not cost a keep-alive."""
    return LivenessProbe(executor.run_unbounded, timeout_s)


class ServesModels(Protocol):
    def model_names(self) -> list[str]: ...


def agent_health_check(core: ServesModels, probe: LivenessProbe) -> HealthCheck:
    """Healthy = at least one model is loaded and the inference threads answer a probe."""

    async def check() -> Health:
        if not core.model_names():
            return Health(False, "no model loaded")
        if not await probe():
            return Health(False, "inference threads did not answer a liveness probe")
        return Health(True)

    return check


class Watchdog:
    """Pings systemd every ``interval_s`` while ``check`` says the agent is healthy.

    Ticks are scheduled on the loop's clock, not after each check, so a slow check (at
    most half an interval) never stretches the gap between pings past ``WatchdogSec``.
    """

    def __init__(self, notifier: Notifier, interval_s: float, check: HealthCheck) -> None:
        self._notifier = notifier
        self._interval_s = interval_s
        self._check = check
        self._task: asyncio.Task[None] | None = None
        self._last = Health(True)

    def start(self) -> None:
        """Start pinging from the running event loop (first ping at once)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="watchdog")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while True:
            health = await self._check()
            if health.healthy:
                self._notifier.watchdog()
            if health != self._last:
                self._report_change(health)
            self._last = health
            # After a stall (a stopped process), tick once now instead of catching up.
            next_tick = max(next_tick + self._interval_s, loop.time())
            await asyncio.sleep(max(0.0, next_tick - loop.time()))

    def _report_change(self, health: Health) -> None:
        if health.healthy:
            log.info("agent healthy again; watchdog pings resume")
            self._notifier.status("serving")
        else:
            log.error("agent unhealthy; watchdog pings withheld", extra={"reason": health.reason})
            self._notifier.status(f"unhealthy: {health.reason}")
