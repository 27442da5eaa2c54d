"""Triton's schedule-policy request parameters, checked once for every tier.

``priority``: a non-negative integer, 1 the highest, 0 (the default) meaning the model's
default priority; Triton carries it as a uint64. ``timeout``: how long the request may
wait to be scheduled, in microseconds; a positive, finite number, at most
``MAX_TIMEOUT_US``. NaN, infinity, booleans and strings are refused: over REST they
cannot arrive (JSON has no NaN; the codec refuses the literals), over gRPC a
``double_param`` can carry any of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgeserve.wire.errors import InvalidInput, shown

MAX_PRIORITY = 2**64 - 1
# One day. Longer is no deadline at all, and grpc turns a timeout past ~2**33 seconds
# into a deadline that has already passed.
MAX_TIMEOUT_US = 86_400 * 10**6


@dataclass(frozen=True, slots=True)
class SchedulePolicy:
    """What a request asked of the scheduler; ``timeout_s`` is None when it set none."""

    priority: int = 0
    timeout_s: float | None = None


def schedule_policy(parameters: Mapping[str, Any]) -> SchedulePolicy:
    """The request's ``priority`` and ``timeout`` parameters, or InvalidInput saying why."""
    priority = parameters.get("priority", 0)
    if not _is_int(priority) or not 0 <= priority <= MAX_PRIORITY:
        raise InvalidInput(
            f"parameter 'priority' must be an integer from 0 to {MAX_PRIORITY}, "
            f"got {shown(priority)}"
        )
    timeout_us = parameters.get("timeout")
    if timeout_us is None:
        return SchedulePolicy(priority)
    if not (_is_int(timeout_us) or isinstance(timeout_us, float)) or not (
        math.isfinite(timeout_us) and 0 < timeout_us <= MAX_TIMEOUT_US
    ):
        raise InvalidInput(
            f"parameter 'timeout' must be positive microseconds, at most {MAX_TIMEOUT_US}, "
            f"got {shown(timeout_us)}"
        )
    return SchedulePolicy(priority, float(timeout_us) / 1e6)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
