"""Decisions: which arms to stop now, by guardrail or by an always-valid sequential test.

Called after every flush, by whichever worker flushed, over the counts of all workers.
Every candidate arm (every arm but the control) is checked against:

1. its guardrails (error rate, p99 latency): limits on the arm alone, acted on at once;
2. the control, by ``compare_proportions`` on error rate and on accuracy (once labels
   come back): a "worse" verdict stops the arm;
3. for a shadow, its agreement with the control against ``min_agreement``
   (``compare_to_rate``): significantly below it stops the shadow.

The tests are always valid, so looking after every flush does not inflate false stops
(``edgeserve bench sequential`` measures it). "Better" and "not worse" verdicts are
reported (``edgeserve gateway experiment show``), not acted on: promoting a version is
the operator's call.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloud_gateway.experiments.spec import Arm, ExperimentSpec
from cloud_gateway.experiments.tally import Tally
from edgeserve.stats import Comparison, Verdict, compare_proportions, compare_to_rate


@dataclass(frozen=True, slots=True)
class ArmVerdicts:
    errors: Comparison | None  # error rate vs the control (higher is worse)
    accuracy: Comparison | None  # accuracy vs the control
    agreement: Comparison | None  # shadow agreement vs min_agreement


def verdicts(spec: ExperimentSpec, arm: Arm, totals: dict[str, Tally]) -> ArmVerdicts:
    """The sequential tests of one candidate arm against the control."""
    if arm is spec.control:
        return ArmVerdicts(None, None, None)
    alpha = spec.settings.alpha
    own = totals.get(arm.version, Tally())
    control = totals.get(spec.control.version, Tally())
    errors = compare_proportions(
        control.error_rate, own.error_rate, higher_is_better=False, alpha=alpha
    )
    accuracy = compare_proportions(control.accuracy, own.accuracy, alpha=alpha)
    agreement = None
    if arm.role == "shadow":
        agreement = compare_to_rate(own.agreement, spec.settings.min_agreement, alpha=alpha)
    return ArmVerdicts(errors, accuracy, agreement)


def arms_to_stop(spec: ExperimentSpec, totals: dict[str, Tally]) -> list[tuple[Arm, str]]:
    """Running candidate arms that must stop now, each with the reason."""
    stops: list[tuple[Arm, str]] = []
    for arm in spec.arms[1:]:
        if arm.stopped is not None:
            continue
        reason = _reason(spec, arm, totals)
        if reason is not None:
            stops.append((arm, reason))
    return stops


def _reason(spec: ExperimentSpec, arm: Arm, totals: dict[str, Tally]) -> str | None:
    own = totals.get(arm.version, Tally())
    breached = spec.settings.guardrails.breached(own.requests, own.errors, own.latency)
    if breached is not None:
        return breached
    found = verdicts(spec, arm, totals)
    if found.errors is not None and found.errors.verdict is Verdict.WORSE:
        return _worse("error rate", found.errors)
    if found.accuracy is not None and found.accuracy.verdict is Verdict.WORSE:
        return _worse("accuracy", found.accuracy)
    if found.agreement is not None and found.agreement.verdict is Verdict.WORSE:
        return (
            f"agreement with the control significantly below "
            f"{spec.settings.min_agreement:.1%} (p = {found.agreement.p_value:.2g})"
        )
    return None


def _worse(what: str, comparison: Comparison) -> str:
    assert comparison.high is not None  # a verdict was reached, so the interval exists
    return (
        f"{what} significantly worse than the control "
        f"(difference {abs(comparison.high):.2%} at least, p = {comparison.p_value:.2g})"
    )
