"""A broker as a child process: start it, know when it serves, stop, crash and reload it.

Mosquitto and the embedded amqtt fallback both run as separate processes so that tests
and the demo can treat them alike — and so that ``kill()`` is a real SIGKILL, the way a
broker crash looks to its clients. "Ready" means what a client needs: a TLS handshake
with a client certificate and an MQTT CONNECT that the broker accepts (``probe``), not
merely an open port.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import ssl
import struct
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from edgeserve.mqtt import BrokerAddress
from edgeserve.processes import ChildProcess
from edgeserve.wire.errors import Unavailable

RELOAD_MARKER = b"Reloading config."
_POLL_S = 0.05


class BrokerFailed(Unavailable):
    """The broker exited, or did not accept connections in time."""


class BrokerProcess(ChildProcess):
    """A broker child process whose readiness is checked by logging in as ``probe_as``."""

    kind = "broker"
    # Whether MQTT 5 clients (such as edgeserve.mqtt.MqttLink) can connect.
    supports_mqtt5 = True

    def __init__(self, args: list[str], probe_as: BrokerAddress, log_file: Path) -> None:
        super().__init__(args, log_file)
        self.log_path = log_file  # always set for a broker: reload and errors read it
        self.probe_as = probe_as
        self.port = probe_as.port

    def start(self, timeout: float = 20.0) -> Self:
        """Start (or start again, on the same port) and wait until a login succeeds."""
        if self.running:
            return self
        self._spawn()
        self._wait_ready(timeout)
        return self

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (Mosquitto saves its persistence file), SIGKILL after ``timeout``."""
        return super().stop(timeout)

    def reload(self, timeout: float = 10.0) -> None:
        """SIGHUP (re-read the password file) and wait until the reload has happened.

        The broker logs ``RELOAD_MARKER`` when it reloads and serves one client at a
        time, so a login accepted after the marker appeared was handled after it.
        """
        if not self.running:
            return
        offset = self.log_path.stat().st_size
        os.kill(self.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while RELOAD_MARKER not in self._log_since(offset):
            self._check_alive(f"{self.kind} exited during reload")
            if time.monotonic() > deadline:
                raise BrokerFailed(f"{self.kind} did not reload within {timeout:.0f}s")
            time.sleep(_POLL_S)
        self._wait_ready(max(deadline - time.monotonic(), 1.0))

    def log_tail(self, limit: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_bytes()[-limit:].decode(errors="replace")
        return ""

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no attempt"
        while time.monotonic() < deadline:
            self._check_alive(f"{self.kind} exited with {self._returncode()}")
            try:
                code = probe(self.probe_as, timeout=2.0)
            except (OSError, ssl.SSLError, BrokerFailed) as exc:
                last = str(exc)
            else:
                if code == 0:
                    return
                last = f"CONNACK return code {code}"
            time.sleep(_POLL_S)
        self.kill()
        raise BrokerFailed(
            f"{self.kind} not ready after {timeout:.0f}s ({last})\n{self.log_tail()}"
        )

    def _check_alive(self, message: str) -> None:
        if not self.running:
            raise BrokerFailed(f"{message}\n{self.log_tail()}")

    def _returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def _log_since(self, offset: int) -> bytes:
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def probe(address: BrokerAddress, timeout: float = 5.0) -> int:
    """Log in with MQTT 3.1.1 over TLS and disconnect; the CONNACK return code (0 = ok).

    Raises ``BrokerFailed`` if the broker closes the connection without a CONNACK (the
    embedded broker's way of refusing), ``OSError``/``ssl.SSLError`` if it cannot be
    reached or refuses the TLS handshake.
    """
    context = ssl.create_default_context(cafile=address.ca)
    if address.cert is not None and address.key is not None:
        context.load_cert_chain(address.cert, address.key)
    with (
        socket.create_connection((address.host, address.port), timeout) as raw,
        context.wrap_socket(raw, server_hostname=address.host) as conn,
    ):
        conn.sendall(connect_packet(address, f"edgeserve-probe-{secrets.token_hex(4)}"))
        reply = _read_exactly(conn, 4)
        if reply[:2] != b"\x20\x02":
            raise BrokerFailed(f"unexpected reply to CONNECT: {reply!r}")
        if reply[3] == 0:
            conn.sendall(b"\xe0\x00")  # DISCONNECT, so no last will and no error logged
        return reply[3]


def connect_packet(address: BrokerAddress, client_id: str, keepalive_s: int = 10) -> bytes:
    """An MQTT 3.1.1 CONNECT with clean session and the address's username/password."""
    flags = 0x02
    payload = _utf8(client_id)
    if address.username is not None:
        flags |= 0x80
        payload += _utf8(address.username)
        if address.password is not None:
            flags |= 0x40
            payload += _utf8(address.password)
    body = _utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive_s) + payload
    return b"\x10" + _varint(len(body)) + body


def _read_exactly(conn: ssl.SSLSocket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise BrokerFailed("broker closed the connection without a CONNACK")
        data += chunk
    return data


def _utf8(text: str) -> bytes:
    encoded = text.encode()
    return struct.pack("!H", len(encoded)) + encoded


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)
