"""Statistics for decisions about models: proportions, latency, always-valid sequential tests.

Plain functions and small value types over *counts*, with no I/O and no clock, so that
any part that counts outcomes can decide with them: the gateway's experiments (one
version against another on live traffic) today, and a fleet rollout gate (a canary
cohort against the devices still on the old version) with the same calls.

- ``Proportion`` (successes out of trials) with its Wilson interval.
- ``compare_proportions`` / ``compare_to_rate``: a mixture sequential probability ratio
  test (mSPRT) whose confidence sequence and p-value stay valid however often they are
  looked at, so a caller may check after every batch and stop at the first verdict.
- ``LatencyHistogram``: log-spaced buckets that add across processes; quantiles from it.
- ``Guardrails``: hard limits (error rate, p99 latency) that stop an arm at once.
"""

from edgeserve.stats.guardrails import Guardrails
from edgeserve.stats.latency import LatencyHistogram
from edgeserve.stats.proportions import Proportion, wilson_interval
from edgeserve.stats.sequential import (
    DEFAULT_ALPHA,
    DEFAULT_TAU,
    Comparison,
    Verdict,
    compare_proportions,
    compare_to_rate,
    mixture_half_width,
)

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_TAU",
    "Comparison",
    "Guardrails",
    "LatencyHistogram",
    "Proportion",
    "Verdict",
    "compare_proportions",
    "compare_to_rate",
    "mixture_half_width",
    "wilson_interval",
]
