"""Inference runs off the event loop, and overload is refused at once instead of queued."""

import asyncio
import threading

import pytest

from edge_agent.executor import BoundedExecutor
from edgeserve.wire.errors import Unavailable


def test_work_runs_on_a_worker_thread_not_the_loop():
    executor = BoundedExecutor(workers=1, max_pending=4)

    async def main() -> str:
        return await executor.run(lambda: threading.current_thread().name)

    try:
        assert asyncio.run(main()).startswith("inference")
    finally:
        executor.shutdown()


def test_requests_beyond_max_pending_get_unavailable():
    executor = BoundedExecutor(workers=1, max_pending=1)
    release = threading.Event()

    async def main() -> None:
        first = asyncio.ensure_future(executor.run(release.wait, 10))
        while executor.pending < 1:
            await asyncio.sleep(0)
        with pytest.raises(Unavailable, match="overloaded"):
            await executor.run(lambda: None)
        release.set()
        assert await first is True
        assert executor.pending == 0

    try:
        asyncio.run(main())
    finally:
        release.set()
        executor.shutdown()
