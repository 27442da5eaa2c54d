"""The telemetry uploader: the outbox, oldest first, one acknowledged batch at a time.

A batch covers the sequence range ``(from_seq, to_seq]`` where ``from_seq`` is the
outbox's persisted watermark (every row at or below it acknowledged or dropped), so the
fleet side can tell a contiguous batch from one that follows a loss. Only one batch is
in flight: it is resent, rebuilt from the outbox, when no acknowledgement arrives within
``ack_timeout_s`` and after every reconnect (QoS 1 alone does not survive a broker that
lost its session). A ``TelemetryAck`` deletes the rows it covers and the next batch goes
out at once, so a backlog drains as fast as the fleet acknowledges it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import cast

import orjson

from edge_agent.metrics import SyncMetrics
from edge_agent.outbox import Outbox, OutboxRecord
from edgeserve.wire import topics
from edgeserve.wire.telemetry import OutboxEntry, RecordKind, TelemetryBatch, encode_batch

log = logging.getLogger(__name__)

MAX_BATCH_RECORDS = 500
MAX_BATCH_RAW_BYTES = 256 << 10
RECORD_KINDS = frozenset({"request", "escalation", "hard_example"})

Publish = Callable[[str, bytes], None]


class TelemetryUploader:
    def __init__(
        self,
        outbox: Outbox,
        device_id: str,
        publish: Publish,
        metrics: SyncMetrics,
        interval_s: float = 2.0,
        ack_timeout_s: float = 15.0,
        max_records: int = MAX_BATCH_RECORDS,
        max_bytes: int = MAX_BATCH_RAW_BYTES,
    ) -> None:
        self.outbox = outbox
        self.device_id = device_id
        self.topic = topics.telemetry(device_id)
        self.publish = publish
        self.metrics = metrics
        self.interval_s = interval_s
        self.ack_timeout_s = ack_timeout_s
        self.max_records = min(max_records, MAX_BATCH_RECORDS)
        self.max_bytes = max_bytes
        self.in_flight: TelemetryBatch | None = None
        self._sent_at = 0.0
        self._sent_through = 0
        self._wake = asyncio.Event()

    # -- batches (blocking: run on a worker thread) ---------------------------------------

    def build_batch(self) -> TelemetryBatch | None:
        """The oldest unacknowledged records as one batch, or None when there are none."""
        watermark = self.outbox.acked_seq
        rows = self.outbox.pending(limit=self.max_records, after_seq=watermark)
        if not rows:
            return None
        records: list[OutboxEntry] = []
        size = 0
        to_seq = watermark
        for row in rows:
            if records and size + len(row.payload) > self.max_bytes:
                break
            size += len(row.payload)
            to_seq = row.seq
            entry = _entry(row)
            if entry is not None:
                records.append(entry)
        return TelemetryBatch(
            device_id=self.device_id,
            from_seq=watermark,
            to_seq=to_seq,
            dropped=self.outbox.dropped_total(),
            records=records,
        )

    def acknowledge(self, acked_seq: int) -> int:
        """Delete rows the fleet stored; never past what was actually sent."""
        through = min(acked_seq, self._sent_through)
        if through <= 0:
            return 0
        return self.outbox.acknowledge_through(through)

    # -- events (event loop) --------------------------------------------------------------

    async def on_ack(self, acked_seq: int) -> int:
        """A ``TelemetryAck`` arrived: delete what it covers and send the next batch."""
        deleted = await asyncio.to_thread(self.acknowledge, acked_seq)
        self.metrics.batches.labels("acked").inc()
        self.in_flight = None
        self._wake.set()
        return deleted

    def on_reconnect(self) -> None:
        """Whatever was in flight may be lost with the old connection: send again now."""
        self.in_flight = None
        self._wake.set()

    async def run(self, connected: asyncio.Event) -> None:
        """Send batches while connected, until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()
            if connected.is_set():
                await self.send_next()

    async def send_next(self) -> bool:
        """Publish a batch unless one is awaiting its ack; True if one went out."""
        now = time.monotonic()
        resend = self.in_flight is not None
        if resend and now - self._sent_at < self.ack_timeout_s:
            return False
        batch = await asyncio.to_thread(self.build_batch)
        self.in_flight = batch
        if batch is None:
            return False
        self._sent_through = max(self._sent_through, batch.to_seq)
        self._sent_at = time.monotonic()
        self.publish(self.topic, encode_batch(batch))
        self.metrics.batches.labels("resent" if resend else "sent").inc()
        return True


def _entry(row: OutboxRecord) -> OutboxEntry | None:
    """A stored row as a batch entry; an unreadable row is skipped (the range covers it)."""
    if row.kind not in RECORD_KINDS:
        return None
    try:
        data = orjson.loads(row.payload)
    except orjson.JSONDecodeError:
        log.warning("outbox row is not JSON; skipped", extra={"seq": row.seq})
        return None
    if not isinstance(data, dict):
        return None
    kind = cast(RecordKind, row.kind)
    return OutboxEntry(seq=row.seq, kind=kind, created=row.created, data=data)
