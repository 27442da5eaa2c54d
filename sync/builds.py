"""Update payload builds off the sync core's thread: one worker process, with progress.

Building a delta of a 50 MB model takes 1-23 s (the level-17 tensor stream, then
applying every candidate once). On the core thread that is 1-23 s in which no device
message is handled, since the core is one thread by design (it owns the SQLite
connection). So the issuer hands a missing payload to :class:`PayloadBuilds`, which runs
:func:`build_into_store` in a worker process — a process, not a thread, because the
codec's numpy and Python stages hold the GIL — and says :class:`BuildPending`. The
worker reads the artifacts from the content-addressed store and writes the payload back
into it (atomic renames, so the core never sees half a file); the core polls for
finished builds on its tick and issues the updates that waited for them.

The worker is started with ``spawn``: forking a process that runs paho's and asyncio's
threads can copy a lock held mid-operation. Progress (stage, done, total) travels back
on a queue and is logged; :meth:`PayloadBuilds.progress` shows it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import queue
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from multiprocessing.queues import Queue
from pathlib import Path
from typing import TypeAlias

from edgeserve.wire.errors import Unavailable
from sync.artifacts import ArtifactStore, CachedPayload

__all__ = [
    "BuildKey",
    "BuildPending",
    "BuildProgress",
    "Finished",
    "PayloadBuilds",
    "build_into_store",
]

log = logging.getLogger(__name__)

# (base artifact sha256 or None for a full payload, new artifact sha256, tensor format)
BuildKey: TypeAlias = tuple[str | None, str, int]
ProgressEvent: TypeAlias = tuple[BuildKey, str, int, int]


class BuildPending(Unavailable):
    """The payload is being built in the worker; the update is issued when it is done."""

    def __init__(self, message: str, key: BuildKey) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True, slots=True)
class BuildProgress:
    """Where one build stands: ``stage`` is the step it is on, ``done`` of ``total``."""

    key: BuildKey
    stage: str
    done: int
    total: int
    started: float

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started


@dataclass(frozen=True, slots=True)
class Finished:
    """A build that ended: its payload and the stages it went through, or its error."""

    key: BuildKey
    payload: CachedPayload | None
    stages: tuple[str, ...] = ()
    error: str = ""


def build_into_store(
    store: ArtifactStore, key: BuildKey, report: Callable[[ProgressEvent], None] | None = None
) -> CachedPayload:
    """Build the smallest payload for ``key`` and store it with the pair's cache entry."""
    from edgeserve.wire.delta import build_payload

    base_sha, new_sha, tensor_format = key

    def progress(stage: str, done: int, total: int) -> None:
        if report is not None:
            report((key, stage, done, total))

    base = store.read_artifact(base_sha) if base_sha else None
    payload = build_payload(store.read_artifact(new_sha), base, tensor_format, progress)
    cached = CachedPayload(
        encoding=payload.encoding, sha256=store.put_payload(payload.data), size=len(payload.data)
    )
    store.remember_delta(base_sha, new_sha, cached, tensor_format)
    return cached


class _QueueSink:
    """Puts progress events on the worker's queue; a full queue drops one, never blocks."""

    def __init__(self, events: Queue[ProgressEvent]) -> None:
        self.events = events

    def __call__(self, event: ProgressEvent) -> None:
        with contextlib.suppress(queue.Full):
            self.events.put_nowait(event)


_worker_events: Queue[ProgressEvent] | None = None


def _init_worker(events: Queue[ProgressEvent]) -> None:
    global _worker_events  # the worker process's own handle on the queue it was given
    _worker_events = events


def _build_in_worker(store_root: Path, key: BuildKey) -> tuple[CachedPayload, tuple[str, ...]]:
    """The payload and its stages (the live events on the queue may arrive after it)."""
    stages: list[str] = []

    def report(event: ProgressEvent) -> None:
        stages.append(event[1])
        if _worker_events is not None:
            _QueueSink(_worker_events)(event)

    return build_into_store(ArtifactStore(store_root), key, report), tuple(stages)


class PayloadBuilds:
    """Builds payloads in one worker process; all methods are called from the core thread."""

    def __init__(self, store_root: Path, workers: int = 1) -> None:
        self.store_root = store_root
        self.workers = workers
        self._context = multiprocessing.get_context("spawn")
        self._events: Queue[ProgressEvent] = self._context.Queue(1024)
        self._pool: ProcessPoolExecutor | None = None
        self._running: dict[BuildKey, Future[tuple[CachedPayload, tuple[str, ...]]]] = {}
        self._progress: dict[BuildKey, BuildProgress] = {}

    def start(self, key: BuildKey) -> None:
        """Queue a build of ``key`` unless it is already running."""
        if key in self._running:
            return
        self._running[key] = self._executor().submit(_build_in_worker, self.store_root, key)
        self._progress[key] = BuildProgress(key, "queued", 0, 1, time.monotonic())
        log.info("payload build started", extra=_fields(key))

    def is_running(self, key: BuildKey) -> bool:
        return key in self._running

    def progress(self) -> list[BuildProgress]:
        """Every running build, with the last stage its worker reported."""
        self._drain()
        return [self._progress[key] for key in self._running]

    def finished(self) -> list[Finished]:
        """Builds that ended since the last call (each is reported once)."""
        self._drain()
        done = [key for key, future in self._running.items() if future.done()]
        out = []
        for key in done:
            future = self._running.pop(key)
            started = self._progress.pop(key).started
            error = future.exception()
            seconds = round(time.monotonic() - started, 3)
            if error is None:
                out.append(Finished(key, *future.result()))
                log.info("payload build done", extra={**_fields(key), "seconds": seconds})
            else:
                out.append(Finished(key, None, error=repr(error)))
                log.error("payload build failed", extra={**_fields(key), "error": repr(error)})
                if isinstance(error, BrokenProcessPool):  # the worker died: start a new one
                    self._discard_pool()
        return out

    def close(self) -> None:
        """Stop the worker, and any build it is running (no payload is half stored)."""
        self._discard_pool(stop_running=True)
        self._running.clear()
        self._events.close()
        self._events.join_thread()

    def _discard_pool(self, stop_running: bool = False) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if stop_running:
            # A build can take tens of seconds and shutdown would wait for it; its output
            # lands by atomic rename, so stopping it midway leaves no partial payload
            # under a content address (at most a temporary file in the store's tmp/).
            # (Python 3.14 has ProcessPoolExecutor.terminate_workers for this.)
            for process in list(pool._processes.values()):
                process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers, self._context, initializer=_init_worker, initargs=(self._events,)
            )
        return self._pool

    def _drain(self) -> None:
        while True:
            try:
                key, stage, done, total = self._events.get_nowait()
            except queue.Empty:
                return
            current = self._progress.get(key)
            if current is not None:
                self._progress[key] = replace(current, stage=stage, done=done, total=total)
                log.info(
                    "payload build progress",
                    extra={**_fields(key), "stage": stage, "done": done, "total": total},
                )


def _fields(key: BuildKey) -> dict[str, object]:
    base_sha, new_sha, tensor_format = key
    return {
        "base": (base_sha or "")[:12],
        "artifact": new_sha[:12],
        "tensor_format": tensor_format,
    }
