"""Per-request telemetry at the cost of a list append on the request path.

Every committed outbox write fsyncs, which costs far more than answering a request. The
recorder keeps records in memory and appends them to the outbox in one transaction
every ``flush_interval_s`` or ``flush_records`` records, on a worker thread so neither
the request nor the event loop waits for the disk. A crash loses at most one interval of
records; a full buffer (the disk cannot keep up) drops new records and counts them
rather than growing memory without end, and so does a write that fails (a full disk).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, NamedTuple

import orjson

from edge_agent.metrics import SyncMetrics
from edge_agent.outbox import Outbox

log = logging.getLogger(__name__)


class Answered(NamedTuple):
    """What the request path hands over: cheap to build, turned into a record later."""

    model: str
    version: str
    seconds: float
    rows: int
    parameters: dict[str, Any]  # the response's parameters (never mutated after)


def request_record(answer: Answered) -> dict[str, Any]:
    """The ``RequestRecord`` fields of one answer (runs on the flush thread)."""
    params = answer.parameters
    confidence = params.get("confidence")
    escalated = params.get("escalated_rows")
    return {
        "model": answer.model,
        "version": answer.version,
        "latency_ms": round(answer.seconds * 1e3, 3),
        "rows": max(1, answer.rows),
        "confidence": min(confidence) if confidence else None,
        "tier": params.get("tier", "edge"),
        "escalated": bool(escalated),
        "degraded": bool(params.get("degraded", False)),
        "cache_hit": bool(params.get("cache_hit", False)),
        "agreement": _agreement(params) if escalated else None,
        "threshold": params.get("threshold"),
        "window_rate": params.get("window_rate"),
    }


def _agreement(params: dict[str, Any]) -> float | None:
    """Share of escalated rows where the edge's label matched the cloud's."""
    edge = params.get("edge_prediction") or []
    cloud = params.get("cloud_prediction") or []
    pairs = min(len(edge), len(cloud))
    if pairs == 0:
        return None
    return sum(1 for e, c in zip(edge, cloud, strict=False) if e == c) / pairs


class TelemetryRecorder:
    """Buffers ``(kind, record)`` pairs and writes them to the outbox in batches."""

    def __init__(
        self,
        outbox: Outbox,
        metrics: SyncMetrics | None = None,
        flush_interval_s: float = 0.2,
        flush_records: int = 256,
        max_buffered: int = 50_000,
    ) -> None:
        self.outbox = outbox
        self.metrics = metrics
        self.flush_interval_s = flush_interval_s
        self.flush_records = flush_records
        self.max_buffered = max_buffered
        self.dropped = 0
        self._buffer: list[tuple[str, dict[str, Any] | Answered]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._flushing: asyncio.Lock | None = None

    def add(self, kind: str, record: dict[str, Any] | Answered) -> None:
        """Queue one record (a JSON-able dict, or an ``Answered`` for kind ``request``);
        called on the event loop, never blocks."""
        buffer = self._buffer
        if len(buffer) >= self.max_buffered:
            self._count_dropped(1)
            return
        buffer.append((kind, record))
        if len(buffer) == self.flush_records:
            self._wake.set()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def start(self) -> None:
        """Begin flushing in the background (inside the running loop)."""
        self._flushing = asyncio.Lock()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="telemetry-recorder")

    async def flush(self) -> int:
        """Write everything buffered now; how many records went to the outbox."""
        if self._flushing is None:
            self._flushing = asyncio.Lock()
        async with self._flushing:
            batch, self._buffer = self._buffer, []
            if not batch:
                return 0
            try:
                await asyncio.to_thread(self._write, batch)
            except Exception:
                # A full or failing disk: the batch is lost, so count it as dropped —
                # loss must be visible, and the request path must not notice.
                log.exception("telemetry flush failed", extra={"records": len(batch)})
                self._count_dropped(len(batch))
                return 0
            return len(batch)

    def _count_dropped(self, records: int) -> None:
        self.dropped += records
        if self.metrics is not None:
            self.metrics.records_dropped.inc(records)

    async def close(self) -> None:
        """Stop the background flusher and write what is left."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            self._wake.clear()
            await self.flush()

    def _write(self, batch: list[tuple[str, dict[str, Any] | Answered]]) -> None:
        self.outbox.append_rows((kind, _encode(record)) for kind, record in batch)


def _encode(record: dict[str, Any] | Answered) -> bytes:
    return orjson.dumps(request_record(record) if isinstance(record, Answered) else record)
