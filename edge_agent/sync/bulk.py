"""A download whose manifest names an HTTP address: bytes by Range requests, MQTT as backup.

The manifest, its signature check and the download folder are the same as for MQTT
chunks; only the transport differs. A fetch runs as one task per update beside the
message loop. Chunks that fail their hash are refused (counted as ``integrity``) and
asked for again; after ``attempts`` rounds, or as soon as the host cannot be reached,
the rest of the download falls back to MQTT chunk windows, which the sync service can
always serve. The next (re)connect tries HTTP again, since the host may be back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from edge_agent.sync import handlers
from edge_agent.sync.context import SyncContext, Window
from edge_agent.updates.ranges import BulkUnavailable, RangeFetcher
from edgeserve.wire.manifest import PayloadSpec

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig

log = logging.getLogger(__name__)

ATTEMPTS = 3


def range_fetcher(config: AgentConfig) -> RangeFetcher | None:
    """The HTTP fetcher the configuration asks for (None: every payload over MQTT)."""
    if not config.sync_http:
        return None
    return RangeFetcher(
        ca=config.sync_http_ca or config.sync_ca,
        streams=config.sync_http_streams,
        timeout_s=config.sync_http_timeout_s,
    )


def wants_http(ctx: SyncContext, spec: PayloadSpec) -> bool:
    return ctx.bulk is not None and spec.url is not None and spec.size > 0


def start_http(ctx: SyncContext, window: Window, spec: PayloadSpec) -> None:
    """Fetch ``window``'s payload over HTTP in the background (once per update at a time)."""
    running = ctx.state.fetching.get(window.update_id)
    if running is not None and not running.done():
        return
    task = asyncio.get_running_loop().create_task(
        fetch_then_finish(ctx, window, spec), name=f"bulk-{window.update_id}"
    )
    ctx.state.fetching[window.update_id] = task
    task.add_done_callback(lambda _: _forget(ctx, window.update_id, task))


async def fetch_then_finish(ctx: SyncContext, window: Window, spec: PayloadSpec) -> None:
    """Fetch what is missing over HTTP, then finish — or continue over MQTT chunks."""
    window.transport = "http"
    try:
        await _fetch_rounds(ctx, window, spec)
    except BulkUnavailable as exc:
        handlers.reject(ctx, "bulk_unavailable", exc.message)
    except OSError as exc:
        await handlers.abandon_download(ctx, window.update_id, exc)
        return
    window.transport = "mqtt"
    if window.update_id in ctx.state.windows:
        # Finishes when nothing is missing, else asks the broker for the rest.
        await handlers.request_window(ctx, window)


async def _fetch_rounds(ctx: SyncContext, window: Window, spec: PayloadSpec) -> None:
    assert ctx.bulk is not None and spec.url is not None

    async def store(index: int, data: bytes) -> bool:
        window.last_activity = time.monotonic()
        return await asyncio.to_thread(ctx.updater.accept_chunk, window.update_id, index, data)

    for _ in range(ATTEMPTS):
        missing = await asyncio.to_thread(ctx.updater.missing, window.update_id, window.total)
        if not missing or window.update_id not in ctx.state.windows:
            return
        report = await ctx.bulk.fetch(spec.url, spec, missing, store)
        for index in report.refused:
            handlers.reject(ctx, "integrity", f"chunk {index} from {spec.url} failed its hash")
        log.info(
            "payload bytes fetched over HTTP",
            extra={
                "update_id": window.update_id,
                "stored": report.stored,
                "refused": len(report.refused),
                "bytes": report.bytes,
                "requests": report.requests,
            },
        )
        if not report.refused:
            return


def _forget(ctx: SyncContext, update_id: str, task: asyncio.Task[None]) -> None:
    if ctx.state.fetching.get(update_id) is task:
        del ctx.state.fetching[update_id]


async def stop_fetches(ctx: SyncContext) -> None:
    """Cancel running HTTP fetches and close the client (chunks stored so far stay)."""
    tasks = list(ctx.state.fetching.values())
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if ctx.bulk is not None:
        await ctx.bulk.aclose()
