"""Latency as a histogram of log-spaced buckets: adds across processes, gives quantiles.

Counts per bucket are plain integers, so worker processes can each keep their own and a
store can sum them (``merge``, or ``counts`` added column-wise) without losing anything
a quantile needs. Buckets grow by 10% from 20 µs to about 60 s, so a quantile is known
within 10%, which is what a guardrail on p99 needs.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

FIRST_S = 20e-6
GROWTH = 1.1
BUCKETS = 156  # FIRST_S * GROWTH**155 ≈ 53 s; the last bucket also takes anything longer
EDGES: tuple[float, ...] = tuple(FIRST_S * GROWTH**i for i in range(BUCKETS))


class LatencyHistogram:
    """``counts[i]`` observations fell at or below ``EDGES[i]`` (and above the edge before)."""

    __slots__ = ("counts",)

    def __init__(self, counts: Sequence[int] | None = None) -> None:
        if counts is not None and len(counts) != BUCKETS:
            raise ValueError(f"a latency histogram has {BUCKETS} buckets, got {len(counts)}")
        self.counts = list(counts) if counts is not None else [0] * BUCKETS

    def observe(self, seconds: float) -> None:
        self.counts[min(bisect.bisect_left(EDGES, seconds), BUCKETS - 1)] += 1

    @property
    def total(self) -> int:
        return sum(self.counts)

    def merge(self, other: LatencyHistogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]

    def quantile(self, q: float) -> float | None:
        """The upper edge of the bucket holding the ``q`` quantile (never understated)."""
        if not 0.0 < q <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {q}")
        total = self.total
        if total == 0:
            return None
        wanted = math.ceil(q * total)
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= wanted:
                return EDGES[index]
        return EDGES[-1]  # pragma: no cover - seen reaches total above
