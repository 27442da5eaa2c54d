"""One MQTT connection for an asyncio service: paho-mqtt 2.x on its own thread, bridged.

Both ends of the sync wire (the agent's sync client and the fleet's sync service) use
``MqttLink``: it connects in the background and keeps reconnecting with jittered
exponential backoff (the broker may be down at start), resubscribes after every
connect, and hands each message to the event loop through a bounded queue — a flood of
garbage fills the queue and is counted as dropped instead of growing memory without
end. MQTT 5 with a persistent session (``clean_start=False``) so QoS 1 messages
addressed to a briefly offline client wait for it at the broker.

paho's own backoff (``reconnect_delay_set(min, max)``) is deterministic: after a broker
restart every client of the fleet waits 1, 2, 4, 8 s in step and the broker takes the
whole fleet's reconnects in the same instants. So each link draws every wait itself
(:class:`JitteredBackoff`, "full jitter": uniform up to the exponential bound) and hands
paho exactly that one delay before paho waits.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where the broker is and how to authenticate to it."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    keepalive_s: int = 15
    # 5 = MQTT 5 (Mosquitto); 4 = 3.1.1, for brokers without MQTT 5 (the embedded one).
    protocol: Literal[4, 5] = 5

    @property
    def tls(self) -> bool:
        return self.ca is not None


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    retain: bool = True


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    retain: bool


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect waits: the n-th (from 0) is uniform in ``[floor_s, min(cap_s, base_s * 2**n)]``."""

    base_s: float = 1.0
    # paho's old fixed maximum: no client waits longer than before for a broker back up.
    cap_s: float = 8.0
    floor_s: float = 0.1


class JitteredBackoff:
    """The waits of one client between failed connection attempts (sans I/O)."""

    def __init__(self, policy: Backoff, rng: random.Random) -> None:
        self.policy = policy
        self.rng = rng
        self.attempt = 0

    def next_delay(self) -> float:
        bound = min(self.policy.cap_s, self.policy.base_s * 2.0 ** min(self.attempt, 32))
        self.attempt += 1
        return self.rng.uniform(self.policy.floor_s, max(bound, self.policy.floor_s))

    def reset(self) -> None:
        """After a successful connect the next outage starts from the smallest bound."""
        self.attempt = 0


@dataclass(slots=True)
class LinkStats:
    connects: int = 0
    disconnects: int = 0
    received: int = 0
    dropped_overflow: int = 0
    published: int = 0


@dataclass
class MqttLink:
    """A reconnecting MQTT 5 client whose messages arrive on an asyncio queue."""

    address: BrokerAddress
    client_id: str
    subscriptions: list[str]
    will: Will | None = None
    queue_size: int = 10_000
    session_expiry_s: int = 3600
    on_connect: Callable[[], None] | None = None
    stats: LinkStats = field(default_factory=LinkStats)
    backoff: Backoff = field(default_factory=Backoff)
    # Seeded from the OS by default, so no two clients draw the same waits.
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.messages: asyncio.Queue[Message] = asyncio.Queue(self.queue_size)
        self.connected = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waits = JitteredBackoff(self.backoff, self.rng)
        self._tls: ssl.SSLContext | None = None
        self._client = self._build_client()

    def _build_client(self) -> paho.Client:
        if self.address.protocol == 5:
            client = paho.Client(
                CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5
            )
        else:
            client = paho.Client(
                CallbackAPIVersion.VERSION2,
                client_id=self.client_id,
                protocol=paho.MQTTv311,
                clean_session=False,
            )
        if self.address.username is not None:
            client.username_pw_set(self.address.username, self.address.password)
        if self.address.tls:
            self._tls = ssl.create_default_context(cafile=self.address.ca)
            self.reload_client_certificate()
            client.tls_set_context(self._tls)
        if self.will is not None:
            client.will_set(self.will.topic, self.will.payload, qos=1, retain=self.will.retain)
        self._arm_reconnect(client)
        client.max_inflight_messages_set(64)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _arm_reconnect(self, client: paho.Client) -> None:
        """Make paho's next wait the next jittered delay (min = max: paho doubles nothing).

        paho runs its callbacks on its network thread just before it waits, so a
        callback is the place to set the wait. It annotates the delays as int but only
        adds them to a float clock, so a float is what it gets.
        """
        delay = cast(int, self._waits.next_delay())
        client.reconnect_delay_set(min_delay=delay, max_delay=delay)

    # -- lifecycle (event loop) ---------------------------------------------------------

    def start(self) -> None:
        """Begin connecting in the background; returns at once."""
        self._loop = asyncio.get_running_loop()
        if self.address.protocol == 5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = self.session_expiry_s
            self._client.connect_async(
                self.address.host,
                self.address.port,
                self.address.keepalive_s,
                clean_start=False,
                properties=properties,
            )
        else:
            self._client.connect_async(
                self.address.host, self.address.port, self.address.keepalive_s
            )
        self._client.loop_start()

    async def wait_connected(self, timeout: float) -> None:
        await asyncio.wait_for(self.connected.wait(), timeout)

    async def stop(self, graceful_status: Message | None = None) -> None:
        """Publish ``graceful_status`` if connected (so no last will fires), disconnect."""
        if graceful_status is not None and self.connected.is_set():
            info = self._client.publish(
                graceful_status.topic, graceful_status.payload, qos=1, retain=graceful_status.retain
            )
            await asyncio.to_thread(info.wait_for_publish, 2.0)
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        _close_wakeup_pair(self._client)

    # -- publishing (any thread) -----------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Queue a message; paho sends it now or after the next reconnect (QoS >= 1)."""
        self._client.publish(topic, payload, qos=qos, retain=retain)
        self.stats.published += 1

    def reload_client_certificate(self) -> None:
        """Present the certificate and key files as they are now from the next connect on.

        paho keeps one SSL context for every reconnect and refuses a second one, so a
        renewed certificate is loaded into that same context (OpenSSL replaces the pair).
        The open connection keeps the certificate it was made with, which the broker does
        not check again: the link stays up across the old certificate's expiry.
        """
        if self._tls is not None and self.address.cert is not None:
            self._tls.load_cert_chain(self.address.cert, self.address.key)

    @property
    def is_connected(self) -> bool:
        return self._client.is_connected()

    # -- paho callbacks (network thread) ---------------------------------------------------

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: object,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.warning("broker refused connection", extra={"reason": str(reason)})
            return
        self._waits.reset()
        self.stats.connects += 1
        if self.subscriptions:
            client.subscribe([(topic, 1) for topic in self.subscriptions])
        log.info("connected to broker", extra={"client_id": self.client_id})
        self._to_loop(self._connected)

    def _connected(self) -> None:
        self.connected.set()
        if self.on_connect is not None:
            self.on_connect()

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: object,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.stats.disconnects += 1
        self._arm_reconnect(client)
        log.info("disconnected from broker", extra={"reason": str(reason)})
        self._to_loop(self.connected.clear)

    def _on_connect_fail(self, client: paho.Client, userdata: object) -> None:
        self._arm_reconnect(client)

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        self.stats.received += 1
        self._to_loop(self._enqueue, Message(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def _enqueue(self, message: Message) -> None:
        try:
            self.messages.put_nowait(message)
        except asyncio.QueueFull:
            self.stats.dropped_overflow += 1

    def _to_loop(self, callback: Callable[..., None], *args: object) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(callback, *args)


def _close_wakeup_pair(client: paho.Client) -> None:
    """Close the socket pair paho keeps to wake its loop; it leaves that to the garbage
    collector, which surfaces as a ResourceWarning."""
    for name in ("_sockpairR", "_sockpairW"):
        sock = getattr(client, name, None)
        if sock is not None:
            sock.close()
            setattr(client, name, None)
