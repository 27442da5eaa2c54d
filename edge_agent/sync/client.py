"""The agent's side of the MQTT sync wire: one connection, one consumer, a small tick.

``SyncClient`` owns an ``MqttLink`` authenticated as the device (username = device id,
password, TLS) whose last will is a retained ``online=false`` status, so the fleet learns
of a crash or power cut from the broker. On every connect it announces itself (retained
online status and ``ReportedState``), asks again for the chunks its unfinished downloads
lack, and resends unacknowledged telemetry — a reconnect after a broker restart needs
nothing else. A single consumer task hands each message to ``handlers``; a one-second
tick re-requests chunks that stopped arriving and asks for a renewed certificate when
one is due (``renewal``). The agent serves requests whether or not any of this is
connected.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from edge_agent.sync import bulk, handlers, reporting
from edge_agent.sync.context import SyncContext
from edge_agent.sync.renewal import CertRenewal, renewal_for
from edge_agent.sync.telemetry import TelemetryUploader
from edgeserve.mqtt import BrokerAddress, Message, MqttLink, Will
from edgeserve.wire import topics

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig

log = logging.getLogger(__name__)

TICK_S = 1.0


def broker_address(config: AgentConfig) -> BrokerAddress:
    """Where and as whom the agent connects (raises when sync is off)."""
    address = config.sync_address
    if address is None:
        raise ValueError("sync is off: no sync_broker configured")
    host, port = address
    return BrokerAddress(
        host=host,
        port=port,
        username=config.sync_username or config.device_id,
        password=config.sync_secret(),
        ca=config.sync_ca,
        cert=config.sync_cert,
        key=config.sync_key,
        protocol=5 if config.sync_mqtt_version == 5 else 4,
    )


class SyncClient:
    """Connects ``context`` (and ``uploader``) to the broker at ``address``.

    The client routes both objects' ``publish`` through its own link, so they can be
    built before it (and, in tests, with a collecting ``publish`` instead).
    """

    def __init__(
        self,
        address: BrokerAddress,
        context: SyncContext,
        uploader: TelemetryUploader | None = None,
        tick_s: float = TICK_S,
    ) -> None:
        self.context = context
        self.uploader = uploader
        context.publish = self._publish
        context.uploader = uploader
        if uploader is not None:
            uploader.publish = self._publish_telemetry
        self.tick_s = tick_s
        device = context.device_id
        offline = reporting.status_message(device, online=False)
        self.link = MqttLink(
            address,
            client_id=device,
            subscriptions=topics.device_subscriptions(device),
            will=Will(topics.status(device), offline.to_bytes(), retain=True),
            on_connect=self._on_connect,
        )
        self.renewal: CertRenewal | None = renewal_for(
            address, device, context.metrics, self.link.reload_client_certificate
        )
        self._cert_topic = topics.cert_issued(device)
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()

    @property
    def connected(self) -> asyncio.Event:
        return self.link.connected

    def start(self) -> None:
        """Connect in the background and start consuming (inside the running loop)."""
        self.context.metrics.connected.set_function(lambda: float(self.link.is_connected))
        self.link.start()
        self._tasks = [
            self._spawn_loop(self._consume(), "sync-consumer"),
            self._spawn_loop(self._tick(), "sync-tick"),
        ]
        if self.uploader is not None:
            self._tasks.append(self._spawn_loop(self.uploader.run(self.connected), "telemetry"))

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Finish in-flight updates (bounded), say goodbye with online=false, disconnect."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await bulk.stop_fetches(self.context)
        finishing = list(self.context.state.finishing.values())
        if finishing:
            # An activation on a worker thread cannot be cancelled; let it land or time out.
            await asyncio.wait(finishing, timeout=timeout_s)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        goodbye = reporting.status_message(self.context.device_id, online=False)
        status = Message(topics.status(self.context.device_id), goodbye.to_bytes(), True)
        await self.link.stop(graceful_status=status)

    def _publish(self, topic: str, payload: bytes, retain: bool) -> None:
        self.link.publish(topic, payload, qos=1, retain=retain)

    def _publish_telemetry(self, topic: str, payload: bytes) -> None:
        self.link.publish(topic, payload, qos=1, retain=False)

    # -- tasks ------------------------------------------------------------------------------

    def _spawn_loop(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(coro, name=name)

    async def _consume(self) -> None:
        while True:
            message = await self.link.messages.get()
            if self.renewal is not None and message.topic == self._cert_topic:
                self.renewal.on_reply(message.payload, self._publish)
            else:
                await handlers.handle(self.context, message)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            if not self.link.connected.is_set():
                continue
            try:
                await handlers.resend_stalled(self.context)
            except Exception:
                log.exception("re-requesting stalled downloads failed")
            try:
                if self.renewal is not None:
                    self.renewal.tick(self._publish)
            except Exception:  # e.g. the certificate file unreadable: try again next tick
                log.exception("certificate renewal check failed")

    def _on_connect(self) -> None:
        # Called on the loop by MqttLink after every successful (re)connect.
        task = asyncio.get_running_loop().create_task(self._announce(), name="sync-announce")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _announce(self) -> None:
        ctx = self.context
        try:
            online = reporting.status_message(ctx.device_id, online=True)
            ctx.publish(topics.status(ctx.device_id), online.to_bytes(), True)
            await reporting.publish_reported(ctx)
            await handlers.resume_pending(ctx)
            if self.uploader is not None:
                self.uploader.on_reconnect()
            if self.renewal is not None:
                self.renewal.on_connect(self._publish)
        except Exception:
            log.exception("announcing to the fleet failed")
