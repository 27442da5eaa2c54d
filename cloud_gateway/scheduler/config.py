"""What a model's dynamic batcher is told (``BatchingConfig``) and what it reports back."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BatchingConfig:
    """Triton-style dynamic batching settings; ``max_queue_size`` 0 means unbounded."""

    max_batch_size: int
    max_queue_delay_s: float
    preferred_batch_sizes: list[int]
    max_queue_size: int
    default_priority_level: int
    enabled: bool = True
    max_concurrent_batches: int = 1
    # Work-conserving: with nothing running, waiting for company only adds latency;
    # under load, requests gather by themselves while the previous batch runs.
    dispatch_when_idle: bool = True

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if not (math.isfinite(self.max_queue_delay_s) and self.max_queue_delay_s >= 0):
            raise ValueError(f"max_queue_delay_s must be >= 0, got {self.max_queue_delay_s}")
        if any(not 1 <= size <= self.max_batch_size for size in self.preferred_batch_sizes):
            raise ValueError(
                f"preferred_batch_sizes must lie in 1..{self.max_batch_size}, "
                f"got {self.preferred_batch_sizes}"
            )
        if self.max_queue_size < 0:
            raise ValueError(f"max_queue_size must be >= 0, got {self.max_queue_size}")
        if self.default_priority_level < 1:
            raise ValueError(
                f"default_priority_level must be >= 1, got {self.default_priority_level}"
            )
        if self.max_concurrent_batches < 1:
            raise ValueError(
                f"max_concurrent_batches must be >= 1, got {self.max_concurrent_batches}"
            )


@dataclass
class BatchStats:
    """Counters since start; ``batch_sizes`` maps rows per executed batch to how many."""

    batches: int = 0
    requests: int = 0
    rows: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)
    queue_wait_total_s: float = 0.0
    queue_wait_max_s: float = 0.0
    expired: int = 0
    rejected: int = 0
    failed: int = 0
    queue_depth: int = 0
    running_batches: int = 0

    def record_batch(self, rows: int, queue_waits_s: list[float]) -> None:
        self.batches += 1
        self.requests += len(queue_waits_s)
        self.rows += rows
        self.batch_sizes[rows] = self.batch_sizes.get(rows, 0) + 1
        self.queue_wait_total_s += sum(queue_waits_s)
        self.queue_wait_max_s = max(self.queue_wait_max_s, *queue_waits_s)
