"""A bounded executor: inference runs on worker threads, never on the event loop.

Requests beyond ``max_pending`` (running plus waiting) are refused at once with 503
rather than queued without limit, so overload shows up as a clear error and not as
unbounded memory and latency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from edgeserve.wire.errors import Unavailable

T = TypeVar("T")


class BoundedExecutor:
    def __init__(self, workers: int, max_pending: int, name: str = "inference") -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._max_pending = max_pending
        self._pending = 0

    @property
    def pending(self) -> int:
        return self._pending

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        if self._pending >= self._max_pending:
            raise Unavailable(f"agent overloaded: {self._pending} requests pending")
        self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self._pending -= 1

    async def run_unbounded(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the workers outside the pending bound: for health probes, which
        must see a wedged worker, not a full queue."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
