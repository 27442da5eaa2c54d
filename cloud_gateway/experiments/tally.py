"""Per-arm counts: what a worker collects between flushes, and what the store sums.

The same type is both: a worker keeps one ``Tally`` per arm in memory (the request path
only adds to it), and every flush adds it to the arm's row in the experiments database
and starts a new one. Everything in it is a sum — counts, and latency as histogram
buckets — so N worker processes' flushes add up exactly, in any order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgeserve.stats import LatencyHistogram, Proportion


@dataclass(slots=True)
class Tally:
    requests: int = 0
    errors: int = 0
    compared: int = 0  # shadow rows compared with the control's answer
    agreed: int = 0
    dropped: int = 0  # mirrored requests dropped because the shadow queue was full
    labelled: int = 0  # rows whose label came back through feedback
    correct: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    COUNTS = ("requests", "errors", "compared", "agreed", "dropped", "labelled", "correct")

    @property
    def empty(self) -> bool:
        return not any(getattr(self, name) for name in self.COUNTS)

    def add(self, other: Tally) -> None:
        for name in self.COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.latency.merge(other.latency)

    @property
    def error_rate(self) -> Proportion:
        return Proportion(self.errors, self.requests)

    @property
    def agreement(self) -> Proportion:
        return Proportion(self.agreed, self.compared)

    @property
    def accuracy(self) -> Proportion:
        return Proportion(self.correct, self.labelled)
