"""Confidence scores from temperature-scaled softmax, and the calibration measures."""

from itertools import pairwise

import numpy as np
import pytest

from edgeserve.wire.confidence import (
    SCORES,
    confidence_scores,
    expected_calibration_error,
    negative_log_likelihood,
    softmax,
    top_class_confidence,
)


def _logits(rows: int = 64, classes: int = 10, scale: float = 4.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, classes)).astype(np.float32) * scale


def test_top_class_confidence_equals_the_max_of_the_full_softmax():
    logits = _logits(32)
    for temperature in (1.0, 0.5, 2.5):
        top, confidence = top_class_confidence(logits, temperature)
        probs = softmax(logits, temperature)
        np.testing.assert_array_equal(top, probs.argmax(axis=1))
        np.testing.assert_allclose(confidence, probs.max(axis=1), rtol=1e-12)


def test_higher_temperature_lowers_confidence():
    logits = np.array([[4.0, 1.0, 0.0]])
    assert top_class_confidence(logits, 2.0)[1][0] < top_class_confidence(logits, 1.0)[1][0]


def test_huge_logits_do_not_overflow():
    _, confidence = top_class_confidence(np.array([[1e4, -1e4, 0.0]]))
    assert confidence[0] == 1.0


def test_max_probability_score_is_the_hot_path_top_class_confidence():
    logits = _logits()
    for temperature in (1.0, 1.7):
        top, score = confidence_scores(logits, temperature, "max_probability")
        expected_top, expected = top_class_confidence(logits, temperature)
        np.testing.assert_array_equal(top, expected_top)
        np.testing.assert_array_equal(score, expected)


def test_margin_and_entropy_scores_match_their_definitions_on_the_full_softmax():
    logits = _logits()
    probs = np.sort(softmax(logits, 1.5), axis=1)[:, ::-1]
    _, margin = confidence_scores(logits, 1.5, "margin")
    np.testing.assert_allclose(margin, probs[:, 0] - probs[:, 1], atol=1e-12)
    _, entropy = confidence_scores(logits, 1.5, "entropy")
    expected = 1 + (probs * np.log(probs)).sum(axis=1) / np.log(probs.shape[1])
    np.testing.assert_allclose(entropy, expected, atol=1e-12)


@pytest.mark.parametrize("score", SCORES)
def test_every_score_lies_in_the_unit_interval_even_for_extreme_logits(score):
    logits = np.concatenate(
        [_logits(), [[1e4, -1e4, 0.0, 0, 0, 0, 0, 0, 0, 0]], np.zeros((1, 10)), [[5.0] * 10]]
    )
    top, values = confidence_scores(logits, 1.0, score)
    assert top.shape == values.shape == (len(logits),)
    assert np.all(np.isfinite(values)) and np.all((values >= 0) & (values <= 1))


@pytest.mark.parametrize("score", SCORES)
def test_every_score_falls_as_the_temperature_rises(score):
    logits = _logits()
    values = [confidence_scores(logits, t, score)[1] for t in (0.5, 1.0, 2.0, 4.0)]
    assert all(np.all(hotter < colder) for colder, hotter in pairwise(values))


@pytest.mark.parametrize("score", SCORES)
def test_every_score_rises_as_the_top_logit_pulls_ahead(score):
    logits = np.array([[gap, 0.0, -1.0, -2.0] for gap in (0.1, 0.5, 1.0, 2.0, 4.0, 8.0)])
    _, values = confidence_scores(logits, 1.0, score)
    assert np.all(np.diff(values) > 0)


def test_margin_and_entropy_are_zero_for_a_uniform_answer_and_one_for_a_certain_one():
    uniform, certain = np.zeros((1, 10)), np.array([[1e3] + [0.0] * 9])
    for score in ("margin", "entropy"):
        assert confidence_scores(uniform, 1.0, score)[1][0] == pytest.approx(0.0, abs=1e-12)
        assert confidence_scores(certain, 1.0, score)[1][0] == pytest.approx(1.0, abs=1e-12)


def test_an_unknown_score_is_refused():
    with pytest.raises(ValueError, match="unknown confidence score"):
        confidence_scores(_logits(), 1.0, "vibes")  # type: ignore[arg-type]


def test_ece_is_the_weighted_gap_between_confidence_and_accuracy_per_bin():
    # Two rows at confidence 0.9 (one right, one wrong) and two at 0.6 (both right).
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 1, 0, 0])
    expected = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6)
    assert expected_calibration_error(probs, labels, bins=10) == pytest.approx(expected)


def test_ece_is_small_when_labels_are_drawn_from_the_predicted_probabilities():
    rng = np.random.default_rng(1)
    probs = softmax(rng.normal(size=(20000, 10)) * 3)
    labels = (probs.cumsum(axis=1) < rng.random((len(probs), 1))).sum(axis=1)
    assert expected_calibration_error(probs, labels) < 0.02


def test_nll_is_the_mean_negative_log_probability_of_the_label():
    logits, labels = _logits(), np.arange(64) % 10
    probs = softmax(logits, 2.0)
    expected = -np.mean(np.log(probs[np.arange(64), labels]))
    assert negative_log_likelihood(logits, labels, 2.0) == pytest.approx(expected, rel=1e-12)


def test_nll_stays_finite_for_a_confident_mistake():
    assert negative_log_likelihood(np.array([[1e4, 0.0]]), np.array([1])) == pytest.approx(1e4)
