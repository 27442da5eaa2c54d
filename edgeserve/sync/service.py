"""The sync service process: MQTT link, core thread, rollout ticks and the admin API.

Start-up order: admin token, the core (registry, store, operator key) on its thread, the
MQTT link as ``edgeserve-sync`` (it connects in the background and keeps reconnecting;
every connect republishes each persisted desired state, retained, so a broker that lost
its retained messages is repopulated), the consumer and tick tasks, then the admin API;
the bound port goes to ``port_file`` as ``{"admin": port}`` once it accepts connections.
SIGTERM/SIGINT stop it in stages (API, tasks, MQTT, core) and the process exits 0; a
second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import uvicorn

from edgeserve.logs import configure_logging
from edgeserve.mqtt import Message, MqttLink
from edgeserve.sync.admin_api import AdminState, create_admin_app, ensure_admin_token
from edgeserve.sync.config import SyncConfig
from edgeserve.sync.core import CoreThread, SyncCore, artifact_store
from edgeserve.sync.metrics import SyncMetrics
from edgeserve.sync.updates import Outgoing
from edgeserve.wire import topics

log = logging.getLogger(__name__)
GRACE_SECONDS = 5


class _AdminServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.accepting = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Leave SIGTERM/SIGINT to the service's handler, which stops everything in order.

        uvicorn would otherwise take them over while serving and raise them again once it
        has shut down, which our handler would read as a second, forcing signal.
        """
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.accepting.set()


def _tcp_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit this; without it each small JSON answer waits for the
    # client's delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


async def _consume(link: MqttLink, core: CoreThread) -> None:
    while True:
        await core.call(_handling(await link.messages.get()))


def _handling(message: Message) -> Callable[[SyncCore], None]:
    return lambda core: core.handle(message.topic, message.payload)


async def _tick(link: MqttLink, core: CoreThread, metrics: SyncMetrics, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        metrics.mqtt_dropped.set(link.stats.dropped_overflow)
        try:
            await core.call(lambda c: c.tick())
        except Exception:  # one bad tick must not end the housekeeping loop
            log.exception("rollout tick failed")


class SyncService:
    """Owns the service's tasks so shutdown can stop them in order."""

    def __init__(self, config: SyncConfig) -> None:
        self.config = config
        self.metrics = SyncMetrics()
        self.link = MqttLink(
            config.broker_address(),
            config.client_id,
            list(topics.FLEET_SUBSCRIPTIONS),
            on_connect=self._on_connect,
        )
        self.core = CoreThread(config, self.metrics, self._publish)
        self._tasks: set[asyncio.Task[object]] = set()

    def _publish(self, message: Outgoing) -> None:
        self.link.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)

    def _on_connect(self) -> None:
        self._spawn(self._republish())

    async def _republish(self) -> None:
        count = await self.core.call(lambda c: c.republish_desired())
        log.info("desired states republished", extra={"devices": count})

    def _spawn(self, coroutine: Coroutine[Any, Any, object]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self, stop: asyncio.Event) -> None:
        token_sha256 = ensure_admin_token(self.config.state_dir)
        await self.core.start()
        self.link.start()
        self._spawn(_consume(self.link, self.core))
        self._spawn(_tick(self.link, self.core, self.metrics, self.config.tick_interval_s))
        state = AdminState(
            self.config,
            self.core,
            artifact_store(self.config),
            self.metrics,
            token_sha256,
            lambda: self.link.is_connected,
        )
        server, server_task = await self._start_api(state)
        try:
            await stop.wait()
        finally:
            log.info("sync service stopping")
            server.should_exit = True
            await server_task
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.link.stop()
            await self.core.close()
            log.info("sync service stopped")

    async def _start_api(self, state: AdminState) -> tuple[_AdminServer, asyncio.Task[None]]:
        sock = _tcp_socket(self.config.admin_host, self.config.admin_port)
        server = _AdminServer(
            uvicorn.Config(
                create_admin_app(state),
                log_config=None,
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=GRACE_SECONDS,
            )
        )
        task = asyncio.create_task(server.serve(sockets=[sock]))
        accepting = asyncio.ensure_future(server.accepting.wait())
        await asyncio.wait([task, accepting], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            accepting.cancel()
            task.result()  # uvicorn failed to start: raise its error
        port: int = sock.getsockname()[1]
        _write_port_file(self.config.port_file, {"admin": port})
        log.info("sync admin API listening", extra={"port": port})
        return server, task


def _write_port_file(path: Path | None, ports: dict[str, int]) -> None:
    if path is None:
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ports))
    os.replace(tmp, path)


async def serve(config: SyncConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            os._exit(1)  # a second signal: the operator wants it gone now
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await SyncService(config).run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


def run_sync(config: SyncConfig) -> None:
    """Run the sync service in the foreground until SIGTERM/SIGINT."""
    configure_logging(config.log_level, config.log_format)
    asyncio.run(serve(config))
