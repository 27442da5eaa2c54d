"""Holding the requested escalation rate on a live stream, from the scores alone.

The streams are the real thing: 2,000 digits resampled from the test split, scored by
the committed int8 edge model and its reference bank, clean and with pixel noise (which
moves the score distribution far from the one the card's threshold was fitted on).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.routing.rate import MIN_SCORES, RateController
from edge_agent.routing.scoring import target_rate
from edgeserve.wire.model_card import RouterPolicy
from edgeserve.wire.trust import trust_scores
from models.bank import load_bank
from models.calibrate import load_card, model_logits
from models.data import load_split

ARTIFACTS = Path(__file__).resolve().parents[2] / "models" / "artifacts"
STREAM, WARM_UP = 2000, 500


def _stream_scores(noise: float, seed: int = 1) -> tuple[np.ndarray, float]:
    """Trust scores of a resampled (optionally noisy) test stream, and the card threshold."""
    card = load_card(ARTIFACTS, "digits-edge")
    assert card.router is not None
    x, _ = load_split(ARTIFACTS, "test")
    rng = np.random.default_rng(seed)
    rows = x[rng.integers(0, len(x), STREAM)]
    if noise:
        rows = np.clip(rows + rng.normal(0, noise, rows.shape), 0, 1).astype(np.float32)
    logits = model_logits(ARTIFACTS, card, rows)
    bank = load_bank(ARTIFACTS, card)
    _, scores = trust_scores(logits, card.temperature, rows, bank, card.router.trust_weight)
    return scores, card.router.threshold


def _run(controller: RateController, scores: np.ndarray) -> np.ndarray:
    return np.array([bool(controller.route([float(score)])) for score in scores])


@pytest.fixture(scope="module")
def clean() -> tuple[np.ndarray, float]:
    return _stream_scores(0.0)


@pytest.fixture(scope="module")
def noisy() -> tuple[np.ndarray, float]:
    return _stream_scores(0.15)


@pytest.mark.parametrize("target", [0.05, 0.10, 0.20])
@pytest.mark.parametrize("stream", ["clean", "noisy"])
def test_the_realised_rate_after_500_requests_is_within_one_point_of_the_target(
    target, stream, request
):
    scores, start = request.getfixturevalue(stream)
    escalated = _run(RateController(target, 500, start), scores)
    assert abs(escalated[WARM_UP:].mean() - target) <= 0.01


def test_noise_moves_a_fixed_threshold_far_off_its_rate(clean, noisy):
    """Why the device must track the rate: the card's threshold, fitted for 10% on
    calibration, escalates a very different share of noisy digits."""
    (clean_scores, threshold), (noisy_scores, _) = clean, noisy
    assert (noisy_scores < threshold).mean() - (clean_scores < threshold).mean() > 0.05


def test_the_starting_threshold_holds_until_the_window_has_enough_scores():
    controller = RateController(0.1, 500, start=0.7)
    controller.route([0.5] * (MIN_SCORES - 1))
    assert controller.threshold == 0.7
    controller.route([0.5])
    assert controller.threshold != 0.7


def test_the_window_forgets_old_scores():
    controller = RateController(0.5, 100, start=0.5)
    controller.route(np.linspace(0.0, 0.2, 100).tolist())
    controller.route(np.linspace(0.8, 1.0, 100).tolist())
    assert 0.8 <= controller.threshold <= 1.0


def test_the_realised_rate_counts_the_window_only():
    controller = RateController(0.5, 10, start=1.0)
    controller.route([0.5] * 10)  # all escalate under the starting threshold
    assert controller.realised_rate == 1.0


def test_a_manual_policy_or_no_window_pins_the_threshold():
    pinned = RouterPolicy(threshold=0.9, target_kind="manual", target_value=0.9, rate_window=500)
    unwindowed = RouterPolicy(threshold=0.9, target_kind="escalation_rate", target_value=0.1)
    assert target_rate(pinned) is None and target_rate(unwindowed) is None


def test_an_accuracy_target_holds_the_lowest_calibration_rate_that_reached_it():
    curve = [(0.0, 0.96), (0.05, 0.98), (0.1, 0.99), (0.15, 0.99)]
    policy = RouterPolicy(
        threshold=0.9,
        target_kind="accuracy",
        target_value=0.985,
        rate_window=500,
        accuracy_curve=curve,
    )
    assert target_rate(policy) == 0.1
    unreachable = policy.model_copy(update={"target_value": 0.999})
    assert target_rate(unreachable) == 0.1  # the most accurate, at its lowest rate
