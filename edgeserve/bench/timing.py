"""Interleaved latency measurement: contenders take turns in blocks within one run."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.progress import Progress

Call = Callable[[int], object]


@dataclass
class Latencies:
    name: str
    seconds: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.seconds, q))

    @property
    def p50_us(self) -> float:
        return self.percentile(50) * 1e6

    @property
    def p99_us(self) -> float:
        return self.percentile(99) * 1e6

    def summary(self) -> dict[str, float]:
        return {
            "p50_us": round(self.p50_us, 2),
            "p99_us": round(self.p99_us, 2),
            "n": len(self.seconds),
        }


def interleaved(
    contenders: dict[str, Call],
    requests: int,
    block: int = 250,
    warmup: int = 50,
    progress: Progress | None = None,
) -> dict[str, Latencies]:
    """Time ``requests`` calls of each contender, alternating blocks of ``block`` calls.

    Each call gets the request index, so contenders can walk the same inputs.
    """

    results = {name: Latencies(name) for name in contenders}
    for call in contenders.values():
        for i in range(warmup):
            call(i)
    task = progress.add_task("timing", total=requests * len(contenders)) if progress else None
    done = 0
    while done < requests:
        size = min(block, requests - done)
        for name, call in contenders.items():
            samples = results[name].seconds
            for i in range(done, done + size):
                start = time.perf_counter()
                call(i)
                samples.append(time.perf_counter() - start)
            if progress is not None and task is not None:
                progress.advance(task, size)
        done += size
    if progress is not None and task is not None:
        progress.remove_task(task)
    return results


def machine_info(**versions: str) -> dict[str, Any]:
    """What a benchmark ran on, recorded with its figures; ``versions`` of the libraries."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        **versions,
        "date": time.strftime("%Y-%m-%d"),
        "loadavg_1m_at_start": os.getloadavg()[0],  # other work on the box skews figures
    }
