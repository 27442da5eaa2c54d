"""Temperature scaling and router thresholds, fitted on the calibration split only."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeserve.cli.calibrate import calibrate
from edgeserve.wire.confidence import expected_calibration_error, softmax
from edgeserve.wire.model_card import CARD_SUFFIX, ModelCard, file_sha256
from models.calibrate import (
    calibrate_card,
    candidate_thresholds,
    choose_threshold,
    fit_temperature,
    sweep,
)

ARTIFACTS = Path(__file__).resolve().parents[2] / "models" / "artifacts"


def _sampled(temperature: float, rows: int = 20000, seed: int = 0):
    """Logits whose labels follow softmax(logits / temperature): T is the true temperature."""
    rng = np.random.default_rng(seed)
    calibrated = rng.normal(size=(rows, 10)) * 2.5
    labels = (softmax(calibrated).cumsum(axis=1) < rng.random((rows, 1))).sum(axis=1)
    return calibrated * temperature, labels


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.0, 3.0])
def test_temperature_fitting_recovers_the_temperature_that_generated_the_labels(
    true_temperature,
):
    logits, labels = _sampled(true_temperature)
    assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.05)


def test_temperature_fitting_is_deterministic():
    logits, labels = _sampled(1.7, rows=500)
    assert fit_temperature(logits, labels) == fit_temperature(logits.copy(), labels.copy())


def test_temperature_fitting_stops_at_the_bound_when_every_answer_is_right():
    logits = np.eye(10)[np.arange(100) % 10] * 5
    assert fit_temperature(logits, np.arange(100) % 10, bounds=(0.05, 20)) == 0.05


def test_scaling_an_overconfident_model_lowers_its_calibration_error():
    logits, labels = _sampled(3.0)
    temperature = fit_temperature(logits, labels)
    before = expected_calibration_error(softmax(logits), labels)
    after = expected_calibration_error(softmax(logits, temperature), labels)
    assert before > 0.05 and after < 0.02


def _cascade(scores):
    """Edge right on the upper half of the scores, cloud always right."""
    edge = np.asarray(scores) >= np.median(scores)
    return edge, np.ones(len(scores), dtype=bool)


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.2])
def test_a_threshold_for_a_rate_escalates_that_share_of_continuous_scores(rate):
    scores = np.random.default_rng(2).random(1000)
    choice = choose_threshold(scores, *_cascade(scores), "escalation_rate", rate)
    assert choice.escalation_rate == pytest.approx(rate, abs=1e-9)
    assert np.mean(scores < choice.threshold) == choice.escalation_rate
    # Midway between two samples, not on one: a tiny shift moves no sample across.
    assert not np.any(scores == choice.threshold)


def test_ties_move_together_and_the_rate_actually_reached_is_reported():
    scores = np.array([0.5] * 50 + [0.9] * 50)
    low = choose_threshold(scores, *_cascade(scores), "escalation_rate", 0.2)
    high = choose_threshold(scores, *_cascade(scores), "escalation_rate", 0.3)
    assert (low.threshold, low.escalation_rate) == (0.0, 0.0)
    assert high.threshold == pytest.approx(0.7) and high.escalation_rate == 0.5


def test_scores_tied_at_one_stay_on_the_edge_and_the_threshold_stays_in_range():
    scores = np.concatenate([np.linspace(0.1, 0.9, 60), np.ones(40)])
    choice = choose_threshold(scores, *_cascade(scores), "escalation_rate", 0.9)
    assert choice.escalation_rate == 0.6 and 0.9 < choice.threshold <= 1.0
    assert candidate_thresholds(scores).max() < 1.0


def test_an_accuracy_target_takes_the_lowest_escalation_rate_that_meets_it():
    rng = np.random.default_rng(3)
    scores = rng.random(300)
    edge = rng.random(300) < scores  # less confident, more often wrong
    cloud = rng.random(300) < 0.97
    choice = choose_threshold(scores, edge, cloud, "accuracy", 0.9)
    everything = sweep(scores, edge, cloud, candidate_thresholds(scores))
    meeting = [point.escalation_rate for point in everything if point.accuracy >= 0.9]
    assert choice.target_met and choice.accuracy >= 0.9
    assert choice.escalation_rate == min(meeting)


def test_an_unreachable_accuracy_target_is_flagged_and_the_best_accuracy_returned():
    scores = np.linspace(0, 1, 100)
    edge, cloud = scores > 0.3, scores > 0.1
    choice = choose_threshold(scores, edge, cloud, "accuracy", 0.99)
    assert not choice.target_met
    assert choice.accuracy == pytest.approx(0.9) and choice.escalation_rate == pytest.approx(0.3)


def test_a_manual_target_is_the_threshold_itself():
    scores = np.linspace(0, 1, 11)
    choice = choose_threshold(scores, *_cascade(scores), "manual", 0.45)
    assert choice.threshold == 0.45 and choice.escalation_rate == pytest.approx(5 / 11)


def test_sweep_reports_rate_and_system_accuracy_for_each_threshold():
    scores = np.array([0.2, 0.4, 0.6, 0.8])
    edge = np.array([False, True, True, True])
    cloud = np.array([True, False, True, True])
    points = sweep(scores, edge, cloud, [0.0, 0.3, 0.5, 1.0])
    assert [p.escalation_rate for p in points] == [0.0, 0.25, 0.5, 1.0]
    assert [p.accuracy for p in points] == [0.75, 1.0, 0.75, 0.75]


def test_calibrate_card_writes_a_router_policy_and_leaves_the_artifact_untouched(tmp_path):
    folder = shutil.copytree(ARTIFACTS, tmp_path / "artifacts")
    path = folder / f"digits-edge{CARD_SUFFIX}"
    before = ModelCard.load(path)
    card = calibrate_card(folder, "digits-edge", "digits-cloud", "margin", "escalation_rate", 0.1)
    saved = ModelCard.load(path)
    assert saved == card
    assert card.router is not None and card.calibration is not None
    assert card.router.score == "margin" and card.router.escalation_model == "digits-cloud"
    assert card.router.expected_escalation_rate == pytest.approx(0.1, abs=0.01)
    assert card.temperature == card.calibration.temperature
    assert card.sha256 == before.sha256 == file_sha256(folder / card.file)
    assert (folder / card.file).read_bytes() == (ARTIFACTS / card.file).read_bytes()
    assert card.model_dump(exclude={"temperature", "calibration", "router"}) == before.model_dump(
        exclude={"temperature", "calibration", "router"}
    )


def test_calibrate_command_prints_calibration_and_test_figures(tmp_path, capsys):
    folder = shutil.copytree(ARTIFACTS, tmp_path / "artifacts")
    card = calibrate(folder, "digits-edge", "digits-cloud", "max_probability", "accuracy", 0.98)
    printed = capsys.readouterr().out
    assert card.router is not None and card.router.target_kind == "accuracy"
    for row in ("temperature", "ECE before / after", "escalation rate", "cascade accuracy"):
        assert row in printed
