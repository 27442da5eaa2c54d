"""What the device says about itself: its online status, and its reported state (what it
runs, what it is downloading, its router overrides and outbox) — built from the context,
published retained so the fleet sees it after any reconnect.
"""

from __future__ import annotations

import asyncio
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.sync.context import SyncContext, Window
from edgeserve import __version__
from edgeserve.wire import topics
from edgeserve.wire.errors import EdgeServeError
from edgeserve.wire.manifest import SignedManifest, verify_signed_manifest
from edgeserve.wire.sync_messages import (
    DeviceStatus,
    ReportedState,
    RunningModel,
    UpdateProgress,
)


def status_message(device_id: str, online: bool) -> DeviceStatus:
    return DeviceStatus(
        device_id=device_id, online=online, agent_version=__version__, ts=time.time()
    )


async def publish_reported(ctx: SyncContext) -> None:
    state = await asyncio.to_thread(reported_state, ctx)
    ctx.publish(topics.reported(ctx.device_id), state.to_bytes(), True)


def reported_state(ctx: SyncContext) -> ReportedState:
    """What runs here and what is downloading (blocking: reads the outbox and downloads)."""
    models: dict[str, RunningModel] = {}
    for name in ctx.core.model_names():
        loaded = ctx.core.model(name)
        models[name] = RunningModel(
            version=loaded.version, sha256=loaded.card.sha256, slot=loaded.slot
        )
    updates = {w.model: _progress(ctx, w) for w in list(ctx.state.windows.values())}
    outbox = ctx.outbox
    return ReportedState(
        device_id=ctx.device_id,
        agent_version=__version__,
        group=ctx.group,
        labels=ctx.labels,
        desired_revision=ctx.state.desired_revision,
        models=models,
        updates=updates,
        router=ctx.router.overrides(),
        outbox_pending=outbox.count() if outbox is not None else 0,
        outbox_dropped=outbox.dropped_total() if outbox is not None else 0,
        ts=time.time(),
    )


def _progress(ctx: SyncContext, window: Window) -> UpdateProgress:
    missing = len(ctx.updater.missing(window.update_id, window.total))
    return UpdateProgress(
        version=window.version,
        update_id=window.update_id,
        stage="activate" if window.update_id in ctx.state.finishing else "download",
        received_chunks=window.total - missing,
        total_chunks=window.total,
    )


def running_version(ctx: SyncContext, name: str) -> str:
    try:
        return ctx.core.model(name).version
    except EdgeServeError:
        return ""


def signed_version(envelope: SignedManifest, public_key: Ed25519PublicKey) -> str:
    """The version a refused manifest names, read only if its signature verifies."""
    try:
        # now=0: an expired manifest still names its version truthfully
        return verify_signed_manifest(envelope, public_key, now=0.0).version
    except EdgeServeError:
        return ""
