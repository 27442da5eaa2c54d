"""Waiting on a condition with a deadline: the one way the demo and the tests synchronize.

``wait_until(condition, timeout, what)`` calls ``condition`` until it returns something
truthy and returns that value, or raises ``DeadlineExceeded`` naming ``what``. Polling
is what these callers can do: the conditions are other processes' state (an HTTP
answer, a row in a registry, a file), not events this process could be woken by.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from edgeserve.wire.errors import DeadlineExceeded

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T | None],
    timeout: float,
    what: str = "the condition",
    interval: float = 0.05,
) -> T:
    """The first truthy value ``condition`` returns within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise DeadlineExceeded(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
    return value
