"""The sequential rollout gate's decision from two cohorts' counts (sync.gate.decide)."""

from sync.gate import GateSettings, decide, decide_alone
from sync.views import CohortCounts

SETTINGS = GateSettings(min_requests=100)


def cohort(requests: int, errors: int = 0, below: float = 0.2, agreement: float = 0.8):
    """``requests`` one-row requests: a ``below`` share scored under the threshold,
    the same share escalated and answered with ``agreement``."""
    measured = round(requests * below)
    return CohortCounts(
        requests=requests,
        errors=errors,
        scored=requests - errors,
        below=round((requests - errors) * below),
        measured=measured,
        agreed=measured * agreement,
    )


def test_too_few_requests_wait():
    decision = decide(cohort(50), cohort(50), SETTINGS)
    assert decision.action == "wait"


def test_equal_cohorts_with_enough_evidence_are_not_worse_and_promote():
    decision = decide(cohort(20_000), cohort(20_000), SETTINGS)
    assert decision.action == "promote"
    verdicts = {name: c.verdict.value for name, c in decision.comparisons.items()}
    assert verdicts == {"agreement": "not worse", "escalation": "not worse", "errors": "not worse"}


def test_equal_cohorts_with_little_evidence_keep_collecting():
    decision = decide(cohort(400), cohort(400), SETTINGS)
    assert decision.action == "wait"
    assert "agreement" in decision.reason


def test_a_candidate_that_disagrees_with_the_cloud_is_halted():
    decision = decide(cohort(2000, agreement=0.8), cohort(2000, agreement=0.1), SETTINGS)
    assert decision.action == "halt"
    assert decision.reason.startswith("sequential test: agreement 10.0% of 400")


def test_a_candidate_that_escalates_more_at_the_same_threshold_is_halted():
    decision = decide(cohort(1000, below=0.2), cohort(1000, below=0.9), SETTINGS)
    assert decision.action == "halt"
    assert "escalation 90.0% of 1000 against 20.0% of 1000 is worse" in decision.reason


def test_a_candidate_that_escalates_less_is_better_not_worse():
    decision = decide(cohort(3000, below=0.4), cohort(3000, below=0.2), SETTINGS)
    assert decision.comparisons["escalation"].verdict.value == "better"


def test_the_error_guardrail_halts_before_any_test_could():
    decision = decide(cohort(10), cohort(100, errors=30), SETTINGS)
    assert decision.action == "halt"
    assert decision.reason.startswith("guardrail: error rate 30.0% > 5.0%")


def test_a_rate_no_cohort_measured_does_not_hold_the_stage():
    no_cloud = CohortCounts(requests=20_000, scored=20_000, below=4000)
    decision = decide(no_cloud, no_cloud, SETTINGS)
    assert decision.action == "promote"
    assert decision.comparisons["agreement"].verdict.value == "undecided"


def test_without_a_control_cohort_only_the_guardrails_judge():
    assert decide_alone(cohort(10), SETTINGS).action == "promote"
    assert decide_alone(cohort(200, errors=20), SETTINGS).action == "halt"


def test_the_stored_decision_names_each_rate_with_both_cohorts_counts():
    stored = decide(cohort(1000), cohort(1000, below=0.9), SETTINGS).as_dict()
    assert stored["action"] == "halt"
    assert stored["metrics"]["escalation"]["control"] == [200, 1000]
    assert stored["metrics"]["escalation"]["candidate"] == [900, 1000]
    assert stored["metrics"]["escalation"]["verdict"] == "worse"
