"""A small asyncio MQTT 3.1.1 client: a thousand of them share one process and one loop.

The agent's ``MqttLink`` wraps paho, which runs a network thread per client — fine for
one device, not for a thousand simulated in one process. This client speaks the few
packets a device needs (CONNECT with a last will, SUBSCRIBE, PUBLISH at QoS 0/1 both
ways with PUBACK, PINGREQ) over one TLS stream, with the same reconnect policy as the
agent (``edgeserve.mqtt.JitteredBackoff``: full jitter, capped at 8 s). QoS 1 messages it
sent and the broker has not acknowledged are sent again, with DUP, after a reconnect.
Every byte read and written is counted, so the benchmark knows what crossed the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from edgeserve.mqtt import Backoff, JitteredBackoff

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 8, 9
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14
KEEPALIVE_S = 30

OnMessage = Callable[[str, bytes], Awaitable[None]]
OnConnect = Callable[[], Awaitable[None]]


class ProtocolError(Exception):
    """The broker sent something this client does not understand, or refused it."""


@dataclass(frozen=True, slots=True)
class SimWill:
    topic: str
    payload: bytes
    retain: bool = True


@dataclass(slots=True)
class LinkCounters:
    bytes_in: int = 0
    bytes_out: int = 0
    connects: int = 0
    last_connected: float = 0.0  # time.monotonic() of the last CONNACK


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        digit, value = value % 128, value // 128
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _text(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(data)) + data


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + _varint(len(body)) + body


@dataclass(eq=False)
class SimLink:
    """One device's connection; ``run`` keeps it up until cancelled."""

    host: str
    port: int
    tls: ssl.SSLContext | None
    client_id: str
    username: str
    password: str
    will: SimWill
    subscriptions: list[str]
    on_message: OnMessage
    on_connect: OnConnect
    backoff: JitteredBackoff
    counters: LinkCounters = field(default_factory=LinkCounters)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    _writer: asyncio.StreamWriter | None = None
    _next_id: int = 0
    _unacked: dict[int, bytes] = field(default_factory=dict)

    async def run(self) -> None:
        while True:
            # A lost or refused connection is retried after the backoff, as the agent does.
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, ProtocolError):
                await self._session()
            self.connected.clear()
            await asyncio.sleep(self.backoff.next_delay())

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Queue a message; QoS 1 ones are kept until acknowledged, across reconnects."""
        body = _text(topic)
        if qos:
            self._next_id = self._next_id % 65535 + 1
            body += struct.pack("!H", self._next_id)
        packet = _packet(PUBLISH, qos << 1 | int(retain), body + payload)
        if qos:
            self._unacked[self._next_id] = packet
        self._write(packet)

    async def close(self) -> None:
        """Disconnect cleanly (no last will); the caller cancels ``run``."""
        writer = self._writer
        if writer is not None:
            self._write(_packet(DISCONNECT, 0, b""))
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _write(self, packet: bytes) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(packet)
            self.counters.bytes_out += len(packet)

    async def _session(self) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.tls)
        try:
            self._writer = writer
            self._write(self._connect_packet())
            kind, _, body = await self._read(reader)
            if kind != CONNACK or len(body) < 2 or body[1] != 0:
                raise ProtocolError(f"connection refused: {body!r}")
            self.backoff.reset()
            self.counters.connects += 1
            self.counters.last_connected = time.monotonic()
            self._subscribe()
            for packet_id, packet in list(self._unacked.items()):
                if packet_id in self._unacked:
                    self._write(bytes([packet[0] | 0x08]) + packet[1:])  # DUP
            self.connected.set()
            await self.on_connect()
            pinger = asyncio.get_running_loop().create_task(self._ping())
            try:
                await self._receive(reader)
            finally:
                pinger.cancel()
        finally:
            self._writer = None
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _connect_packet(self) -> bytes:
        flags = 0x80 | 0x40 | 0x04 | 0x02 | (1 << 3) | (0x20 if self.will.retain else 0)
        header = _text("MQTT") + bytes([4, flags]) + struct.pack("!H", KEEPALIVE_S)
        payload = (
            _text(self.client_id)
            + _text(self.will.topic)
            + _text(self.will.payload)
            + _text(self.username)
            + _text(self.password)
        )
        return _packet(CONNECT, 0, header + payload)

    def _subscribe(self) -> None:
        self._next_id = self._next_id % 65535 + 1
        body = struct.pack("!H", self._next_id)
        for topic in self.subscriptions:
            body += _text(topic) + b"\x01"
        self._write(_packet(SUBSCRIBE, 0x02, body))

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_S / 2)
            self._write(_packet(PINGREQ, 0, b""))

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        while True:
            kind, flags, body = await self._read(reader)
            if kind == PUBLISH:
                await self._on_publish(flags, body)
            elif kind == PUBACK:
                self._unacked.pop(struct.unpack("!H", body[:2])[0], None)
            elif kind not in (SUBACK, PINGRESP):
                raise ProtocolError(f"unexpected packet type {kind}")
            if self._writer is not None:
                await self._writer.drain()

    async def _on_publish(self, flags: int, body: bytes) -> None:
        (length,) = struct.unpack("!H", body[:2])
        topic = body[2 : 2 + length].decode()
        offset = 2 + length
        if flags >> 1 & 3:
            packet_id = body[offset : offset + 2]
            offset += 2
            self._write(_packet(PUBACK, 0, packet_id))
        await self.on_message(topic, body[offset:])

    async def _read(self, reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
        first = (await reader.readexactly(1))[0]
        length, shift, size = 0, 0, 1
        while True:
            digit = (await reader.readexactly(1))[0]
            size += 1
            length += (digit & 0x7F) << shift
            shift += 7
            if not digit & 0x80:
                break
        body = await reader.readexactly(length) if length else b""
        self.counters.bytes_in += size + length
        return first >> 4, first & 0x0F, body


def sim_backoff(rng_seed: int) -> JitteredBackoff:
    """The agent's reconnect policy, with a random stream of the device's own."""
    import random

    return JitteredBackoff(Backoff(), random.Random(rng_seed))
