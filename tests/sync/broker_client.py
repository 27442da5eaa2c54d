"""A blocking MQTT client for tests: every call waits for the broker's answer or a timeout.

paho runs its network loop on a thread; callbacks only put events on queues, and the
test thread waits on those queues, so no test sleeps to synchronise.
"""

from __future__ import annotations

import queue
import secrets
import ssl
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from edgeserve.mqtt import BrokerAddress


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool


class BrokerClient:
    def __init__(
        self,
        address: BrokerAddress,
        client_id: str | None = None,
        *,
        mqtt5: bool = True,
        will: tuple[str, bytes] | None = None,
        clean_session: bool = True,
    ) -> None:
        self.address = address
        protocol = paho.MQTTv5 if mqtt5 else paho.MQTTv311
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-{secrets.token_hex(4)}",
            protocol=protocol,
            clean_session=None if mqtt5 else clean_session,
        )
        if address.username is not None:
            self.client.username_pw_set(address.username, address.password)
        self.client.tls_set(
            ca_certs=str(address.ca),
            certfile=str(address.cert) if address.cert else None,
            keyfile=str(address.key) if address.key else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.messages: queue.Queue[Received] = queue.Queue()
        self._events: queue.Queue[tuple[str, object]] = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    # -- calls that wait -------------------------------------------------------------------

    def connect(self, timeout: float = 10.0) -> tuple[bool, str]:
        """(True, "Success") once CONNACK accepts; (False, why) if refused or cut off."""
        self.client.connect_async(self.address.host, self.address.port, keepalive=10)
        self.client.loop_start()
        kind, value = self._next_event({"connect", "disconnect", "connect_fail"}, timeout)
        if kind == "connect":
            accepted = not getattr(value, "is_failure", True)
            if not accepted:
                self.client.disconnect()
            return accepted, str(value)
        return False, f"{kind}: {value}"

    def subscribe(self, topic_filter: str, timeout: float = 10.0) -> list[paho.ReasonCode]:
        """The SUBACK's reason codes for ``topic_filter``."""
        self.client.subscribe(topic_filter, qos=1)
        _, codes = self._next_event({"suback"}, timeout)
        assert isinstance(codes, list)
        return codes

    def publish(
        self, topic: str, payload: bytes, retain: bool = False, timeout: float = 10.0
    ) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK (accepted or silently denied)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout)
        assert info.is_published(), f"no PUBACK for {topic}"

    def receive_until(self, topic: str, timeout: float = 10.0) -> list[Received]:
        """Every message up to and including the first on ``topic``."""
        seen = []
        while True:
            message = self.messages.get(timeout=timeout)
            seen.append(message)
            if message.topic == topic:
                return seen

    def wait_disconnected(self, timeout: float = 10.0) -> str:
        _, reason = self._next_event({"disconnect"}, timeout)
        return str(reason)

    def disconnects_seen(self) -> int:
        """How many times the broker has cut this client off so far (does not wait)."""
        seen = 0
        while True:
            try:
                kind, _ = self._events.get_nowait()
            except queue.Empty:
                return seen
            seen += kind == "disconnect"

    def disconnect_with_will(self) -> None:
        """End the session as a crash would, as far as the will goes (MQTT 5 reason 0x04)."""
        self.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        # paho keeps its wake-up socket pair open until the client is garbage collected,
        # which under filterwarnings=error surfaces as an unraisable ResourceWarning.
        self.client._reset_sockets()

    # -- paho callbacks (network thread) ---------------------------------------------------

    def _next_event(self, kinds: set[str], timeout: float) -> tuple[str, object]:
        while True:
            kind, value = self._events.get(timeout=timeout)
            if kind in kinds:
                return kind, value

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        self._events.put(("connect", reason))

    def _on_connect_fail(self, client, userdata) -> None:
        self._events.put(("connect_fail", "TLS or TCP connection failed"))

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        self._events.put(("disconnect", reason))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self._events.put(("suback", list(reason_codes)))

    def _on_message(self, client, userdata, message) -> None:
        self.messages.put(Received(message.topic, bytes(message.payload), bool(message.retain)))
