"""One turn of the learning loop on a real fleet: a gateway, Mosquitto (or the embedded
broker), the sync service and five agent processes; real distillation and ONNX Runtime."""

from __future__ import annotations

import pytest

from edgeserve.eval.learning_loop import LoopReport, LoopSettings, run_loop

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> LoopReport:
    return run_loop(tmp_path_factory.mktemp("loop"), LoopSettings(rollout_timeout_s=120))


def test_the_distilled_version_meets_the_accuracy_goals(report: LoopReport) -> None:
    goals = report.goals()
    assert goals["shift accuracy +3 points"]
    assert goals["clean accuracy -0.3 points at most"]
    assert goals["same cascade accuracy, fewer escalations"]
    assert report.hard_examples > 50


def test_the_sequential_gate_completes_the_distilled_rollout(report: LoopReport) -> None:
    assert report.good.state == "completed"
    assert report.good.counts["installed"] == 4
    assert [stage for stage, _ in report.good.stages] == [0, 1, 2]
    assert report.good.gate["0"]["action"] == "promote"
    assert report.good.failed == 0  # no user saw an error while versions switched


def test_the_sequential_gate_stops_the_worse_model_at_the_canary(report: LoopReport) -> None:
    assert report.bad.state == "halted"
    assert report.bad.reason.startswith("sequential test:")
    assert (report.bad.counts["rolled_back"], report.bad.counts["pending"]) == (1, 3)
