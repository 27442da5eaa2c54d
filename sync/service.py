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
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from edgeserve.logs import configure_logging
from edgeserve.mqtt import Message, MqttLink
from edgeserve.serving import EmbeddedServer, listening_socket, start_embedded, write_port_file
from edgeserve.wire import topics
from sync.admin_api import AdminState, create_admin_app, ensure_admin_token
from sync.config import SyncConfig
from sync.core import CoreThread, SyncCore, artifact_store
from sync.metrics import SyncMetrics
from sync.updates import Outgoing

log = logging.getLogger(__name__)
GRACE_SECONDS = 5


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

    async def _start_api(self, state: AdminState) -> tuple[EmbeddedServer, asyncio.Task[None]]:
        sock = listening_socket(
            self.config.admin_host, self.config.admin_port, backlog=128, what="the admin API"
        )
        server, task = await start_embedded(create_admin_app(state), sock, GRACE_SECONDS)
        port: int = sock.getsockname()[1]
        write_port_file(self.config.port_file, {"admin": port})
        log.info("sync admin API listening", extra={"port": port})
        return server, task


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
