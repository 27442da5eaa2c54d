"""The trust score: the k-NN share of the predicted class in the card's reference bank."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeserve.wire.errors import IntegrityError
from edgeserve.wire.model_card import CARD_SUFFIX, ModelCard
from edgeserve.wire.trust import TrustBank, bank_bytes, trust_scores
from models.bank import (
    WEIGHT_GRID,
    accuracy_at_rate,
    choose_trust_weight,
    load_bank,
    reduce_per_class,
    write_bank,
)
from models.calibrate import calibrate_card, cascade_split, load_card, split_scores
from models.data import make_split

ARTIFACTS = Path(__file__).resolve().parents[2] / "models" / "artifacts"


def _brute_force_share(bank_x, bank_y, x, predicted, k):
    distance = ((x[:, None, :] - bank_x[None]) ** 2).sum(axis=-1)
    nearest = np.argsort(distance, axis=1, kind="stable")[:, :k]
    return (bank_y[nearest] == predicted[:, None]).mean(axis=1)


def test_neighbour_share_matches_a_brute_force_search_one_row_and_batched():
    rng = np.random.default_rng(0)
    bank_x, bank_y = rng.random((300, 16), dtype=np.float32), rng.integers(0, 4, 300)
    x, predicted = rng.random((40, 16), dtype=np.float32), rng.integers(0, 4, 40)
    bank = TrustBank(bank_x, bank_y, k=5)
    expected = _brute_force_share(bank_x, bank_y, x, predicted, 5)
    np.testing.assert_array_equal(bank.neighbour_share(x, predicted), expected)
    one_by_one = [bank.neighbour_share(x[i : i + 1], predicted[i : i + 1])[0] for i in range(40)]
    np.testing.assert_array_equal(one_by_one, expected)


def test_a_training_digit_answered_as_its_own_label_is_trusted_and_as_another_is_not():
    split = make_split(0)
    bank = TrustBank(split.x_train, split.y_train, k=3)
    x, y = split.x_train[:50], split.y_train[:50]
    assert bank.neighbour_share(x, y).min() >= 2 / 3
    assert bank.neighbour_share(x, (y + 1) % 10).max() <= 1 / 3


def test_the_score_mixes_max_probability_and_the_share_by_the_weight():
    bank = TrustBank(np.eye(3, dtype=np.float32), np.array([0, 1, 2]), k=1)
    logits = np.array([[0.0, 0.0, 0.0]])  # uniform: p1 = 1/3, top class 0
    top, score = trust_scores(logits, 1.0, np.array([[1.0, 0.0, 0.0]]), bank, weight=0.25)
    assert top[0] == 0
    assert score[0] == pytest.approx(0.25 / 3 + 0.75)


def test_a_bank_whose_bytes_differ_from_the_card_is_refused():
    data = bank_bytes(np.zeros((4, 2)), np.arange(4))
    good = hashlib.sha256(data).hexdigest()
    assert TrustBank.from_bytes(data, good, 1).rows == 4
    altered = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(IntegrityError, match="does not match"):
        TrustBank.from_bytes(altered, good, 1)


def test_bank_files_are_byte_reproducible(tmp_path):
    split = make_split(0)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_bank(tmp_path / "a", split.x_train, split.y_train)
    again = write_bank(tmp_path / "b", split.x_train, split.y_train)
    assert first == again and first.rows == len(split.y_train)
    assert (tmp_path / "a" / first.file).read_bytes() == (tmp_path / "b" / again.file).read_bytes()


def test_the_committed_bank_is_the_seed_0_training_split_and_named_in_every_edge_card():
    split = make_split(0)
    for name in ("digits-edge", "digits-edge-fp32", "digits-edge-tflite"):
        card = ModelCard.load(ARTIFACTS / f"{name}{CARD_SUFFIX}")
        bank = load_bank(ARTIFACTS, card)
        assert bank.rows == len(split.y_train) and bank.features == 64
    np.testing.assert_array_equal(bank.labels, split.y_train)


def test_a_class_wise_cap_bounds_the_bank_and_keeps_every_class():
    split = make_split(0)
    x, y = reduce_per_class(split.x_train, split.y_train, 20, seed=1)
    assert len(y) == len(x) == 200 and np.bincount(y).tolist() == [20] * 10


def test_the_weight_is_chosen_from_the_grid_on_calibration_alone():
    card = load_card(ARTIFACTS, "digits-edge")
    data = cascade_split(ARTIFACTS, card, load_card(ARTIFACTS, "digits-cloud"), "calibration")
    share = load_bank(ARTIFACTS, card).neighbour_share(data.features, data.edge_logits.argmax(1))
    confidence = np.exp(data.edge_logits).max(1) / np.exp(data.edge_logits).sum(1)
    weight = choose_trust_weight(confidence, share, data.edge_correct, data.cloud_correct)
    assert weight in WEIGHT_GRID


def test_trust_ranks_the_seed_0_test_errors_better_than_max_probability():
    """Goal: at 10% escalation of the test split the cascade reaches >= 98.5% (the
    softmax score reaches 98.33%); the weight and threshold come from calibration."""
    card = load_card(ARTIFACTS, "digits-edge")
    assert card.router is not None and card.router.score == "trust"
    data = cascade_split(ARTIFACTS, card, load_card(ARTIFACTS, "digits-cloud"), "test")
    weight = card.router.trust_weight
    trust, _ = split_scores(ARTIFACTS, card, data, "trust", card.temperature, weight)
    softmax, _ = split_scores(ARTIFACTS, card, data, "max_probability", card.temperature, None)
    at = {
        name: accuracy_at_rate(scores, data.edge_correct, data.cloud_correct, 0.10)
        for name, scores in (("trust", trust), ("softmax", softmax))
    }
    assert at["trust"] >= 0.985 > at["softmax"]


def test_calibrating_for_trust_writes_the_weight_curve_and_window(tmp_path):
    folder = shutil.copytree(ARTIFACTS, tmp_path / "artifacts")
    card = calibrate_card(folder, "digits-edge", "digits-cloud", "trust", "escalation_rate", 0.1)
    router = card.router
    assert router is not None and router.score == "trust" and router.rate_window > 0
    assert router.trust_weight in WEIGHT_GRID
    edge_alone = 0.974074  # 263 of the 270 calibration digits
    assert router.accuracy_curve is not None and router.accuracy_curve[0] == (0.0, edge_alone)
    assert router.expected_escalation_rate == pytest.approx(0.1, abs=0.01)
