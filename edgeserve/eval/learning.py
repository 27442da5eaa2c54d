"""What one turn of the learning loop bought, measured offline on the fixed test split.

For each edge version (the served one, the distilled one, the deliberately worse one):
its accuracy on the clean test digits and on the same digits shifted one pixel (the
shift the fleet's hard examples came from), and the cascade on the shifted digits — the
edge answering where its router score is high, the cloud model elsewhere, ranked by the
version's own router score (its card's score, temperature and bank). Two cascade
figures: the accuracy at the served version's operating escalation rate, and the
escalation rate each version needs to reach the served version's cascade accuracy
("the same accuracy with fewer escalations"). ONNX Runtime on the int8 artifacts, the
models the devices run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeserve.wire.model_card import CARD_SUFFIX, ModelCard
from models.bank import accuracy_at_rate, rate_to_reach
from models.calibrate import CascadeSplit, model_logits, split_scores
from models.data import FloatArray, LabelArray, load_split
from models.shift import shift_right

CLOUD = "digits-cloud"


@dataclass(frozen=True, slots=True)
class VersionFigures:
    version: str
    clean_accuracy: float
    shift_accuracy: float
    cascade_accuracy: float  # on the shift, at the served version's escalation rate
    rate_for_served_accuracy: float  # escalated share needed to match the served cascade


@dataclass(frozen=True, slots=True)
class LoopFigures:
    rate: float  # the served version's operating escalation rate (its card's target)
    cloud_shift_accuracy: float
    served: VersionFigures
    others: dict[str, VersionFigures]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def loop_figures(source: Path, versions: dict[str, Path]) -> LoopFigures:
    """Figures for the served edge version in ``source`` and each folder in ``versions``
    (a name -> a folder holding ``digits-edge.card.json`` and what it names)."""
    x, y = load_split(source, "test")
    shifted = shift_right(x)
    cloud = ModelCard.load(source / f"{CLOUD}{CARD_SUFFIX}")
    cloud_correct = model_logits(source, cloud, shifted).argmax(axis=1) == y
    served_card = ModelCard.load(source / f"digits-edge{CARD_SUFFIX}")
    rate = _operating_rate(served_card)
    served_split, served_scores = _scored(source, served_card, shifted, y, cloud_correct)
    target = accuracy_at_rate(
        served_scores, served_split.edge_correct, served_split.cloud_correct, rate
    )

    def figures(folder: Path) -> VersionFigures:
        card = ModelCard.load(folder / f"digits-edge{CARD_SUFFIX}")
        split, scores = _scored(folder, card, shifted, y, cloud_correct)
        clean = model_logits(folder, card, x).argmax(axis=1) == y
        return VersionFigures(
            version=card.version,
            clean_accuracy=float(clean.mean()),
            shift_accuracy=float(split.edge_correct.mean()),
            cascade_accuracy=accuracy_at_rate(scores, split.edge_correct, cloud_correct, rate),
            rate_for_served_accuracy=rate_to_reach(
                scores, split.edge_correct, cloud_correct, target
            ),
        )

    return LoopFigures(
        rate=rate,
        cloud_shift_accuracy=float(cloud_correct.mean()),
        served=figures(source),
        others={name: figures(folder) for name, folder in versions.items()},
    )


def _operating_rate(card: ModelCard) -> float:
    router = card.router
    if router is None or router.expected_escalation_rate is None:
        raise ValueError(f"{card.name} v{card.version} has no calibrated router")
    return float(router.expected_escalation_rate)


def _scored(
    folder: Path, card: ModelCard, x: FloatArray, y: LabelArray, cloud_correct: Any
) -> tuple[CascadeSplit, Any]:
    logits = model_logits(folder, card, x)
    split = CascadeSplit(
        edge_logits=logits,
        labels=y,
        edge_correct=logits.argmax(axis=1) == y,
        cloud_correct=np.asarray(cloud_correct, dtype=bool),
        features=x,
    )
    router = card.router
    if router is None:
        raise ValueError(f"{card.name} v{card.version} has no router policy")
    scores, _ = split_scores(
        folder, card, split, router.score, card.temperature, router.trust_weight
    )
    return split, scores
