"""The trust score's reference bank: built from the training split, shipped with the model.

The bank is the edge model's training examples in its feature space (the 64 input
pixels for digits) with their labels, capped per class so it stays small as data grows.
It is written beside the artifacts and named and hashed in every edge card; the router
scores a request by how many of its nearest bank examples share the predicted class.

Also the calibration side of the score: the weight of max-probability against the k-NN
share, chosen on the calibration split only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeserve.wire.confidence import confidence_scores, top_class_confidence
from edgeserve.wire.errors import IntegrityError
from edgeserve.wire.model_card import CARD_SUFFIX, ModelCard, ReferenceBank, RouterScore
from edgeserve.wire.trust import TrustBank, bank_bytes

BANK_FILE = "digits-edge.bank.npz"
DEFAULT_K = 3
# The class-wise cap a build applies: the digits have ~100 training examples per class,
# so it cuts nothing today; it bounds the bank (and the score's cost) as data grows.
DEFAULT_MAX_PER_CLASS = 500
# Weights tried for max-probability; 0 and 1 are left out on purpose: the k-NN share
# alone takes only k + 1 values (ties no threshold can split), p alone is the old score.
WEIGHT_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))
# The escalation rates a weight is judged at on the calibration split.
JUDGED_RATES = (0.05, 0.10, 0.15)


def reduce_per_class(
    x: npt.NDArray[Any], y: npt.NDArray[Any], max_per_class: int | None, seed: int = 0
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """At most ``max_per_class`` examples of each class, a seeded sample, in input order.

    A uniform sample per class keeps the class balance the k-NN vote depends on; the
    bank's size, and so the score's cost per request, stays bounded as data grows.
    """
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    if max_per_class is None:
        return x, y
    rng = np.random.default_rng(seed)
    keep: list[npt.NDArray[np.intp]] = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        if len(members) > max_per_class:
            members = np.sort(rng.choice(members, max_per_class, replace=False))
        keep.append(members)
    chosen = np.sort(np.concatenate(keep))
    return x[chosen], y[chosen]


def write_bank(
    out_dir: Path,
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    k: int = DEFAULT_K,
    max_per_class: int | None = DEFAULT_MAX_PER_CLASS,
    seed: int = 0,
) -> ReferenceBank:
    """Write the bank file into ``out_dir`` and return its card entry."""
    features, labels = reduce_per_class(x, y, max_per_class, seed)
    data = bank_bytes(features, labels)
    path = out_dir / BANK_FILE
    path.write_bytes(data)
    import hashlib

    return ReferenceBank(
        file=BANK_FILE,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        rows=len(labels),
        features=features.shape[1],
        k=k,
        max_per_class=max_per_class,
    )


def attach_bank(artifacts_dir: Path, model: str, bank: ReferenceBank) -> ModelCard:
    """Name the bank in ``model``'s card and save it; the artifact is untouched."""
    path = artifacts_dir / f"{model}{CARD_SUFFIX}"
    card = ModelCard.load(path).model_copy(update={"bank": bank})
    card.save(path)
    return card


def load_bank(artifacts_dir: Path, card: ModelCard) -> TrustBank:
    """The card's bank, verified against its sha256."""
    if card.bank is None:
        raise IntegrityError(f"model '{card.name}' names no reference bank")
    data = (artifacts_dir / card.bank.file).read_bytes()
    return TrustBank.from_bytes(data, card.bank.sha256, card.bank.k)


def router_scores(
    score: RouterScore,
    logits: npt.NDArray[Any],
    temperature: float,
    share: npt.NDArray[Any] | None,
    weight: float,
) -> npt.NDArray[np.float64]:
    """Every row's router score; ``share`` (the k-NN share) is needed for ``trust``."""
    if score != "trust":
        return confidence_scores(logits, temperature, score)[1]
    if share is None:
        raise ValueError("the trust score needs the k-NN share of every row")
    _, confidence = top_class_confidence(logits, temperature)
    combined: npt.NDArray[np.float64] = weight * confidence + (1.0 - weight) * share
    return combined


def neighbour_shares(bank: TrustBank, logits: npt.NDArray[Any], x: npt.NDArray[Any]) -> Any:
    """The k-NN share of each row's predicted class."""
    return bank.neighbour_share(x, np.asarray(logits).argmax(axis=1))


def accuracy_at_rate(
    scores: npt.NDArray[Any],
    edge_correct: npt.NDArray[Any],
    cloud_correct: npt.NDArray[Any],
    rate: float,
) -> float:
    """System accuracy when the ``rate`` share with the lowest scores escalates."""
    order = np.argsort(np.asarray(scores), kind="stable")
    escalated = np.zeros(len(order), dtype=bool)
    escalated[order[: round(rate * len(order))]] = True
    return float(np.where(escalated, cloud_correct, edge_correct).mean())


def rate_to_reach(
    scores: npt.NDArray[Any],
    edge_correct: npt.NDArray[Any],
    cloud_correct: npt.NDArray[Any],
    accuracy: float,
) -> float:
    """The smallest escalated share (lowest scores first) whose accuracy reaches ``accuracy``;
    1.0 when only escalating everything does."""
    order = np.argsort(np.asarray(scores), kind="stable")
    edge = np.asarray(edge_correct, dtype=np.float64)[order]
    cloud = np.asarray(cloud_correct, dtype=np.float64)[order]
    n = len(order)
    # correct[k] with the k lowest escalated: cloud on the first k, edge on the rest.
    correct = (
        np.concatenate([[0.0], np.cumsum(cloud)])
        + edge.sum()
        - np.concatenate([[0.0], np.cumsum(edge)])
    )
    reached = np.flatnonzero(correct / n >= accuracy - 1e-12)
    return float(reached[0] / n) if len(reached) else 1.0


def choose_trust_weight(
    confidence: npt.NDArray[Any],
    share: npt.NDArray[Any],
    edge_correct: npt.NDArray[Any],
    cloud_correct: npt.NDArray[Any],
) -> float:
    """The weight of max-probability that ranks the calibration split's errors best.

    Judged by the mean cascade accuracy at 5, 10 and 15% escalation; among equals, the
    weight needing the least escalation to reach the cloud's accuracy, then the one
    nearest 0.5 (an even mix is the least tuned to this one split).
    """
    cloud_accuracy = float(np.mean(cloud_correct))

    def merit(weight: float) -> tuple[float, float, float]:
        scores = weight * np.asarray(confidence) + (1.0 - weight) * np.asarray(share)
        mean = np.mean(
            [accuracy_at_rate(scores, edge_correct, cloud_correct, r) for r in JUDGED_RATES]
        )
        needed = rate_to_reach(scores, edge_correct, cloud_correct, cloud_accuracy)
        return round(float(mean), 9), -needed, -abs(weight - 0.5)

    return max(WEIGHT_GRID, key=merit)
