"""One simulated device: the agent's wire protocol without its model runtime.

A ``SimDevice`` does what the agent does on the wire, with the same messages from
``edgeserve.wire``: a retained online status with an offline last will, a retained
``ReportedState`` naming the model it runs, and on a new ``DesiredState`` the signature
check of each manifest with the pinned operator key, then the download — chunk windows
over MQTT, or Range requests when the manifest names a URL — with every chunk checked
against its sha256 and the whole payload against its own, then an ``UpdateResult`` and
the new reported state. It does not rebuild or run the model (a thousand 50 MB models do
not fit one process): it reports the card's sha256 once the payload verified. Telemetry
is a batch of request records every second, resent until acknowledged, as the outbox
does. Counters for the benchmark live in ``FleetCounters``, shared by all devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.updates.ranges import BulkUnavailable, RangeFetcher
from edgeserve.bench.fleet_sim_mqtt import SimLink
from edgeserve.wire import topics
from edgeserve.wire.errors import EdgeServeError
from edgeserve.wire.manifest import UpdateManifest, verify_signed_manifest
from edgeserve.wire.sync_messages import (
    ChunkRequest,
    DesiredState,
    DeviceStatus,
    ReportedState,
    RunningModel,
    TelemetryAck,
    UpdateResult,
    decode,
)
from edgeserve.wire.telemetry import OutboxEntry, TelemetryBatch, encode_batch

log = logging.getLogger(__name__)

AGENT_VERSION = "0.2.0"  # applies every tensor-delta format, as the current agent does
WINDOW = 256
CHUNK_TIMEOUT_S = 10.0
ACK_TIMEOUT_S = 15.0  # the agent's TelemetryUploader default


@dataclass(slots=True)
class FleetCounters:
    """What the whole simulated fleet did, for the benchmark's figures."""

    installed: dict[str, float] = field(default_factory=dict)  # device -> monotonic time
    refused_chunks: int = 0
    refused_manifests: int = 0
    records_sent: int = 0
    records_acked: int = 0
    batches_resent: int = 0
    errors: int = 0  # messages a device could not handle (logged by the fleet)
    http_bytes: int = 0
    # Payload bytes by topic kind, received and sent: where the broker's traffic goes.
    received: dict[str, int] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Download:
    """One payload being fetched. Its bytes are hashed in order as they arrive and not
    kept (a thousand devices fetching a full 51 MB artifact would not fit in memory);
    chunks that arrive ahead of a gap wait in ``ahead``."""

    manifest: UpdateManifest
    have: set[int] = field(default_factory=set)
    requested: set[int] = field(default_factory=set)
    last_activity: float = 0.0
    http: asyncio.Task[None] | None = None
    ahead: dict[int, bytes] = field(default_factory=dict)
    digest: Any = field(default_factory=hashlib.sha256)
    hashed: int = 0  # chunks [0, hashed) are in ``digest``

    def add(self, index: int, data: bytes) -> None:
        if index in self.have:
            return
        self.have.add(index)
        self.ahead[index] = data
        while self.hashed in self.ahead:
            self.digest.update(self.ahead.pop(self.hashed))
            self.hashed += 1


class SimDevice:
    def __init__(
        self,
        device_id: str,
        model: str,
        running: RunningModel,
        public_key: Ed25519PublicKey,
        counters: FleetCounters,
        fetcher: RangeFetcher | None = None,
        records_per_s: int = 0,
    ) -> None:
        self.device_id = device_id
        self.model = model
        self.running = running
        self.public_key = public_key
        self.counters = counters
        self.fetcher = fetcher
        self.records_per_s = records_per_s
        self.link: SimLink | None = None  # set by the fleet before ``run``
        self.desired_revision = -1
        self.download: Download | None = None
        self._seq = 0  # last telemetry record made
        self._acked = 0
        self._in_flight_since: float | None = None  # the batch awaiting its ack

    # -- connection ------------------------------------------------------------------------

    def status(self, online: bool) -> bytes:
        return DeviceStatus(
            device_id=self.device_id, online=online, agent_version=AGENT_VERSION, ts=time.time()
        ).to_bytes()

    async def on_connect(self) -> None:
        self._publish(topics.status(self.device_id), self.status(True), retain=True)
        self.publish_reported()
        if self.download is not None:
            self._request_missing()
        if self._seq > self._acked:
            self._send_telemetry()  # the batch in flight may have died with the broker

    async def on_message(self, topic: str, payload: bytes) -> None:
        """Handle one message; like the agent, a message it cannot use is dropped."""
        try:
            self._dispatch(topic, payload)
        except (EdgeServeError, ValueError) as exc:
            self.counters.errors += 1
            log.warning("simulated device dropped a message", extra={"topic": topic, "error": exc})

    def _dispatch(self, topic: str, payload: bytes) -> None:
        where = topics.parse(topic)
        received = self.counters.received
        received[where.kind] = received.get(where.kind, 0) + len(payload)
        if where.kind == "desired":
            self._on_desired(payload)
        elif where.kind == "chunk" and where.index is not None:
            self._on_chunk(where.update_id or "", where.index, payload)
        elif where.kind == "telemetry_ack":
            self._on_ack(decode(TelemetryAck, payload).acked_seq)

    async def tick(self, now: float) -> None:
        """Once a second: telemetry, and windows that stalled (a broker restart)."""
        download = self.download
        stalled = download is not None and now - download.last_activity >= CHUNK_TIMEOUT_S
        if stalled and download is not None and download.http is None:
            self._request_missing()
        self._seq += self.records_per_s
        self.counters.records_sent += self.records_per_s
        since = self._in_flight_since
        if self._seq > self._acked and (since is None or now - since > ACK_TIMEOUT_S):
            self.counters.batches_resent += since is not None  # its ack never came
            self._send_telemetry()

    # -- updates ---------------------------------------------------------------------------

    def _on_desired(self, payload: bytes) -> None:
        desired = decode(DesiredState, payload)
        if desired.revision <= self.desired_revision:
            return
        self.desired_revision = desired.revision
        envelope = desired.models.get(self.model)
        if envelope is None:
            return
        try:
            manifest = verify_signed_manifest(envelope, self.public_key)
        except EdgeServeError:
            self.counters.refused_manifests += 1
            return
        if manifest.card.sha256 == self.running.sha256:
            self.publish_reported()
            return
        current = self.download
        if current is not None and current.manifest.payload.sha256 == manifest.payload.sha256:
            return
        self.download = Download(manifest, last_activity=time.monotonic())
        spec = manifest.payload
        if spec.url is not None and self.fetcher is not None:
            self.download.http = asyncio.get_running_loop().create_task(self._fetch_http())
        else:
            self._request_missing()

    def _request_missing(self) -> None:
        download = self.download
        assert download is not None
        spec = download.manifest.payload
        missing = [i for i in range(len(spec.chunks)) if i not in download.have][:WINDOW]
        download.last_activity = time.monotonic()
        download.requested = set(missing)
        if not missing:
            self._finish()
            return
        request = ChunkRequest(
            model=download.manifest.model, version=download.manifest.version, missing=missing
        )
        self._publish(topics.update_request(self.device_id, spec.update_id), request.to_bytes())

    def _on_chunk(self, update_id: str, index: int, data: bytes) -> None:
        download = self.download
        if download is None or download.manifest.payload.update_id != update_id:
            return
        if not self._accept(index, data):
            return
        download.last_activity = time.monotonic()
        download.requested.discard(index)
        if not download.requested and download.http is None:
            self._request_missing()  # the next window, or the end

    def _accept(self, index: int, data: bytes) -> bool:
        spec = self.download.manifest.payload if self.download else None
        if spec is None or not 0 <= index < len(spec.chunks):
            return False
        if hashlib.sha256(data).hexdigest() != spec.chunks[index]:
            self.counters.refused_chunks += 1
            return False
        assert self.download is not None
        self.download.add(index, data)
        return True

    async def _fetch_http(self) -> None:
        download = self.download
        assert download is not None and self.fetcher is not None
        spec = download.manifest.payload
        assert spec.url is not None

        async def store(index: int, data: bytes) -> bool:
            self.counters.http_bytes += len(data)
            return self._accept(index, data)

        missing = [i for i in range(len(spec.chunks)) if i not in download.have]
        with contextlib.suppress(BulkUnavailable):  # the rest comes over MQTT
            await self.fetcher.fetch(spec.url, spec, missing, store)
        download.http = None
        self._request_missing()  # finishes, or asks the broker for what is left

    def _finish(self) -> None:
        download = self.download
        if download is None:
            return
        manifest = download.manifest
        self.download = None
        ok = (
            download.hashed == len(manifest.payload.chunks)
            and download.digest.hexdigest() == manifest.payload.sha256
        )
        if ok:
            self.running = RunningModel(version=manifest.version, sha256=manifest.card.sha256)
            self.counters.installed[self.device_id] = time.monotonic()
        result = UpdateResult(
            device_id=self.device_id,
            model=manifest.model,
            version=manifest.version,
            update_id=manifest.payload.update_id,
            ok=ok,
            stage="done" if ok else "rebuild",
            reason="" if ok else "payload sha256 does not match",
            running_version=self.running.version,
            ts=time.time(),
        )
        self._publish(topics.update_result(self.device_id), result.to_bytes())
        self.publish_reported()

    def publish_reported(self) -> None:
        state = ReportedState(
            device_id=self.device_id,
            agent_version=AGENT_VERSION,
            desired_revision=self.desired_revision,
            models={self.model: self.running},
            ts=time.time(),
        )
        self._publish(topics.reported(self.device_id), state.to_bytes(), retain=True)

    # -- telemetry -------------------------------------------------------------------------

    def _send_telemetry(self) -> None:
        """Everything not yet acknowledged, in one batch (the outbox sends the same way)."""
        first, last = self._acked + 1, self._seq
        if last < first or self.link is None or not self.link.connected.is_set():
            return  # sent on the next tick or at the reconnect, as the agent does
        self._in_flight_since = time.monotonic()
        records = [
            OutboxEntry(
                seq=seq,
                kind="request",
                created=time.time(),
                data={"model": self.model, "version": self.running.version, "latency_ms": 1.0},
            )
            for seq in range(first, min(last, first + 499) + 1)
        ]
        batch = TelemetryBatch(
            device_id=self.device_id, from_seq=self._acked, to_seq=records[-1].seq, records=records
        )
        self._publish(topics.telemetry(self.device_id), encode_batch(batch))

    def _on_ack(self, acked_seq: int) -> None:
        if acked_seq <= self._acked:
            return
        self.counters.records_acked += acked_seq - self._acked
        self._acked = acked_seq
        self._in_flight_since = None
        if self._seq > self._acked:
            self._send_telemetry()

    def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        assert self.link is not None
        kind = topic.rsplit("/", 1)[-1]
        self.counters.sent[kind] = self.counters.sent.get(kind, 0) + len(payload)
        self.link.publish(topic, payload, qos=1, retain=retain)
