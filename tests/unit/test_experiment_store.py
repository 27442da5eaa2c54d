"""The experiments database: what the CLI creates and stops, and counts that add up
across processes, with labels scored against the arm that answered."""

from __future__ import annotations

import time

import pytest

from cloud_gateway.experiments import (
    Arm,
    ExperimentConflict,
    ExperimentNotFound,
    ExperimentSpec,
    ExperimentStore,
    Tally,
)
from cloud_gateway.experiments.store import RETENTION_S, Prediction
from edgeserve.wire.errors import InvalidInput

ARMS = (Arm("1", "split", 50), Arm("2", "split", 50), Arm("3", "shadow"))


@pytest.fixture
def store(tmp_path):
    with ExperimentStore(tmp_path / "experiments.db") as opened:
        opened.create(ExperimentSpec("exp", "digits-cloud", ARMS, key_parameter="user"))
        yield opened


def tally(requests: int, errors: int = 0, seconds: float = 0.002) -> Tally:
    counts = Tally(requests=requests, errors=errors)
    for _ in range(requests):
        counts.latency.observe(seconds)
    return counts


def test_a_created_experiment_reads_back_as_it_was_made(store):
    experiment = store.get("exp")
    assert experiment.status == "running"
    assert experiment.spec == ExperimentSpec("exp", "digits-cloud", ARMS, key_parameter="user")


def test_a_second_running_experiment_on_a_model_is_refused(store):
    other = ExperimentSpec("exp2", "digits-cloud", ARMS)
    with pytest.raises(ExperimentConflict, match="already has a running experiment"):
        store.create(other)
    store.stop("exp", "done")
    store.create(other)  # once the first stopped, the model is free
    assert [e.spec.name for e in store.running()] == ["exp2"]


def test_a_duplicate_name_is_refused(store):
    store.stop("exp", "done")
    with pytest.raises(ExperimentConflict, match="named 'exp' already exists"):
        store.create(ExperimentSpec("exp", "other-model", ARMS))


def test_an_unknown_experiment_is_not_found(store):
    with pytest.raises(ExperimentNotFound):
        store.get("nope")


def test_two_processes_flushes_add_up(store, tmp_path):
    with ExperimentStore(tmp_path / "experiments.db") as other_worker:
        store.flush({("exp", "1"): tally(30, 1)}, [])
        other_worker.flush({("exp", "1"): tally(20, 2, 0.5)}, [])
    total = store.totals("exp")["1"]
    assert (total.requests, total.errors, total.latency.total) == (50, 3, 50)
    assert total.latency.quantile(0.99) >= 0.5  # the slow worker's tail is kept


def test_labels_score_every_arm_that_answered_the_request(store):
    store.flush(
        {},
        [Prediction("r1", "exp", "1", ["7", "3"]), Prediction("r1", "exp", "3", ["7", "1"])],
    )
    assert store.feedback("exp", "r1", ["7", "3"]) == 2
    store.settle()
    totals = store.totals("exp")
    assert (totals["1"].labelled, totals["1"].correct) == (2, 2)
    assert (totals["3"].labelled, totals["3"].correct) == (2, 1)


def test_a_label_that_arrives_before_the_answer_is_flushed_is_scored_later(store):
    assert store.feedback("exp", "r2", ["4"]) == 0
    store.flush({}, [Prediction("r2", "exp", "2", ["4"])])
    store.settle()
    assert store.totals("exp")["2"].correct == 1


def test_each_answer_is_scored_once(store):
    store.flush({}, [Prediction("r3", "exp", "1", ["4"])])
    store.feedback("exp", "r3", ["4"])
    store.settle()
    store.settle()
    assert store.totals("exp")["1"].labelled == 1


def test_feedback_with_the_wrong_number_of_labels_is_refused(store):
    store.flush({}, [Prediction("r4", "exp", "1", ["4", "5"])])
    with pytest.raises(InvalidInput, match="had 2 rows"):
        store.feedback("exp", "r4", ["4"])


def test_unmatched_predictions_are_forgotten_after_retention(store):
    store.flush({}, [Prediction("old", "exp", "1", ["4"])])
    store.settle(now=time.time() + RETENTION_S + 1)
    store.feedback("exp", "old", ["4"])
    store.settle()
    assert "1" not in store.totals("exp")


def test_the_first_reason_to_stop_an_arm_wins(store):
    assert store.stop_arm("exp", "2", "guardrail: error rate")
    assert not store.stop_arm("exp", "2", "accuracy worse")
    assert store.get("exp").spec.arm("2").stopped == "guardrail: error rate"
