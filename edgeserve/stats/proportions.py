"""A proportion (successes out of trials) and its Wilson score interval."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist


@dataclass(frozen=True, slots=True)
class Proportion:
    """``successes`` out of ``trials``: agreements, correct answers, errors, escalations."""

    successes: int
    trials: int

    def __post_init__(self) -> None:
        if self.trials < 0 or not 0 <= self.successes <= self.trials:
            raise ValueError(f"need 0 <= successes <= trials, got {self.successes}/{self.trials}")

    @property
    def rate(self) -> float | None:
        return self.successes / self.trials if self.trials else None

    def __add__(self, other: Proportion) -> Proportion:
        return Proportion(self.successes + other.successes, self.trials + other.trials)

    def interval(self, confidence: float = 0.95) -> tuple[float, float] | None:
        return wilson_interval(self.successes, self.trials, confidence)


def wilson_interval(
    successes: int, trials: int, confidence: float = 0.95
) -> tuple[float, float] | None:
    """The Wilson score interval: unlike p ± z·se it stays inside [0, 1] and does not
    collapse to a point at 0 or 100% (an arm with no errors yet is not "0% for sure")."""
    if trials == 0:
        return None
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)
