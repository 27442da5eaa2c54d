"""What the agent does with each MQTT message: plain functions over a ``SyncContext``.

Sans-IO in spirit: a handler gets a message's bytes and the context (updater, router,
uploader, a ``publish`` callable, metrics, per-connection state) and publishes replies
through ``publish``, so unit tests call handlers directly with real objects and read what
was published. Everything that arrives is untrusted: a message that is not JSON, has the
wrong schema, a bad signature, a refused update or a chunk that fails its hash is logged
with its reason, counted in ``edgeserve_agent_sync_rejected`` and dropped — one bad
message never stops the client. A refused update is also reported as an ``UpdateResult``
(stage ``verify``) so the fleet sees why the device did not move.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.sync.context import SyncContext, Window
from edge_agent.sync.reporting import (
    publish_reported,
    running_version,
    signed_version,
)
from edge_agent.updates.downloads import ChunksRotted
from edgeserve.mqtt import Message
from edgeserve.wire import topics
from edgeserve.wire.errors import EdgeServeError, SignatureError, Unavailable, UpdateRefused
from edgeserve.wire.manifest import SignedManifest, verify_signed_manifest
from edgeserve.wire.sync_messages import (
    ChunkRequest,
    DesiredState,
    TelemetryAck,
    UpdateResult,
    UpdateStage,
    decode,
)

if TYPE_CHECKING:
    from edge_agent.updates import UpdateSession

log = logging.getLogger(__name__)


# -- dispatch ----------------------------------------------------------------------------


async def handle(ctx: SyncContext, message: Message) -> None:
    """Handle one message; never raises for anything the message contains."""
    try:
        where = topics.parse(message.topic)
    except ValueError as exc:
        reject(ctx, "bad_topic", str(exc))
        return
    ctx.metrics.messages.labels(where.kind).inc()
    if where.device_id != ctx.device_id:
        reject(ctx, "wrong_device", message.topic)
        return
    try:
        if where.kind == "desired":
            await on_desired(ctx, message.payload)
        elif where.kind == "chunk" and where.update_id is not None and where.index is not None:
            await on_chunk(ctx, where.update_id, where.index, message.payload)
        elif where.kind == "telemetry_ack":
            await on_telemetry_ack(ctx, message.payload)
        else:
            reject(ctx, "unexpected_kind", message.topic)
    except EdgeServeError as exc:
        reject(ctx, reason_label(exc), exc.message)
    except Exception as exc:
        log.exception("sync message handler failed", extra={"topic": message.topic})
        reject(ctx, "internal", str(exc))


def reject(ctx: SyncContext, reason: str, detail: str) -> None:
    ctx.metrics.rejected.labels(reason).inc()
    log.warning("sync message ignored", extra={"reason": reason, "detail": detail[:300]})


def reason_label(exc: EdgeServeError) -> str:
    if isinstance(exc, SignatureError):
        return "signature"
    if isinstance(exc, UpdateRefused):
        return "refused"
    return exc.code.label


# -- desired state -----------------------------------------------------------------------


async def on_desired(ctx: SyncContext, payload: bytes) -> None:
    desired = decode(DesiredState, payload)
    if desired.device_id != ctx.device_id:
        reject(ctx, "wrong_device", f"desired state for {desired.device_id!r}")
        return
    if desired.revision <= ctx.state.desired_revision:
        reject(ctx, "stale", f"revision {desired.revision} <= {ctx.state.desired_revision}")
        return
    if forged := unsigned_models(desired, ctx.public_key):
        # A tampered desired state is refused whole: its revision, router policies and
        # other models are not adopted, so it cannot make later genuine states "stale".
        for name in forged:
            reject(ctx, "signature", f"desired revision {desired.revision}: {name} is not signed")
            ctx.metrics.updates.labels("refused").inc()
            report_offer_failure(
                ctx, name, desired.models[name], "verify", "signature: not the fleet's key"
            )
        return
    ctx.state.desired_revision = desired.revision
    apply_router(ctx, desired)
    for name, envelope in desired.models.items():
        await offer(ctx, name, envelope)
    await publish_reported(ctx)


def unsigned_models(desired: DesiredState, public_key: Ed25519PublicKey) -> list[str]:
    """The models whose manifest the fleet key did not sign (expiry and content aside:
    the updater refuses those, and reports them, as for any signed manifest)."""
    forged = []
    for name, envelope in desired.models.items():
        try:
            verify_signed_manifest(envelope, public_key, now=0.0)
        except SignatureError:
            forged.append(name)
        except EdgeServeError:
            pass
    return forged


def apply_router(ctx: SyncContext, desired: DesiredState) -> None:
    served = set(ctx.core.model_names())
    current = ctx.router.overrides()
    for name, policy in desired.router.items():
        if name not in served:
            log.warning("router policy for a model not served", extra={"model": name})
        elif current.get(name) != policy:
            ctx.router.override(name, policy)
            log.info("router policy changed", extra={"model": name, "remote": True})


async def offer(ctx: SyncContext, name: str, envelope: SignedManifest) -> None:
    """Hand one signed manifest to the updater and start (or resume) its download."""
    ctx.state.deferred.pop(name, None)
    try:
        session = await asyncio.to_thread(ctx.updater.offer, envelope)
    except Unavailable as exc:
        # Busy, not refused: offered again on the next tick.
        log.info("update deferred", extra={"model": name, "reason": exc.message})
        ctx.state.deferred[name] = envelope
        return
    except EdgeServeError as exc:
        reason = reason_label(exc)
        reject(ctx, reason, exc.message)
        ctx.metrics.updates.labels("refused").inc()
        report_offer_failure(ctx, name, envelope, "verify", f"{reason}: {exc.message}")
        return
    except OSError as exc:
        # The device's disk (full, read-only): the update cannot even be staged. Report
        # it so the rollout sees a failure instead of a device that never answers; the
        # old model keeps serving and a later offer may succeed once space is freed.
        log.error("update could not be stored", extra={"model": name, "reason": str(exc)})
        ctx.metrics.updates.labels("failed").inc()
        report_offer_failure(ctx, name, envelope, "download", f"storage: {exc}")
        return
    count_rotted_chunks(ctx)
    if session is not None:
        await start_download(ctx, session)


def count_rotted_chunks(ctx: SyncContext) -> None:
    """One refusal per stored chunk that failed its hash on disk; the updater finds them
    whenever it (re)opens or assembles a download, and drops them to be fetched again."""
    found = ctx.updater.stats.chunks_rotted - ctx.state.rotted_counted
    if found > 0:
        ctx.metrics.rejected.labels("chunk_rotted").inc(found)
        ctx.state.rotted_counted += found


def report_offer_failure(
    ctx: SyncContext, name: str, envelope: SignedManifest, stage: UpdateStage, reason: str
) -> None:
    result = UpdateResult(
        device_id=ctx.device_id,
        model=name,
        version=signed_version(envelope, ctx.public_key),
        ok=False,
        stage=stage,
        reason=reason,
        running_version=running_version(ctx, name),
        ts=time.time(),
    )
    ctx.publish(topics.update_result(ctx.device_id), result.to_bytes(), False)


async def start_download(ctx: SyncContext, session: UpdateSession) -> None:
    manifest = session.manifest
    for old in [w for w in ctx.state.windows.values() if w.model == manifest.model]:
        if old.update_id != session.update_id:
            del ctx.state.windows[old.update_id]  # superseded by a newer desire
    window = ctx.state.windows.get(session.update_id)
    if window is None:
        window = Window(
            session.update_id, manifest.model, manifest.version, len(manifest.payload.chunks)
        )
        ctx.state.windows[session.update_id] = window
    # Imported here: the HTTP path calls back into this module's chunk-window functions.
    from edge_agent.sync import bulk

    if bulk.wants_http(ctx, manifest.payload):
        bulk.start_http(ctx, window, manifest.payload)
    else:
        await request_window(ctx, window)


# -- chunks ------------------------------------------------------------------------------


async def request_window(ctx: SyncContext, window: Window) -> None:
    """Ask for the next ≤ 256 missing chunks, or finish when none are missing."""
    if window.update_id in ctx.state.finishing:
        return
    missing = await asyncio.to_thread(ctx.updater.missing, window.update_id, ctx.window)
    window.last_activity = time.monotonic()
    if not missing:
        window.requested.clear()
        start_finish(ctx, window)
        return
    window.requested = set(missing)
    request = ChunkRequest(model=window.model, version=window.version, missing=missing)
    ctx.publish(topics.update_request(ctx.device_id, window.update_id), request.to_bytes(), False)


async def on_chunk(ctx: SyncContext, update_id: str, index: int, payload: bytes) -> None:
    if update_id in ctx.state.finishing:
        reject(ctx, "duplicate", f"chunk {index} of {update_id} after its download completed")
        return
    try:
        await asyncio.to_thread(ctx.updater.accept_chunk, update_id, index, payload)
    except OSError as exc:
        await abandon_download(ctx, update_id, exc)
        return
    window = ctx.state.windows.get(update_id)
    if window is None:
        # A session resumed by the updater that this connection has not asked about yet.
        return
    window.last_activity = time.monotonic()
    window.requested.discard(index)
    if not window.requested:
        await request_window(ctx, window)


async def abandon_download(ctx: SyncContext, update_id: str, error: OSError) -> None:
    """A chunk could not be stored: free the download, say so, keep serving the old model
    (a rollout waiting on this device learns at once, instead of after its timeout)."""
    result = await asyncio.to_thread(ctx.updater.abandon, update_id, error)
    ctx.state.windows.pop(update_id, None)
    ctx.metrics.updates.labels("failed").inc()
    ctx.publish(topics.update_result(ctx.device_id), result.to_bytes(), False)
    await publish_reported(ctx)


async def resend_stalled(ctx: SyncContext, now: float | None = None) -> int:
    """Re-request windows where nothing arrived for ``chunk_timeout_s`` (the broker may
    have restarted and lost them) and re-offer deferred manifests; how many windows."""
    for name, envelope in list(ctx.state.deferred.items()):
        await offer(ctx, name, envelope)
    current = time.monotonic() if now is None else now
    stalled = [
        w
        for w in ctx.state.windows.values()
        if w.update_id not in ctx.state.finishing
        and w.transport == "mqtt"
        and current - w.last_activity >= ctx.chunk_timeout_s
    ]
    for window in stalled:
        log.info("chunks stopped arriving; asking again", extra={"update_id": window.update_id})
        await request_window(ctx, window)
    return len(stalled)


async def resume_pending(ctx: SyncContext) -> None:
    """After a (re)connect: ask again for every download the updater has not finished."""
    sessions = await asyncio.to_thread(ctx.updater.pending)
    count_rotted_chunks(ctx)
    for session in sessions:
        await start_download(ctx, session)


def start_finish(ctx: SyncContext, window: Window) -> None:
    """Rebuild, verify, self-test and activate on a worker thread, off the message loop."""
    task = asyncio.get_running_loop().create_task(finish(ctx, window))
    ctx.state.finishing[window.update_id] = task


async def finish(ctx: SyncContext, window: Window) -> None:
    result: UpdateResult | None = None
    try:
        result = await asyncio.to_thread(ctx.updater.finish, window.update_id)
    except ChunksRotted as rotted:
        log.warning("stored chunks rotted; fetching them again", extra={"detail": rotted.message})
        count_rotted_chunks(ctx)
        ctx.state.finishing.pop(window.update_id, None)
        await request_window(ctx, window)  # the window stays open for the dropped chunks
        return
    except Exception:
        log.exception("update finish failed", extra={"update_id": window.update_id})
    ctx.state.windows.pop(window.update_id, None)
    ctx.state.finishing.pop(window.update_id, None)
    ctx.metrics.updates.labels("installed" if result is not None and result.ok else "failed").inc()
    if result is not None:
        log.info(
            "update finished",
            extra={
                "model": window.model,
                "version": window.version,
                "ok": result.ok,
                "stage": result.stage,
                "reason": result.reason,
            },
        )
        ctx.publish(topics.update_result(ctx.device_id), result.to_bytes(), False)
    await publish_reported(ctx)


# -- telemetry ---------------------------------------------------------------------------


async def on_telemetry_ack(ctx: SyncContext, payload: bytes) -> None:
    ack = decode(TelemetryAck, payload)
    if ctx.uploader is None:
        reject(ctx, "unexpected_kind", "telemetry ack while telemetry is off")
        return
    await ctx.uploader.on_ack(ack.acked_seq)
