"""What the sync service does with each device message: one plain function per topic kind.

A handler takes the context (registry, store, issuer, controller, metrics), the parsed
topic and the raw payload, and returns the messages to publish; it never touches the
network, so tests call it directly. Devices are not trusted: every payload is decoded
with a size cap and a schema, a payload naming another device than its topic is refused,
and so are unknown devices, unknown update ids and out-of-range chunk indices. All of
that ends in the one rejection path of ``_guarded``: a log line with the reason and a
labelled counter, never an exception into the service loop.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from edgeserve.wire import topics
from edgeserve.wire.errors import EdgeServeError
from edgeserve.wire.sync_messages import (
    CertRequest,
    ChunkRequest,
    DeviceStatus,
    ReportedState,
    UpdateResult,
    decode,
)
from edgeserve.wire.telemetry import decode_batch
from sync.artifacts import ArtifactStore
from sync.builds import BuildPending
from sync.certs import FleetCertificates
from sync.ingest import ingest_batch
from sync.metrics import SyncMetrics
from sync.registry import Registry
from sync.rollout import Assign, RolloutController
from sync.updates import Outgoing, UpdateIssuer
from sync.views import IssueRow

log = logging.getLogger(__name__)


class Rejected(Exception):
    """A device message refused for a reason that has its own metrics label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class HandlerContext:
    registry: Registry
    store: ArtifactStore
    issuer: UpdateIssuer
    controller: RolloutController
    metrics: SyncMetrics
    request_window: int = 256
    certs: FleetCertificates | None = None


Handler = Callable[[HandlerContext, topics.DeviceTopic, bytes], list[Outgoing]]


def _guarded(kind: str) -> Callable[[Handler], Handler]:
    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def guarded(
            ctx: HandlerContext, topic: topics.DeviceTopic, payload: bytes
        ) -> list[Outgoing]:
            ctx.metrics.messages.labels(kind).inc()
            try:
                return handler(ctx, topic, payload)
            except Rejected as exc:
                reason, message = exc.reason, exc.message
            except EdgeServeError as exc:
                reason, message = exc.code.label, exc.message
            except Exception as exc:  # a bug must not stop the service loop
                log.exception("handler failed", extra={"kind": kind, "device": topic.device_id})
                reason, message = "internal", repr(exc)
            ctx.metrics.rejected.labels(kind, reason).inc()
            log.warning(
                "device message rejected",
                extra={
                    "kind": kind,
                    "device": topic.device_id,
                    "reason": reason,
                    "detail": message[:300],
                    "bytes": len(payload),
                },
            )
            return []

        return guarded

    return wrap


def _same_device(topic: topics.DeviceTopic, claimed: str) -> None:
    if claimed != topic.device_id:
        raise Rejected(
            "device_mismatch", f"payload names device {claimed!r} on {topic.device_id}'s topic"
        )


def _known_device(ctx: HandlerContext, device_id: str) -> None:
    if ctx.registry.device(device_id) is None:
        raise Rejected("unknown_device", f"device {device_id} has never reported its state")


@_guarded("status")
def on_status(ctx: HandlerContext, topic: topics.DeviceTopic, payload: bytes) -> list[Outgoing]:
    status = decode(DeviceStatus, payload)
    _same_device(topic, status.device_id)
    ctx.registry.record_status(status)
    return []


@_guarded("reported")
def on_reported(ctx: HandlerContext, topic: topics.DeviceTopic, payload: bytes) -> list[Outgoing]:
    reported = decode(ReportedState, payload)
    _same_device(topic, reported.device_id)
    ctx.registry.record_reported(reported)
    return issue_assignments(ctx, ctx.controller.on_reported(reported.device_id))


@_guarded("update_request")
def on_update_request(
    ctx: HandlerContext, topic: topics.DeviceTopic, payload: bytes
) -> list[Outgoing]:
    request = decode(ChunkRequest, payload)
    _known_device(ctx, topic.device_id)
    update_id = topic.update_id or ""
    issue = ctx.registry.issue(topic.device_id, update_id)
    spec = ctx.store.spec(update_id) if issue is not None else None
    if issue is None or spec is None:
        raise Rejected("unknown_update", f"update {update_id} was not issued to this device")
    if (request.model, request.version) != (issue.model, issue.version):
        raise Rejected(
            "update_mismatch",
            f"update {update_id} is {issue.model} v{issue.version}, "
            f"not {request.model} v{request.version}",
        )
    indices = list(dict.fromkeys(request.missing))
    if bad := [i for i in indices if not 0 <= i < len(spec.chunks)]:
        raise Rejected(
            "chunk_out_of_range", f"chunk {bad[0]} of update {update_id} ({len(spec.chunks)})"
        )
    window = indices[: ctx.request_window]
    if not ctx.store.payload_path(spec.sha256).is_file():
        raise Rejected("payload_rebuilding", f"payload of update {update_id} is being rebuilt")
    chunks = ctx.store.read_chunks(spec.sha256, window, spec.chunk_size)
    out = []
    for index, data in zip(window, chunks, strict=True):
        # A chunk that rotted on disk is withheld: the device would only refuse it.
        if hashlib.sha256(data).hexdigest() != spec.chunks[index]:
            return recover_rotten_payload(ctx, issue, spec.sha256, index)
        out.append(Outgoing(topics.chunk(topic.device_id, update_id, index), data))
    ctx.metrics.chunks_served.inc(len(out))
    ctx.metrics.chunk_bytes.inc(sum(len(message.payload) for message in out))
    return out


def recover_rotten_payload(
    ctx: HandlerContext, issue: IssueRow, payload_sha: str, index: int
) -> list[Outgoing]:
    """A stored payload no longer matches its chunk hashes: drop it and issue the update
    again, which rebuilds the payload from the model's artifact — if that artifact still
    matches its hash; if not, the device's assignment fails with the reason."""
    ctx.metrics.store_corrupt.labels("payload").inc()
    log.error(
        "stored payload is corrupt; rebuilding it",
        extra={"payload": payload_sha[:12], "chunk": index, "device": issue.device_id},
    )
    ctx.store.payload_path(payload_sha).unlink(missing_ok=True)
    assign = ctx.controller.current_assign(issue.device_id, issue.model, issue.version)
    if assign is None:
        return []
    version = ctx.registry.version(issue.model, issue.version)
    if version is None or not _artifact_intact(ctx.store, version.sha256):
        ctx.metrics.store_corrupt.labels("artifact").inc()
        reason = f"the stored artifact of {issue.model} v{issue.version} is corrupt; push it again"
        return issue_assignments(ctx, ctx.controller.assignment_failed(assign, reason))
    return issue_assignments(ctx, [assign])


def _artifact_intact(store: ArtifactStore, sha: str) -> bool:
    digest = hashlib.sha256()
    try:
        with store.artifact_path(sha).open("rb") as artifact:
            while block := artifact.read(1 << 20):
                digest.update(block)
    except FileNotFoundError:
        return False
    return digest.hexdigest() == sha


@_guarded("update_result")
def on_update_result(
    ctx: HandlerContext, topic: topics.DeviceTopic, payload: bytes
) -> list[Outgoing]:
    result = decode(UpdateResult, payload)
    _same_device(topic, result.device_id)
    _known_device(ctx, topic.device_id)
    ctx.metrics.update_results.labels("ok" if result.ok else "failed", result.stage).inc()
    log.info(
        "update result",
        extra={
            "device": result.device_id,
            "model": result.model,
            "version": result.version,
            "ok": result.ok,
            "stage": result.stage,
            "reason": result.reason,
        },
    )
    return issue_assignments(ctx, ctx.controller.on_result(result))


@_guarded("telemetry")
def on_telemetry(ctx: HandlerContext, topic: topics.DeviceTopic, payload: bytes) -> list[Outgoing]:
    batch = decode_batch(payload)
    _same_device(topic, batch.device_id)
    _known_device(ctx, topic.device_id)
    ack = ingest_batch(ctx.registry, batch)
    ctx.metrics.telemetry_records.inc(len(batch.records))
    ctx.metrics.acks.inc()
    return [Outgoing(topics.telemetry_ack(topic.device_id), ack.to_bytes())]


@_guarded("cert_request")
def on_cert_request(
    ctx: HandlerContext, topic: topics.DeviceTopic, payload: bytes
) -> list[Outgoing]:
    request = decode(CertRequest, payload)
    _same_device(topic, request.device_id)
    if ctx.certs is None:
        raise Rejected("no_ca", "this sync service has no fleet CA configured")
    return ctx.certs.on_request(request)


@_guarded("unexpected")
def on_unexpected(ctx: HandlerContext, topic: topics.DeviceTopic, payload: bytes) -> list[Outgoing]:
    raise Rejected("unexpected_topic", f"devices do not publish on {topic.kind} topics")


HANDLERS: dict[str, Handler] = {
    "status": on_status,
    "reported": on_reported,
    "update_request": on_update_request,
    "update_result": on_update_result,
    "telemetry": on_telemetry,
    "cert_request": on_cert_request,
}


def dispatch(ctx: HandlerContext, topic: str, payload: bytes) -> list[Outgoing]:
    """Route one received message by its topic; a topic outside the tree is refused."""
    try:
        parsed = topics.parse(topic)
    except ValueError as exc:
        ctx.metrics.rejected.labels("unparsed", "bad_topic").inc()
        log.warning("message on an unknown topic", extra={"topic": topic[:200], "detail": str(exc)})
        return []
    return HANDLERS.get(parsed.kind, on_unexpected)(ctx, parsed, payload)


def issue_built(ctx: HandlerContext) -> list[Outgoing]:
    """Issue the updates whose payload the build worker finished since the last tick."""
    assigns = []
    for waiting in ctx.issuer.ready_waiting(ctx.metrics):
        found = ctx.controller.current_assign(waiting.device_id, waiting.model, waiting.version)
        rollout_id = found.rollout_id if found is not None else 0
        assigns.append(
            Assign(waiting.device_id, waiting.model, waiting.version, waiting.rollback, rollout_id)
        )
    return issue_assignments(ctx, assigns)


def issue_assignments(ctx: HandlerContext, assigns: Iterable[Assign]) -> list[Outgoing]:
    """Sign each assignment for its device; one device's failure does not stop the others,
    and a device whose update cannot be issued fails in its rollout with the reason."""
    out: list[Outgoing] = []
    pending = list(assigns)
    while pending:
        assign = pending.pop(0)
        try:
            issued = ctx.issuer.issue(
                assign.device_id, assign.model, assign.version, rollback=assign.rollback
            )
        except BuildPending:
            continue  # issued by the issuer once the worker has built the payload
        except Exception as exc:  # one device must not stop the rollout loop
            reason = exc.message if isinstance(exc, EdgeServeError) else repr(exc)
            label = exc.code.label if isinstance(exc, EdgeServeError) else "internal"
            ctx.metrics.rejected.labels("issue", label).inc()
            log.warning(
                "could not issue update",
                exc_info=not isinstance(exc, EdgeServeError),
                extra={"device": assign.device_id, "model": assign.model, "reason": reason},
            )
            pending += ctx.controller.assignment_failed(assign, reason)
            continue
        ctx.metrics.issued.labels(issued.spec.encoding).inc()
        out.append(issued.message)
    return out
