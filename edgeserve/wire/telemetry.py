"""Telemetry records and the compressed batches that carry them home.

The agent appends records to its outbox (one SQLite row each, numbered by a sequence
that never repeats) and uploads them oldest first as a ``TelemetryBatch``: the range of
sequence numbers it covers and the records in it, orjson then zstd. ``from_seq`` is the
highest sequence the agent knows to be acknowledged (or dropped under its disk budget),
so the fleet side can tell a contiguous batch from one that follows a lost batch.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
import pyzstd
from pydantic import BaseModel, ConfigDict, Field

from edgeserve.wire.errors import InvalidInput, PayloadTooLarge
from edgeserve.wire.sync_messages import decode

BATCH_SCHEMA = "edgeserve.telemetry/1"
MAX_BATCH_COMPRESSED = 1 << 20
MAX_BATCH_DECOMPRESSED = 16 << 20
# Exact in JSON and in an SQLite INTEGER: no device can send a number we cannot store.
MAX_COUNT = 2**53 - 1

RecordKind = Literal["request", "escalation", "hard_example"]


class RequestRecord(BaseModel):
    """One answered request, as the ``data`` of an outbox record of kind ``request``."""

    model_config = ConfigDict(frozen=True)

    model: str
    version: str
    latency_ms: float = Field(ge=0, allow_inf_nan=False)
    rows: int = Field(1, ge=1, le=MAX_COUNT)
    confidence: float | None = Field(
        None, allow_inf_nan=False, description="lowest row confidence, if scored"
    )
    tier: Literal["edge", "cloud", "mixed"] = "edge"
    escalated: bool = False
    degraded: bool = False
    cache_hit: bool = False
    agreement: float | None = Field(
        None, description="share of escalated rows where edge and cloud agreed"
    )
    error: str | None = Field(None, description="error code label if the request failed")
    threshold: float | None = Field(
        None, description="router threshold in force, when the device holds a rate"
    )
    window_rate: float | None = Field(
        None, description="escalated share of the device's recent window, when it holds a rate"
    )


class OutboxEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    seq: int = Field(gt=0, le=MAX_COUNT)
    kind: RecordKind
    created: float = Field(ge=0, allow_inf_nan=False)
    data: dict[str, Any]


class TelemetryBatch(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_id: Literal["edgeserve.telemetry/1"] = Field("edgeserve.telemetry/1", alias="schema")
    device_id: str
    from_seq: int = Field(
        ge=0, le=MAX_COUNT, description="every seq <= this was acknowledged or dropped"
    )
    to_seq: int = Field(ge=0, le=MAX_COUNT, description="the last seq this batch covers")
    dropped: int = Field(0, ge=0, le=MAX_COUNT, description="records the device dropped, all time")
    records: list[OutboxEntry]


def encode_batch(batch: TelemetryBatch, level: int = 3) -> bytes:
    return pyzstd.compress(orjson.dumps(batch.model_dump(by_alias=True)), level)


def decode_batch(payload: bytes) -> TelemetryBatch:
    """Decompress (bounded, so a zstd bomb is refused) and validate one batch."""
    if len(payload) > MAX_BATCH_COMPRESSED:
        raise PayloadTooLarge(
            f"telemetry batch of {len(payload)} bytes is over {MAX_BATCH_COMPRESSED}"
        )
    decompressor = pyzstd.ZstdDecompressor()
    try:
        raw = decompressor.decompress(payload, MAX_BATCH_DECOMPRESSED + 1)
    except pyzstd.ZstdError as exc:
        raise InvalidInput(f"telemetry batch is not zstd: {exc}") from exc
    if len(raw) > MAX_BATCH_DECOMPRESSED:
        raise PayloadTooLarge(f"telemetry batch inflates past {MAX_BATCH_DECOMPRESSED} bytes")
    if not decompressor.eof:
        raise InvalidInput("telemetry batch is truncated")
    batch = decode(TelemetryBatch, raw, limit=MAX_BATCH_DECOMPRESSED)
    if batch.to_seq < batch.from_seq or any(
        not batch.from_seq < r.seq <= batch.to_seq for r in batch.records
    ):
        raise InvalidInput("telemetry batch records fall outside its (from_seq, to_seq] range")
    return batch
