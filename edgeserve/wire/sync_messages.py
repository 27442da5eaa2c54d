"""Payload schemas of the small JSON messages on the MQTT tree (see ``wire.topics``).

Every message carries a ``schema`` id with a version; a receiver rejects a schema it does
not know with a precise error instead of guessing. Every number a message carries is
bounded (counts and revisions to 2^53 - 1, exact in JSON and in an SQLite INTEGER; times
finite and not negative), so no device can hand the sync service a value it cannot
store. Telemetry batches live in ``wire.telemetry``, update manifests in
``wire.manifest``; ``docs/sync-protocol.md`` documents all of them.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeserve.wire.errors import InvalidInput, PayloadTooLarge
from edgeserve.wire.manifest import SignedManifest
from edgeserve.wire.model_card import RouterPolicy

MAX_MESSAGE_BYTES = 1 << 20
MAX_CHUNK_REQUEST = 4096
MAX_COUNT = 2**53 - 1
MAX_REVISION = MAX_COUNT
MAX_CHUNK_INDEX = 2**31 - 1

Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Seconds = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
ChunkIndex = Annotated[int, Field(ge=0, le=MAX_CHUNK_INDEX)]

UpdateStage = Literal["verify", "download", "rebuild", "stage", "self_test", "activate", "done"]


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


class DeviceStatus(_Message):
    """Retained online flag; the broker publishes ``online=false`` as the last will."""

    schema_id: Literal["edgeserve.status/1"] = Field("edgeserve.status/1", alias="schema")
    device_id: str
    online: bool
    agent_version: str = ""
    ts: Seconds = 0.0


class DesiredState(_Message):
    """What the fleet wants a device to run; retained, one per device.

    ``revision`` grows with every change so a device can tell a new desire from a
    redelivered one; ``models`` maps a model name to the signed manifest of the version
    wanted; ``router`` maps a model to a policy override (None restores the card's).
    """

    schema_id: Literal["edgeserve.desired/1"] = Field("edgeserve.desired/1", alias="schema")
    device_id: str
    revision: int = Field(ge=0, le=MAX_REVISION)
    models: dict[str, SignedManifest] = Field(default_factory=dict)
    router: dict[str, RouterPolicy | None] = Field(default_factory=dict)
    issued_at: Seconds = 0.0


class RunningModel(_Message):
    version: str
    sha256: str
    slot: str = ""


class UpdateProgress(_Message):
    """Where an update stands on the device, for live rollout progress."""

    version: str
    update_id: str
    stage: UpdateStage
    received_chunks: Count = 0
    total_chunks: Count = 0
    reason: str = ""


class ReportedState(_Message):
    """What the device runs and is doing; retained, published on every change."""

    schema_id: Literal["edgeserve.reported/1"] = Field("edgeserve.reported/1", alias="schema")
    device_id: str
    agent_version: str = ""
    group: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    desired_revision: int = Field(-1, ge=-1, le=MAX_REVISION)
    models: dict[str, RunningModel] = Field(default_factory=dict)
    updates: dict[str, UpdateProgress] = Field(default_factory=dict)
    router: dict[str, RouterPolicy] = Field(default_factory=dict)
    outbox_pending: Count = 0
    outbox_dropped: Count = 0
    ts: Seconds = 0.0


class ChunkRequest(_Message):
    """The chunk indices a device still lacks for one update (never more than 4096)."""

    schema_id: Literal["edgeserve.chunk-request/1"] = Field(
        "edgeserve.chunk-request/1", alias="schema"
    )
    model: str
    version: str
    missing: list[ChunkIndex] = Field(max_length=MAX_CHUNK_REQUEST)


class UpdateResult(_Message):
    """The outcome of one update on one device: installed, or refused and why."""

    schema_id: Literal["edgeserve.update-result/1"] = Field(
        "edgeserve.update-result/1", alias="schema"
    )
    device_id: str
    model: str
    version: str
    update_id: str = ""
    ok: bool
    stage: UpdateStage
    reason: str = ""
    running_version: str = Field(description="what the device serves after this attempt")
    duration_s: Seconds = 0.0
    ts: Seconds = 0.0


class TelemetryAck(_Message):
    schema_id: Literal["edgeserve.telemetry-ack/1"] = Field(
        "edgeserve.telemetry-ack/1", alias="schema"
    )
    acked_seq: int = Field(
        ge=0, le=MAX_COUNT, description="every record with seq <= this is stored"
    )


# A P-256 certificate or request in PEM is under 1 KiB; anything far larger is not one.
MAX_PEM_CHARS = 8192
CertReplyStatus = Literal["issued", "pending", "refused"]


class CertRequest(_Message):
    """A device's certificate report: the certificate it connects with, and a request
    (CSR, made on the device for the key it already holds) when it wants a new one."""

    schema_id: Literal["edgeserve.cert-request/1"] = Field(
        "edgeserve.cert-request/1", alias="schema"
    )
    device_id: str
    certificate: str = Field(max_length=MAX_PEM_CHARS)
    csr: str | None = Field(None, max_length=MAX_PEM_CHARS)
    ts: Seconds = 0.0


class CertReply(_Message):
    """The fleet's answer to a request: the new certificate, or pending approval, or
    refused with the reason."""

    schema_id: Literal["edgeserve.cert-reply/1"] = Field("edgeserve.cert-reply/1", alias="schema")
    device_id: str
    status: CertReplyStatus
    certificate: str = Field("", max_length=MAX_PEM_CHARS)
    reason: str = ""


M = TypeVar("M", bound=BaseModel)


def decode(kind: type[M], payload: bytes, limit: int = MAX_MESSAGE_BYTES) -> M:
    """Parse one JSON message, with a size cap and an error that says what was wrong."""
    if len(payload) > limit:
        raise PayloadTooLarge(f"{kind.__name__} of {len(payload)} bytes is over {limit}")
    try:
        return kind.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidInput(f"bad {kind.__name__}: {where}: {first['msg']}") from exc
