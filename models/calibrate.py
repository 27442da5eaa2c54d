"""Calibrating the edge model's confidence and choosing when the edge escalates to the cloud.

Two steps, both fitted on the calibration split only (the test split is for reporting):

1. **Temperature scaling**: one scalar T > 0 dividing the logits, chosen to minimise the
   negative log-likelihood. It fixes over- or under-confidence without changing any
   prediction.
2. **The router threshold**: a request escalates when its confidence score is below the
   threshold. The threshold is picked for a target escalation rate (the share of traffic
   sent to the cloud) or for a target system accuracy (edge answers where confident, cloud
   answers elsewhere), and the rate and accuracy it reaches on the calibration split go
   into the card as the expected ones.

Needs numpy (and onnxruntime, or the LiteRT interpreter for a tflite card, only in
:func:`calibrate_card`); no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from edgeserve.wire.confidence import (
    expected_calibration_error,
    negative_log_likelihood,
    softmax,
    top_class_confidence,
)
from edgeserve.wire.model_card import (
    CARD_SUFFIX,
    CalibrationReport,
    ModelCard,
    RouterPolicy,
    RouterScore,
    file_sha256,
)
from models.bank import (
    accuracy_at_rate,
    choose_trust_weight,
    load_bank,
    neighbour_shares,
    router_scores,
)
from models.data import FloatArray, SplitName, load_split
from models.evaluate import run_onnx, run_tflite

TargetKind = Literal["escalation_rate", "accuracy", "manual"]
# Temperatures outside this range mean the logits are broken, not miscalibrated.
TEMPERATURE_BOUNDS = (1e-2, 1e2)
_MAX_STEPS = 100
# How many recent scores a device holds its escalation rate over (see edge_agent.routing).
RATE_WINDOW = 500
# The calibration curve stored in the card, for turning an accuracy target into a rate.
CURVE_RATES = tuple(round(0.01 * i, 2) for i in range(51))


def fit_temperature(
    logits: npt.NDArray[Any],
    labels: npt.NDArray[Any],
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
) -> float:
    """The T in ``bounds`` minimising the NLL of softmax(logits / T); deterministic.

    With b = 1 / T the NLL is convex in b (log-sum-exp of a linear function minus a linear
    one): its slope, the mean of E_p[z] - z_label, rises with b and its curvature is the
    mean of Var_p[z]. So the minimum is where the slope crosses zero, found by Newton
    steps on b, with a bisection step whenever Newton would leave the bracket. If the
    slope does not change sign, the optimum is at a bound (T -> 0 when every sample is
    classified correctly), which is returned.
    """
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    picked = np.take_along_axis(z, np.asarray(labels, dtype=np.intp)[:, None], axis=-1)[:, 0]

    def slope_and_curvature(b: float) -> tuple[float, float]:
        probs = softmax(z * b)
        mean = (probs * z).sum(axis=-1)
        variance = (probs * z * z).sum(axis=-1) - mean * mean
        return float(np.mean(mean - picked)), float(np.mean(variance))

    low, high = 1.0 / bounds[1], 1.0 / bounds[0]
    if slope_and_curvature(low)[0] >= 0:
        return float(bounds[1])
    if slope_and_curvature(high)[0] <= 0:
        return float(bounds[0])
    b = min(max(1.0, low), high)
    for _ in range(_MAX_STEPS):
        slope, curvature = slope_and_curvature(b)
        if slope == 0:
            break
        low, high = (b, high) if slope < 0 else (low, b)
        newton = b - slope / curvature if curvature > 0 else low
        following = newton if low < newton < high else 0.5 * (low + high)
        converged = abs(following - b) <= 1e-12 * b
        b = following
        if converged:
            break
    return float(1.0 / b)


class SweepPoint(NamedTuple):
    """One threshold and what it gives: the escalated share and the system accuracy."""

    threshold: float
    escalation_rate: float
    accuracy: float


@dataclass(frozen=True)
class ThresholdChoice:
    """The chosen threshold with its rate and accuracy on the samples it was chosen on.

    ``target_met`` is False when an accuracy target is out of reach (the most accurate
    threshold is returned then) and always True for the other kinds of target.
    """

    threshold: float
    escalation_rate: float
    accuracy: float
    target_met: bool = True


def sweep(
    scores: npt.NDArray[Any],
    edge_correct: npt.NDArray[Any],
    cloud_correct: npt.NDArray[Any],
    thresholds: npt.NDArray[Any] | list[float],
) -> list[SweepPoint]:
    """Escalation rate and system accuracy of each threshold (escalate when score < it)."""
    ordered, edge_cum, cloud_cum = _cumulative(scores, edge_correct, cloud_correct)
    cuts = np.asarray(thresholds, dtype=np.float64)
    escalated = np.searchsorted(ordered, cuts, side="left")
    correct = cloud_cum[escalated] + edge_cum[-1] - edge_cum[escalated]
    rates, accuracies = (escalated / len(ordered)).tolist(), (correct / len(ordered)).tolist()
    return [SweepPoint(*p) for p in zip(cuts.tolist(), rates, accuracies, strict=True)]


def candidate_thresholds(scores: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """Every threshold that gives a different split of ``scores``, lowest first.

    0 (nothing escalates), the midpoints between consecutive distinct scores, and halfway
    from the largest score to 1 when that is above it. Between distinct scores, the
    midpoint is the choice least sensitive to small shifts of the score distribution; a
    threshold equal to a score would move every sample tied there across at once.
    """
    distinct = np.unique(np.asarray(scores, dtype=np.float64))
    inner = 0.5 * (distinct[:-1] + distinct[1:])
    top = [0.5 * (distinct[-1] + 1.0)] if len(distinct) and distinct[-1] < 1.0 else []
    return np.concatenate([[0.0], inner, top])


def choose_threshold(
    scores: npt.NDArray[Any],
    edge_correct: npt.NDArray[Any],
    cloud_correct: npt.NDArray[Any],
    target_kind: TargetKind,
    target_value: float,
) -> ThresholdChoice:
    """The threshold meeting a target on these samples.

    - ``escalation_rate``: the candidate whose share of scores below it is closest to the
      target. Tied scores move together, so the achieved rate can only take the values
      between tie groups; the one reached is reported.
    - ``accuracy``: the lowest escalation rate whose system accuracy (edge where score >=
      threshold, cloud below) is at least the target; if none reaches it, the most
      accurate threshold (lowest rate among equals) with ``target_met=False``.
    - ``manual``: ``target_value`` is the threshold itself.

    On new data the rate differs from the one reached here by sampling noise alone, about
    sqrt(r (1 - r) / n) (1.8 points at r = 10%, n = 270): only more calibration samples,
    or tracking the live rate, narrow that.
    """
    if target_kind == "manual":
        return ThresholdChoice(*sweep(scores, edge_correct, cloud_correct, [target_value])[0])
    points = sweep(scores, edge_correct, cloud_correct, candidate_thresholds(scores))
    rates = np.array([point.escalation_rate for point in points])
    accuracies = np.array([point.accuracy for point in points])
    if target_kind == "escalation_rate":
        # argmin takes the first of equals: the lower threshold, the fewer escalations.
        return ThresholdChoice(*points[int(np.argmin(np.abs(rates - target_value)))])
    if target_kind == "accuracy":
        # The tolerance keeps 0.97 reachable when 262/270 = 0.9703... is computed as 0.97-.
        reached = np.flatnonzero(accuracies >= target_value - 1e-12)
        if len(reached):
            return ThresholdChoice(*points[int(reached[0])])
        return ThresholdChoice(*points[int(np.argmax(accuracies))], target_met=False)
    raise ValueError(f"unknown target kind {target_kind!r}")


def _cumulative(
    scores: npt.NDArray[Any], edge_correct: npt.NDArray[Any], cloud_correct: npt.NDArray[Any]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Scores sorted ascending, and the running count of correct answers of each tier in
    that order with a leading zero: escalating the first k costs edge_cum[k] edge hits."""
    values = np.asarray(scores, dtype=np.float64)
    if not len(values) == len(edge_correct) == len(cloud_correct):
        raise ValueError("scores, edge_correct and cloud_correct differ in length")
    if len(values) == 0:
        raise ValueError("no samples to choose a threshold on")
    order = np.argsort(values, kind="stable")
    edge = np.concatenate([[0.0], np.cumsum(np.asarray(edge_correct, dtype=np.float64)[order])])
    cloud = np.concatenate([[0.0], np.cumsum(np.asarray(cloud_correct, dtype=np.float64)[order])])
    return values[order], edge, cloud


@dataclass(frozen=True)
class CascadeSplit:
    """One split run through an edge model and its cloud model: what routing needs."""

    edge_logits: FloatArray
    labels: npt.NDArray[np.int64]
    edge_correct: npt.NDArray[np.bool_]
    cloud_correct: npt.NDArray[np.bool_]
    features: FloatArray


@dataclass(frozen=True)
class CascadeOutcome:
    """Accuracy of each tier alone and of the cascade under a card's router policy, and
    the edge model's ECE at T = 1 and at the card's temperature."""

    samples: int
    edge_accuracy: float
    cloud_accuracy: float
    accuracy: float
    rate: float
    ece: tuple[float, float]


def load_card(artifacts_dir: Path, model: str) -> ModelCard:
    return ModelCard.load(artifacts_dir / f"{model}{CARD_SUFFIX}")


def model_logits(artifacts_dir: Path, card: ModelCard, x: FloatArray) -> FloatArray:
    """The card's logits for ``x``, from its artifact under the runtime that serves it."""
    if card.logits_output is None or card.outputs[0].name != card.logits_output:
        raise ValueError(f"model '{card.name}' has no logits as its first output")
    artifact = artifacts_dir / card.file
    return run_tflite(artifact, x) if card.format == "tflite" else run_onnx(artifact, x)


def cascade_split(
    artifacts_dir: Path, edge: ModelCard, cloud: ModelCard, split: SplitName
) -> CascadeSplit:
    x, y = load_split(artifacts_dir, split)
    edge_logits = model_logits(artifacts_dir, edge, x)
    cloud_logits = model_logits(artifacts_dir, cloud, x)
    return CascadeSplit(
        edge_logits=edge_logits,
        labels=y,
        edge_correct=edge_logits.argmax(axis=1) == y,
        cloud_correct=cloud_logits.argmax(axis=1) == y,
        features=x,
    )


def split_scores(
    artifacts_dir: Path,
    card: ModelCard,
    data: CascadeSplit,
    score: RouterScore,
    temperature: float,
    weight: float | None,
) -> tuple[npt.NDArray[np.float64], float]:
    """Every row's router score and the trust weight used (chosen here when None)."""
    if score != "trust":
        return router_scores(score, data.edge_logits, temperature, None, 0.0), 0.5
    share = neighbour_shares(load_bank(artifacts_dir, card), data.edge_logits, data.features)
    if weight is None:
        _, confidence = top_class_confidence(data.edge_logits, temperature)
        weight = choose_trust_weight(confidence, share, data.edge_correct, data.cloud_correct)
    return router_scores(score, data.edge_logits, temperature, share, weight), weight


def calibration_report(logits: FloatArray, labels: npt.NDArray[Any]) -> CalibrationReport:
    """Fit the temperature and measure ECE and NLL with T = 1 and with the fitted T."""
    temperature = fit_temperature(logits, labels)
    return CalibrationReport(
        temperature=temperature,
        samples=len(labels),
        ece_before=expected_calibration_error(softmax(logits), labels),
        ece_after=expected_calibration_error(softmax(logits, temperature), labels),
        nll_before=negative_log_likelihood(logits, labels),
        nll_after=negative_log_likelihood(logits, labels, temperature),
    )


def calibrate_card(
    artifacts_dir: Path,
    edge_model: str = "digits-edge",
    cloud_model: str = "digits-cloud",
    score: RouterScore = "max_probability",
    target_kind: TargetKind = "escalation_rate",
    target_value: float = 0.1,
) -> ModelCard:
    """Fit the edge card's temperature and router threshold on the calibration split and
    save the card; only the card changes, never the artifact it pins."""
    card = load_card(artifacts_dir, edge_model)
    cloud = load_card(artifacts_dir, cloud_model)
    for checked in (card, cloud):
        if file_sha256(artifacts_dir / checked.file) != checked.sha256:
            raise ValueError(f"{checked.file} does not match the sha256 in its card")
    data = cascade_split(artifacts_dir, card, cloud, "calibration")
    report = calibration_report(data.edge_logits, data.labels)
    scores, weight = split_scores(artifacts_dir, card, data, score, report.temperature, None)
    choice = choose_threshold(
        scores, data.edge_correct, data.cloud_correct, target_kind, target_value
    )
    curve = [
        (rate, round(accuracy_at_rate(scores, data.edge_correct, data.cloud_correct, rate), 6))
        for rate in CURVE_RATES
    ]
    router = RouterPolicy(
        score=score,
        threshold=choice.threshold,
        target_kind=target_kind,
        target_value=target_value,
        trust_weight=weight,
        rate_window=0 if target_kind == "manual" else RATE_WINDOW,
        accuracy_curve=curve,
        escalation_model=cloud_model,
        expected_escalation_rate=choice.escalation_rate,
        expected_accuracy=choice.accuracy,
    )
    updated = card.model_copy(
        update={"temperature": report.temperature, "calibration": report, "router": router}
    )
    updated.save(artifacts_dir / f"{edge_model}{CARD_SUFFIX}")
    return updated


def cascade_outcome(
    artifacts_dir: Path, card: ModelCard, cloud_model: str, split: SplitName
) -> CascadeOutcome:
    """How the card's router policy does on a split: rates and accuracies per tier."""
    if card.router is None:
        raise ValueError(f"model '{card.name}' has no router policy; calibrate it first")
    cloud = load_card(artifacts_dir, cloud_model)
    data = cascade_split(artifacts_dir, card, cloud, split)
    router = card.router
    scores, _ = split_scores(
        artifacts_dir, card, data, router.score, card.temperature, router.trust_weight
    )
    point = sweep(scores, data.edge_correct, data.cloud_correct, [card.router.threshold])[0]
    return CascadeOutcome(
        samples=len(data.labels),
        edge_accuracy=float(data.edge_correct.mean()),
        cloud_accuracy=float(data.cloud_correct.mean()),
        accuracy=point.accuracy,
        rate=point.escalation_rate,
        ece=(
            expected_calibration_error(softmax(data.edge_logits), data.labels),
            expected_calibration_error(softmax(data.edge_logits, card.temperature), data.labels),
        ),
    )
