"""Which arms an experiment stops, from the counts of all its workers."""

from __future__ import annotations

import dataclasses

from cloud_gateway.experiments import Arm, ExperimentSpec, Settings, Tally
from cloud_gateway.experiments.decide import arms_to_stop
from edgeserve.stats import Guardrails

ARMS = (Arm("1", "split", 50), Arm("2", "split", 50), Arm("3", "shadow"))
SPEC = ExperimentSpec("exp", "m", ARMS)


def counts(requests: int, errors: int = 0, labelled: int = 0, correct: int = 0,
           compared: int = 0, agreed: int = 0, seconds: float = 0.002) -> Tally:  # fmt: skip
    tally = Tally(requests, errors, compared, agreed, 0, labelled, correct)
    for _ in range(requests):
        tally.latency.observe(seconds)
    return tally


def stopped(spec: ExperimentSpec, totals: dict[str, Tally]) -> dict[str, str]:
    return {arm.version: reason for arm, reason in arms_to_stop(spec, totals)}


def test_healthy_arms_run_on():
    totals = {"1": counts(5000, 10, 5000, 4900), "2": counts(5000, 12, 5000, 4890),
              "3": counts(5000, 0, 5000, 4880, 5000, 4950)}  # fmt: skip
    assert stopped(SPEC, totals) == {}


def test_an_error_rate_over_the_guardrail_stops_the_arm_at_once():
    reasons = stopped(SPEC, {"1": counts(60), "2": counts(60, errors=10)})
    assert reasons["2"].startswith("guardrail: error rate")


def test_the_guardrail_waits_for_enough_requests():
    assert stopped(SPEC, {"1": counts(10), "2": counts(10, errors=3)}) == {}


def test_a_slow_tail_stops_the_arm():
    spec = dataclasses.replace(SPEC, settings=Settings(Guardrails(max_p99_s=0.05)))
    reasons = stopped(spec, {"1": counts(100), "2": counts(100, seconds=0.2)})
    assert "p99" in reasons["2"]


def test_significantly_worse_accuracy_stops_the_arm():
    totals = {"1": counts(20_000, labelled=20_000, correct=19_600),
              "2": counts(20_000, labelled=20_000, correct=19_000)}  # fmt: skip
    assert stopped(SPEC, totals)["2"].startswith("accuracy significantly worse")


def test_a_shadow_that_disagrees_with_the_control_is_stopped():
    totals = {"1": counts(1000), "3": counts(1000, compared=1000, agreed=700)}
    assert stopped(SPEC, totals)["3"].startswith("agreement with the control")


def test_the_control_and_already_stopped_arms_are_never_stopped_again():
    spec = dataclasses.replace(SPEC, arms=(ARMS[0], dataclasses.replace(ARMS[1], stopped="x")))
    assert stopped(spec, {"1": counts(100, errors=100), "2": counts(100, errors=100)}) == {}
