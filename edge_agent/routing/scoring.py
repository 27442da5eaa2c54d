"""Each row's router score under a policy, and which rows escalate.

The trust score needs the model's reference bank: it is read from the model's verified
slot once per served version and checked against the sha256 in the card before use. A
bank that is missing or fails the check is not used: the router falls back to the
top-class probability (and says so in each answer's ``score``), because a device that
cannot consult its bank must still answer and escalate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy.typing as npt

from edge_agent.routing.rate import RateController
from edgeserve.wire.confidence import confidence_scores
from edgeserve.wire.errors import IntegrityError, InvalidInput
from edgeserve.wire.model_card import ConfidenceScore, ModelCard, RouterPolicy, RouterScore
from edgeserve.wire.trust import TrustBank, trust_scores

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Decision:
    """Which rows escalate, every row's score under the policy, and the score used."""

    rows: list[int]
    scores: list[float]
    top: list[int]
    score: RouterScore = "max_probability"
    threshold: float = 0.0  # the threshold these rows were routed under
    window_rate: float | None = None  # the controller's realised rate, when it holds one


def decide(
    policy: RouterPolicy,
    logits: npt.NDArray[Any],
    temperature: float,
    features: npt.NDArray[Any] | None = None,
    bank: TrustBank | None = None,
    controller: RateController | None = None,
) -> Decision:
    """Score every row; rows under the threshold (the controller's, if it holds a rate)
    escalate."""
    if policy.score == "trust" and bank is not None and features is not None:
        top, values = trust_scores(logits, temperature, features, bank, policy.trust_weight)
        used: RouterScore = "trust"
    else:
        used = "max_probability" if policy.score == "trust" else policy.score
        top, values = confidence_scores(logits, temperature, _softmax_score(used))
    scores = values.tolist()
    rounded = [round(s, 6) for s in scores]
    if controller is None:
        rows = [i for i, score in enumerate(scores) if score < policy.threshold]
        return Decision(rows, rounded, top.tolist(), used, policy.threshold)
    threshold = controller.threshold
    rows = controller.route(scores)
    return Decision(rows, rounded, top.tolist(), used, threshold, controller.realised_rate)


def _softmax_score(score: RouterScore) -> ConfidenceScore:
    if score == "trust":
        raise InvalidInput("the trust score needs a reference bank")
    return score


class BankShelf:
    """The verified bank of each served model version, loaded on first use."""

    def __init__(self, store_root: Path) -> None:
        self._root = store_root
        self._banks: dict[str, tuple[str, str, TrustBank | None]] = {}
        self.failures = 0

    def bank(self, card: ModelCard, slot: str) -> TrustBank | None:
        """The card's bank from ``slot``, or None when the card names none or it is
        unusable (logged and counted once per version)."""
        spec = card.bank
        if spec is None:
            return None
        held = self._banks.get(card.name)
        if held is not None and held[:2] == (spec.sha256, slot):
            return held[2]
        loaded = self._load(card, slot)
        self._banks[card.name] = (spec.sha256, slot, loaded)
        return loaded

    def _load(self, card: ModelCard, slot: str) -> TrustBank | None:
        assert card.bank is not None
        path = self._root / card.name / slot / card.bank.file
        try:
            bank = TrustBank.from_bytes(path.read_bytes(), card.bank.sha256, card.bank.k)
        except (OSError, IntegrityError, InvalidInput) as exc:
            self.failures += 1
            reason = exc.message if isinstance(exc, IntegrityError | InvalidInput) else str(exc)
            log.error("reference bank not used", extra={"model": card.name, "reason": reason})
            return None
        if bank.features != card.bank.features:
            self.failures += 1
            log.error("reference bank has the wrong width", extra={"model": card.name})
            return None
        return bank


def target_rate(policy: RouterPolicy) -> float | None:
    """The escalation rate a policy asks the device to hold, or None for a fixed threshold.

    An accuracy target becomes the lowest calibration rate whose accuracy reaches it
    (the most accurate rate when none does): the device has no labels to measure
    accuracy live, but the calibration curve says which rate bought it.
    """
    if policy.rate_window <= 0 or policy.target_value is None:
        return None
    if policy.target_kind == "escalation_rate":
        return min(1.0, max(0.0, policy.target_value))
    if policy.target_kind == "accuracy" and policy.accuracy_curve:
        curve = sorted(policy.accuracy_curve)
        reached = [rate for rate, accuracy in curve if accuracy >= policy.target_value - 1e-12]
        if reached:
            return reached[0]
        return max(curve, key=lambda point: (point[1], -point[0]))[0]
    return None
