"""The rollout gate by sequential test: is the new version's cohort worse than the old one's?

A fixed-threshold gate (installs, soak time, an error rate under a limit) says nothing
about whether the new model is *better*. This gate compares, during each stage, the
devices that installed the rollout's version (the candidate cohort) with the devices of
the rollout still on the version they ran before (the control cohort), on three rates
from their telemetry:

- **agreement**: of the requests the edge escalated and the cloud answered, the share
  of rows where the edge's label matched the cloud's (higher is better);
- **escalation at the same threshold**: the share of scored requests whose router score
  is below the *control version's* calibrated threshold. Devices that hold an escalation
  rate move their threshold to keep the rate, so the ``escalated`` flag alone would hide
  a model that is less (or more) sure of itself; one fixed threshold does not (lower is
  better);
- **errors**: failed requests (lower is better).

Each rate goes through ``edgeserve.stats.compare_proportions``, the always-valid mixture
SPRT, so the gate may look at every tick without inflating false alarms. The stage is
halted (and the rollout rolled back) as soon as any rate is significantly worse; it passes
when every measured rate is "not worse" (its confidence sequence above ``-margin``) or
better. A rate neither cohort measured (no cloud configured, so no agreement; no router
score) does not hold the stage. Guardrails stop at once, before any test has data: the
candidate's error rate over ``max_error_rate`` after ``min_requests``.

Pure logic over counts: the registry counts (``Registry.cohort_counts``), the rollout
controller acts on the decision.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from edgeserve.stats import Comparison, Guardrails, LatencyHistogram, Proportion, Verdict
from edgeserve.stats import compare_proportions as compare
from edgeserve.wire.errors import InvalidInput
from sync.registry import Registry
from sync.views import CohortCounts, RolloutDeviceRow, RolloutRow

GateKind = Literal["threshold", "sequential"]
GATES: tuple[GateKind, ...] = ("threshold", "sequential")
Action = Literal["promote", "halt", "wait"]


@dataclass(frozen=True, slots=True)
class GateSettings:
    alpha: float = 0.05
    tau: float = 0.05
    min_requests: int = 100
    margin_agreement: float = 0.05
    margin_escalation: float = 0.05
    margin_errors: float = 0.01
    max_error_rate: float = 0.05

    def __post_init__(self) -> None:
        if not (0 < self.alpha < 1 and self.tau > 0 and self.min_requests >= 1):
            raise InvalidInput("gate_alpha in (0, 1), gate_tau > 0, gate_min_requests >= 1")
        margins = (self.margin_agreement, self.margin_escalation, self.margin_errors)
        if any(not 0 <= m < 1 for m in margins):
            raise InvalidInput("gate margins are fractions in [0, 1)")

    def metrics(self) -> dict[str, tuple[bool, float]]:
        """Each rate: (higher is better, non-inferiority margin)."""
        return {
            "agreement": (True, self.margin_agreement),
            "escalation": (False, self.margin_escalation),
            "errors": (False, self.margin_errors),
        }


@dataclass(frozen=True, slots=True)
class GateDecision:
    action: Action
    reason: str
    comparisons: dict[str, Comparison]
    control: CohortCounts
    candidate: CohortCounts

    def as_dict(self) -> dict[str, Any]:
        """The decision as stored with the rollout and shown to operators."""
        control, candidate = self.control.rates(), self.candidate.rates()
        return {
            "action": self.action,
            "reason": self.reason,
            "metrics": {
                name: {
                    "control": [control[name].successes, control[name].trials],
                    "candidate": [candidate[name].successes, candidate[name].trials],
                    "difference": _round(c.difference),
                    "low": _round(c.low),
                    "high": _round(c.high),
                    "p_value": _round(c.p_value),
                    "verdict": c.verdict.value,
                }
                for name, c in self.comparisons.items()
            },
        }


def look(
    registry: Registry, row: RolloutRow, devices: list[RolloutDeviceRow], settings: GateSettings
) -> GateDecision:
    """The gate's look at a rollout's current stage.

    Candidates: the rollout's devices that installed its version. Control: its devices
    not assigned yet, on the version most of them run. Both since the stage started, so
    each stage is judged on its own evidence.
    """
    candidates = [d.device_id for d in devices if d.state == "installed"]
    pending = [d for d in devices if d.state == "pending" and d.from_version]
    old = Counter(d.from_version for d in pending).most_common(1)
    control_version = old[0][0] if old else None
    threshold = _reference_threshold(registry, row.model, control_version)
    since = row.stage_started
    candidate = registry.cohort_counts(row.model, row.version, candidates, since, threshold)
    if control_version is None:
        return decide_alone(candidate, settings)
    controls = [d.device_id for d in pending if d.from_version == control_version]
    control = registry.cohort_counts(row.model, control_version, controls, since, threshold)
    return decide(control, candidate, settings)


def decide(control: CohortCounts, candidate: CohortCounts, settings: GateSettings) -> GateDecision:
    """Promote, halt or wait, from the two cohorts' counts (candidate against control)."""
    guard = Guardrails(max_error_rate=settings.max_error_rate, min_requests=settings.min_requests)
    breached = guard.breached(candidate.requests, candidate.errors, LatencyHistogram())
    comparisons = _compare(control, candidate, settings)
    if breached is not None:
        return GateDecision("halt", breached, comparisons, control, candidate)
    worse = [name for name, c in comparisons.items() if c.verdict is Verdict.WORSE]
    if worse:
        rates = (control.rates(), candidate.rates())
        reason = "; ".join(_describe(name, comparisons[name], *rates) for name in worse)
        return GateDecision("halt", f"sequential test: {reason}", comparisons, control, candidate)
    waiting = [name for name, c in comparisons.items() if _open(name, c, control, candidate)]
    if waiting or min(control.requests, candidate.requests) < settings.min_requests:
        reason = "collecting: " + (", ".join(waiting) or "requests") + " undecided"
        return GateDecision("wait", reason, comparisons, control, candidate)
    passed = ", ".join(
        f"{name} {c.verdict.value}"
        for name, c in comparisons.items()
        if c.verdict is not Verdict.UNDECIDED
    )
    return GateDecision("promote", f"sequential test: {passed}", comparisons, control, candidate)


def decide_alone(candidate: CohortCounts, settings: GateSettings) -> GateDecision:
    """No control cohort left (the last stage): only the guardrails can stop it."""
    guard = Guardrails(max_error_rate=settings.max_error_rate, min_requests=settings.min_requests)
    breached = guard.breached(candidate.requests, candidate.errors, LatencyHistogram())
    if breached is not None:
        return GateDecision("halt", breached, {}, CohortCounts(), candidate)
    reason = "no devices left on the old version: guardrails only"
    return GateDecision("promote", reason, {}, CohortCounts(), candidate)


def _reference_threshold(registry: Registry, model: str, version: str | None) -> float:
    """The control version's calibrated router threshold (-inf: none to compare at)."""
    found = registry.version(model, version) if version is not None else None
    router = found.card.router if found is not None else None
    return router.threshold if router is not None else float("-inf")


def _compare(
    control: CohortCounts, candidate: CohortCounts, settings: GateSettings
) -> dict[str, Comparison]:
    ours, theirs = candidate.rates(), control.rates()
    return {
        name: compare(
            theirs[name],
            ours[name],
            higher_is_better=higher,
            margin=margin,
            alpha=settings.alpha,
            tau=settings.tau,
            min_trials=settings.min_requests,
        )
        for name, (higher, margin) in settings.metrics().items()
    }


def _open(
    name: str, comparison: Comparison, control: CohortCounts, candidate: CohortCounts
) -> bool:
    """Whether this rate still holds the stage: undecided, and measured by a cohort."""
    if comparison.verdict is not Verdict.UNDECIDED:
        return False
    return control.rates()[name].trials > 0 or candidate.rates()[name].trials > 0


def _describe(
    name: str, c: Comparison, control: dict[str, Proportion], candidate: dict[str, Proportion]
) -> str:
    assert c.low is not None and c.high is not None
    ours, theirs = candidate[name], control[name]
    return (
        f"{name} {ours.rate:.1%} of {ours.trials} against {theirs.rate:.1%} of"
        f" {theirs.trials} is worse (gain's always-valid interval [{c.low:+.1%},"
        f" {c.high:+.1%}], p = {c.p_value:.2g})"
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
