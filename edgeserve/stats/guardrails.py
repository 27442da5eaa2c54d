"""Guardrails: hard limits that stop an arm at once, with no test to wait for.

A sequential test decides whether a candidate is *better*; a guardrail stops one that
is plainly broken (failing requests, a slow tail) before the test has enough data to
say so. A guardrail looks only at the arm itself, after ``min_requests``, so that the
first slow request after a load (or one error out of three) does not trip it.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeserve.stats.latency import LatencyHistogram


@dataclass(frozen=True, slots=True)
class Guardrails:
    max_error_rate: float | None = 0.05
    max_p99_s: float | None = None
    min_requests: int = 50

    def breached(self, requests: int, errors: int, latency: LatencyHistogram) -> str | None:
        """Why the arm must stop now, or None."""
        if requests < self.min_requests:
            return None
        if self.max_error_rate is not None and errors / requests > self.max_error_rate:
            return (
                f"guardrail: error rate {errors / requests:.1%} > {self.max_error_rate:.1%}"
                f" ({errors} of {requests} requests)"
            )
        p99 = latency.quantile(0.99)
        if self.max_p99_s is not None and p99 is not None and p99 > self.max_p99_s:
            return f"guardrail: p99 latency {p99 * 1e3:.1f} ms > {self.max_p99_s * 1e3:.1f} ms"
        return None
