"""Dynamic batching for one model: fair-queued requests, concatenated rows, one call.

Requests wait in a ``FairQueue`` (cost = rows), so one tenant's flood cannot starve the
others of batch room. A single dispatcher task forms a batch once a slot to run it is
free: it takes the first request in fair order, then keeps taking compatible ones until
the batch is full, or a preferred size is reached with nothing else waiting, or
``max_queue_delay_s`` has passed since the oldest request in it arrived. The batch runs on
the injected executor, never on the event loop, and each request gets back its own rows.

Only requests whose inputs share names, dtypes and trailing shapes are batched together;
the rest wait for a batch of their own kind, so a stray shape cannot fail its neighbours.
A tenant's own requests are never reordered, so a batch is filled from the heads of the
tenants' queues: one tenant alternating shapes gets small batches, not wrong ones.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, replace

from cloud_gateway.scheduler.config import BatchingConfig, BatchStats
from cloud_gateway.scheduler.fair_queue import FairQueue
from cloud_gateway.scheduler.stacking import (
    Execute,
    ShapeKey,
    Tensors,
    describe,
    execute_batch,
)
from edgeserve.wire.errors import (
    DeadlineExceeded,
    EdgeServeError,
    InternalError,
    InvalidInput,
    Unavailable,
)

log = logging.getLogger(__name__)

OnBatch = Callable[[int, list[float]], None]


@dataclass(eq=False)
class _Request:
    tenant: str
    weight: float
    priority: int
    inputs: Tensors
    rows: int
    shape_key: ShapeKey
    deadline: float | None
    enqueued_at: float
    future: asyncio.Future[Tensors]

    @property
    def cost(self) -> float:
        return float(self.rows)


class DynamicBatcher:
    """Batches one model's requests; all methods must be called from one event loop."""

    def __init__(
        self,
        execute: Execute,
        executor: Executor,
        config: BatchingConfig,
        *,
        on_batch: OnBatch | None = None,
        model: str = "model",
    ) -> None:
        self._execute = execute
        self._executor = executor
        self._config = config
        self._preferred = frozenset(config.preferred_batch_sizes)
        self._on_batch = on_batch
        self._model = model
        self._queue: FairQueue[_Request] = FairQueue(config.default_priority_level)
        self._forming: list[_Request] = []
        self._arrival = asyncio.Event()
        self._slots = asyncio.Semaphore(config.max_concurrent_batches)
        self._running: set[asyncio.Task[None]] = set()
        self._dispatcher: asyncio.Task[None] | None = None
        self._closed = False
        self._stats = BatchStats()

    @property
    def queue_depth(self) -> int:
        """Requests admitted but not yet handed to the executor."""
        return len(self._queue) + sum(1 for r in self._forming if not r.future.done())

    @property
    def stats(self) -> BatchStats:
        """A snapshot: later batches do not change the object returned."""
        return replace(
            self._stats,
            batch_sizes=dict(self._stats.batch_sizes),
            queue_depth=self.queue_depth,
            running_batches=len(self._running),
        )

    def start(self) -> None:
        if self._dispatcher is not None or self._closed:
            raise RuntimeError(f"batcher for {self._model} was already started")
        self._dispatcher = asyncio.get_running_loop().create_task(
            self._dispatch_loop(), name=f"batcher-{self._model}"
        )
        self._dispatcher.add_done_callback(self._dispatcher_done)

    async def stop(self) -> None:
        """Refuse new work, fail everything still queued, let running batches finish."""
        self._closed = True
        dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            dispatcher.cancel()
            # wait() rather than await: a cancel of stop() itself must not be swallowed.
            await asyncio.wait([dispatcher])
        self._fail_waiting(Unavailable(f"{self._model}: shutting down"))
        if self._running:
            await asyncio.wait(list(self._running))

    async def submit(
        self,
        tenant: str,
        weight: float,
        inputs: Tensors,
        priority: int = 0,
        deadline: float | None = None,
    ) -> Tensors:
        """Queue one request (axis 0 of every input is its rows) and await its outputs.

        ``deadline`` is a ``time.monotonic()`` instant; past it the request gets
        ``DeadlineExceeded`` and, if it had not been handed to the executor, never runs.
        """
        if self._closed or self._dispatcher is None:
            raise Unavailable(f"{self._model}: shutting down or not started")
        if not (math.isfinite(weight) and weight > 0):
            raise InvalidInput(f"tenant weight must be a positive number, got {weight}")
        if priority < 0:
            raise InvalidInput(f"priority must be >= 0, got {priority}")
        rows, shape_key = describe(inputs, self._config.max_batch_size)
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            self._stats.expired += 1
            raise DeadlineExceeded(f"{self._model}: deadline passed before the request queued")
        limit = self._config.max_queue_size
        if limit and self.queue_depth >= limit:
            self._stats.rejected += 1
            raise Unavailable(f"{self._model}: queue full ({limit} requests waiting)")
        future: asyncio.Future[Tensors] = asyncio.get_running_loop().create_future()
        request = _Request(tenant, weight, priority, inputs, rows, shape_key, deadline, now, future)
        self._queue.push(request)
        self._arrival.set()
        try:
            if deadline is None:
                return await future
            async with asyncio.timeout(deadline - now):
                return await future
        except TimeoutError:
            # Awaiting the future inside the timeout cancelled it, so the dispatcher skips it.
            self._queue.remove(request)
            self._stats.expired += 1
            waited = time.monotonic() - now
            raise DeadlineExceeded(f"{self._model}: deadline passed after {waited:.3f}s") from None
        except asyncio.CancelledError:
            self._queue.remove(request)
            raise

    async def _dispatch_loop(self) -> None:
        while True:
            # Take a slot before any request: while all slots are busy, requests keep
            # accumulating in the fair queue, which is what makes batches grow under load.
            await self._slots.acquire()
            try:
                batch = await self._form_batch()
            except BaseException:
                self._slots.release()
                raise
            if batch:
                self._launch(batch)
            else:
                self._slots.release()

    async def _form_batch(self) -> list[_Request]:
        while not self._take(None):
            await self._wait_for_arrival(None)
        if self._config.enabled:
            await self._fill()
        batch, self._forming = self._forming, []
        # A request can expire while the batch waits for company; it must not run then.
        now = time.monotonic()
        live = []
        for request in batch:
            if request.deadline is not None and request.deadline <= now:
                self._expire(request)
            elif not request.future.done():
                live.append(request)
        return live

    async def _fill(self) -> None:
        config = self._config
        first = self._forming[0]
        rows = first.rows
        close_at = first.enqueued_at + config.max_queue_delay_s

        def fits(request: _Request) -> bool:
            return (
                request.shape_key == first.shape_key
                and rows + request.rows <= config.max_batch_size
            )

        while rows < config.max_batch_size:
            if self._take(fits):
                joined = self._forming[-1]
                rows += joined.rows
                close_at = min(close_at, joined.enqueued_at + config.max_queue_delay_s)
                continue
            # Whoever is still queued cannot join this batch; holding it back for more
            # company would only delay them.
            if len(self._queue) or rows in self._preferred:
                return
            if config.dispatch_when_idle and not self._running:
                return
            remaining = close_at - time.monotonic()
            if remaining <= 0 or not await self._wait_for_arrival(remaining):
                return

    def _take(self, accept: Callable[[_Request], bool] | None) -> bool:
        """Move the next acceptable live request into the forming batch."""
        while (request := self._queue.pop(accept)) is not None:
            if request.future.done():
                continue
            if request.deadline is not None and request.deadline <= time.monotonic():
                self._expire(request)
                continue
            self._forming.append(request)
            return True
        return False

    async def _wait_for_arrival(self, timeout: float | None) -> bool:
        # Safe to clear here: callers checked the queue with no await in between.
        self._arrival.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._arrival.wait()
        except TimeoutError:
            return False
        return True

    def _launch(self, batch: list[_Request]) -> None:
        now = time.monotonic()
        waits = [now - r.enqueued_at for r in batch]
        rows = sum(r.rows for r in batch)
        self._stats.record_batch(rows, waits)
        if self._on_batch is not None:
            try:
                self._on_batch(rows, waits)
            except Exception:
                # A metrics hook must never take the scheduler down with it.
                log.exception("on_batch hook failed", extra={"model": self._model})
        loop = asyncio.get_running_loop()
        # Handed to the executor here, not in the task: the model starts now, a loop
        # iteration sooner, which is most of a small model's queueing at low load.
        work = loop.run_in_executor(
            self._executor, execute_batch, self._execute, [r.inputs for r in batch]
        )
        task = loop.create_task(self._run(batch, work))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Request], work: asyncio.Future[list[Tensors]]) -> None:
        try:
            outputs = await work
        except asyncio.CancelledError:
            self._fail(batch, Unavailable(f"{self._model}: shutting down"))
            raise
        except EdgeServeError as exc:
            self._fail(batch, exc)
        except Exception as exc:
            log.exception("batch execution failed", extra={"model": self._model})
            error = InternalError(f"{self._model}: execution failed: {exc!r}")
            error.__cause__ = exc
            self._fail(batch, error)
        else:
            for request, output in zip(batch, outputs, strict=True):
                if not request.future.done():
                    request.future.set_result(output)
        finally:
            self._slots.release()

    def _expire(self, request: _Request) -> None:
        if not request.future.done():
            self._stats.expired += 1
            waited = time.monotonic() - request.enqueued_at
            request.future.set_exception(
                DeadlineExceeded(f"{self._model}: deadline passed after {waited:.3f}s queued")
            )

    def _fail(self, batch: list[_Request], error: EdgeServeError) -> None:
        for request in batch:
            if not request.future.done():
                self._stats.failed += 1
                request.future.set_exception(error)

    def _fail_waiting(self, error: EdgeServeError) -> None:
        waiting, self._forming = self._forming, []
        while (request := self._queue.pop()) is not None:
            waiting.append(request)
        self._fail(waiting, error)

    def _dispatcher_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        log.error("dispatcher crashed", exc_info=task.exception(), extra={"model": self._model})
        self._closed = True
        self._fail_waiting(InternalError(f"{self._model}: batcher stopped unexpectedly"))
