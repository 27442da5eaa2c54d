"""An always-valid sequential test for proportions: the normal mixture SPRT (mSPRT).

A fixed-horizon test is valid only if it is looked at once, at a sample size fixed in
advance; checking it after every batch and stopping at the first "significant" result
inflates false alarms far past alpha. The mixture SPRT (Robbins 1970; as used for A/B
tests by Johari, Pekelis and Walsh, "Always valid inference", 2017) does not: with the
estimate ``d`` of a difference, its variance ``V`` and a normal mixing prior of scale
``tau`` on the true difference, the likelihood ratio against "no difference" is

    Λ = sqrt(V / (V + τ²)) · exp(d² τ² / (2 V (V + τ²)))

and P(Λ ever reaches 1/alpha | no difference) <= alpha, however many times it is computed. The
matching confidence sequence, d ± half_width(V), covers the true difference at every
check at once with probability >= 1 - alpha; its p-value is the running minimum of 1/Λ.
The normal approximation needs some observations per side before it holds, hence
``min_trials``; rates are smoothed (Agresti-Caffo, +1/+2) so that an arm with no
errors yet does not claim zero variance.

``tau`` is the size of difference the test is tuned to find fastest (it still finds any
size); the default suits differences of a few points on rates near 90%.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from edgeserve.stats.proportions import Proportion

DEFAULT_ALPHA = 0.05
DEFAULT_TAU = 0.02
DEFAULT_MIN_TRIALS = 100


class Verdict(StrEnum):
    """What the counts say so far about candidate minus control (higher = better)."""

    UNDECIDED = "undecided"  # keep collecting
    WORSE = "worse"  # the whole confidence sequence is below zero
    NOT_WORSE = "not worse"  # it is above -margin (non-inferior), but not above zero
    BETTER = "better"  # it is above zero


@dataclass(frozen=True, slots=True)
class Comparison:
    """One look at the test: the difference, its always-valid interval and p-value."""

    difference: float | None  # candidate - control (or observed - rate), sign as "higher"
    low: float | None
    high: float | None
    p_value: float  # always valid: 1/Λ (capped at 1); a caller may keep the running min
    verdict: Verdict


def mixture_half_width(
    variance: float, alpha: float = DEFAULT_ALPHA, tau: float = DEFAULT_TAU
) -> float:
    """Half the width of the mSPRT confidence sequence at estimate variance ``variance``."""
    total = variance + tau * tau
    return math.sqrt(
        variance * total / (tau * tau) * (2 * math.log(1 / alpha) + math.log(total / variance))
    )


def mixture_p_value(difference: float, variance: float, tau: float = DEFAULT_TAU) -> float:
    """1/Λ for the normal-mixture likelihood ratio of ``difference`` against zero."""
    total = variance + tau * tau
    log_ratio = 0.5 * math.log(variance / total) + difference**2 * tau**2 / (2 * variance * total)
    return 1.0 if log_ratio <= 0 else math.exp(-log_ratio)


def compare_proportions(
    control: Proportion,
    candidate: Proportion,
    *,
    higher_is_better: bool = True,
    margin: float = 0.0,
    alpha: float = DEFAULT_ALPHA,
    tau: float = DEFAULT_TAU,
    min_trials: int = DEFAULT_MIN_TRIALS,
) -> Comparison:
    """Candidate's rate against control's (agreement, accuracy: higher is better; error
    rate, escalation rate: pass ``higher_is_better=False``). ``margin`` is how much worse
    still counts as "not worse" (non-inferiority)."""
    if min(control.trials, candidate.trials) < max(1, min_trials):
        return _undecided(control, candidate, higher_is_better)
    p_a, var_a = _smoothed(control)
    p_b, var_b = _smoothed(candidate)
    sign = 1.0 if higher_is_better else -1.0
    return _compare(sign * (p_b - p_a), var_a + var_b, margin, alpha, tau)


def compare_to_rate(
    observed: Proportion,
    rate: float,
    *,
    higher_is_better: bool = True,
    margin: float = 0.0,
    alpha: float = DEFAULT_ALPHA,
    tau: float = DEFAULT_TAU,
    min_trials: int = DEFAULT_MIN_TRIALS,
) -> Comparison:
    """One rate against a fixed one (a shadow's agreement with the primary against the
    agreement an operator requires, say)."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    if observed.trials < max(1, min_trials):
        return Comparison(None, None, None, 1.0, Verdict.UNDECIDED)
    p, variance = _smoothed(observed)
    sign = 1.0 if higher_is_better else -1.0
    return _compare(sign * (p - rate), variance, margin, alpha, tau)


def _compare(
    difference: float, variance: float, margin: float, alpha: float, tau: float
) -> Comparison:
    half = mixture_half_width(variance, alpha, tau)
    low, high = difference - half, difference + half
    if high < 0:
        verdict = Verdict.WORSE
    elif low > 0:
        verdict = Verdict.BETTER
    elif margin > 0 and low > -margin:
        verdict = Verdict.NOT_WORSE
    else:
        verdict = Verdict.UNDECIDED
    return Comparison(difference, low, high, mixture_p_value(difference, variance, tau), verdict)


def _smoothed(counts: Proportion) -> tuple[float, float]:
    """The Agresti-Caffo rate (+1 success, +2 trials) and the variance of its mean."""
    trials = counts.trials + 2
    p = (counts.successes + 1) / trials
    return p, p * (1 - p) / trials


def _undecided(control: Proportion, candidate: Proportion, higher_is_better: bool) -> Comparison:
    difference = None
    if control.rate is not None and candidate.rate is not None:
        sign = 1.0 if higher_is_better else -1.0
        difference = sign * (candidate.rate - control.rate)
    return Comparison(difference, None, None, 1.0, Verdict.UNDECIDED)
