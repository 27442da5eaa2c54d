"""``edgeserve eval cascade --seeds 1-30``: the router's scores over many builds, not one split.

For each seed the whole model pipeline runs again (``models build --seed``: a new
train / calibration / test split, both models retrained, the int8 edge model
re-quantized, its reference bank rebuilt). On each build, with the calibration split
only, the temperature, the trust score's weight and each score's threshold for 10% are
chosen; the test split then gives, per score:

- accuracy when 5, 10 and 15% of the test digits escalate (the device holds the rate, so
  this is what it delivers at that rate), and whether the cascade matches or beats the
  cloud alone at 10%;
- the escalation needed to reach the cloud's accuracy;
- the rate and accuracy of the threshold calibrated for 10%, applied as a fixed threshold.

Means over seeds come with 95% bootstrap intervals (resampling the seeds), and the mean
accuracy-vs-escalation curve of each score is plotted. Offline: the models run under the
runtimes that serve them, with no agent or gateway in between.
"""

from __future__ import annotations

import csv
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeserve.wire.model_card import RouterScore

SCORES: tuple[RouterScore, ...] = ("max_probability", "margin", "entropy", "trust")
RATES = (0.05, 0.10, 0.15)
CURVE = tuple(round(0.01 * i, 2) for i in range(31))
BOOTSTRAP = 2000
CSV_COLUMNS = (
    *("seed", "score", "edge_acc", "cloud_acc", "acc_5", "acc_10", "acc_15"),
    *("needed_for_cloud", "matches_cloud_at_10", "calibrated_rate", "calibrated_acc"),
)
Say = Callable[[str], None]


@dataclass(frozen=True)
class ScoreResult:
    """One score on one seed's test split."""

    seed: int
    score: str
    accuracy_at: dict[str, float]
    needed_for_cloud: float
    matches_cloud_at_10: bool
    calibrated_rate: float
    calibrated_accuracy: float
    curve: list[float]


@dataclass(frozen=True)
class SeedResult:
    seed: int
    edge_accuracy: float
    cloud_accuracy: float
    trust_weight: float
    scores: list[ScoreResult]


def parse_seeds(text: str) -> list[int]:
    """``"1-30"``, ``"3"`` or ``"1,4,9-12"`` as a sorted list of distinct seeds."""
    seeds: set[int] = set()
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError as exc:
            raise ValueError(f"bad seed range {part!r}; expected e.g. 1-30 or 1,4,9-12") from exc
        if first < 0 or last < first:
            raise ValueError(f"bad seed range {part!r}")
        seeds.update(range(first, last + 1))
    return sorted(seeds)


def evaluate_seed(seed: int, workdir: Path, say: Say) -> SeedResult:
    """Build every model from ``seed`` into ``workdir`` and score the router on it."""
    from models.build import EDGE_INT8, build_all

    say(f"seed {seed}: building")
    build_all(workdir, seed)
    return score_build(workdir, seed, EDGE_INT8)


def score_build(folder: Path, seed: int, edge_model: str) -> SeedResult:
    """Every score of a built folder: choices on calibration, figures on test."""
    from models.bank import accuracy_at_rate, rate_to_reach
    from models.calibrate import (
        calibration_report,
        cascade_split,
        choose_threshold,
        load_card,
        split_scores,
        sweep,
    )

    edge, cloud = load_card(folder, edge_model), load_card(folder, "digits-cloud")
    calibration = cascade_split(folder, edge, cloud, "calibration")
    test = cascade_split(folder, edge, cloud, "test")
    temperature = calibration_report(calibration.edge_logits, calibration.labels).temperature
    cloud_accuracy = float(test.cloud_correct.mean())
    results, weight = [], 0.5
    for score in SCORES:
        fitted, chosen = split_scores(folder, edge, calibration, score, temperature, None)
        weight = chosen if score == "trust" else weight
        threshold = choose_threshold(
            fitted, calibration.edge_correct, calibration.cloud_correct, "escalation_rate", 0.1
        ).threshold
        scores, _ = split_scores(folder, edge, test, score, temperature, chosen)
        at = {
            f"{rate:.2f}": accuracy_at_rate(scores, test.edge_correct, test.cloud_correct, rate)
            for rate in RATES
        }
        point = sweep(scores, test.edge_correct, test.cloud_correct, [threshold])[0]
        curve = [accuracy_at_rate(scores, test.edge_correct, test.cloud_correct, r) for r in CURVE]
        needed = rate_to_reach(scores, test.edge_correct, test.cloud_correct, cloud_accuracy)
        results.append(
            ScoreResult(
                seed,
                score,
                at,
                needed,
                at["0.10"] >= cloud_accuracy - 1e-12,
                point.escalation_rate,
                point.accuracy,
                curve,
            )
        )
    return SeedResult(seed, float(test.edge_correct.mean()), cloud_accuracy, weight, results)


def bootstrap_interval(
    values: npt.NDArray[Any], seed: int = 0, rounds: int = BOOTSTRAP
) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean, resampling the seeds."""
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), (rounds, len(data)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def summarise(results: list[SeedResult]) -> dict[str, Any]:
    """Per score: mean and 95% interval of every figure, and the seeds matching the cloud."""
    cloud = np.array([r.cloud_accuracy for r in results])
    summary: dict[str, Any] = {
        "seeds": [r.seed for r in results],
        "cloud_accuracy": _stat(cloud),
        "edge_accuracy": _stat(np.array([r.edge_accuracy for r in results])),
        "trust_weights": [r.trust_weight for r in results],
        "scores": {},
    }
    for score in SCORES:
        rows = [next(s for s in r.scores if s.score == score) for r in results]
        matches = np.array([row.matches_cloud_at_10 for row in rows], dtype=np.float64)
        summary["scores"][score] = {
            **{
                f"accuracy_at_{key}": _stat(np.array([row.accuracy_at[key] for row in rows]))
                for key in rows[0].accuracy_at
            },
            "needed_for_cloud": _stat(np.array([row.needed_for_cloud for row in rows])),
            "matches_cloud_at_10": {
                "count": int(matches.sum()),
                "of": len(rows),
                "ci95": [round(v * len(rows), 1) for v in bootstrap_interval(matches)],
            },
            "calibrated_10_rate": _stat(np.array([row.calibrated_rate for row in rows])),
            "calibrated_10_accuracy": _stat(np.array([row.calibrated_accuracy for row in rows])),
            "curve": np.mean([row.curve for row in rows], axis=0).round(6).tolist(),
        }
    return summary


def _stat(values: npt.NDArray[Any]) -> dict[str, Any]:
    low, high = bootstrap_interval(values)
    return {"mean": round(float(values.mean()), 6), "ci95": [round(low, 6), round(high, 6)]}


def run_seeded_eval(seeds: list[int], out: Path, say: Say | None = None) -> dict[str, Any]:
    """Build and score every seed, then write ``seeds.json``, ``seeds.csv`` and the plot."""
    report = say or (lambda _message: None)
    results = []
    for seed in seeds:
        with tempfile.TemporaryDirectory(prefix=f"edgeserve-seed{seed}-") as tmp:
            results.append(evaluate_seed(seed, Path(tmp), report))
        report(f"seed {seed}: " + _one_line(results[-1]))
    summary = summarise(results)
    write_seeded(out, summary, results)
    return summary


def _one_line(result: SeedResult) -> str:
    at10 = {s.score: s.accuracy_at["0.10"] for s in result.scores}
    return f"cloud {result.cloud_accuracy:.2%}, at 10%: " + ", ".join(
        f"{name} {value:.2%}" for name, value in at10.items()
    )


def write_seeded(out: Path, summary: dict[str, Any], results: list[SeedResult]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "seeds.json").write_text(json.dumps(summary, indent=2) + "\n")
    with (out / "seeds.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for result in results:
            for row in result.scores:
                at = row.accuracy_at
                writer.writerow(
                    [
                        *(result.seed, row.score, result.edge_accuracy, result.cloud_accuracy),
                        *(at["0.05"], at["0.10"], at["0.15"], row.needed_for_cloud),
                        *(row.matches_cloud_at_10, row.calibrated_rate, row.calibrated_accuracy),
                    ]
                )
    _plot(out / "seeds.png", summary, results)


def _plot(path: Path, summary: dict[str, Any], results: list[SeedResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6.5, 4.2))
    rates = [r * 100 for r in CURVE]
    for score in SCORES:
        curves = np.array([next(s.curve for s in r.scores if s.score == score) for r in results])
        band = np.percentile(curves, [10, 90], axis=0) * 100
        axis.plot(rates, curves.mean(axis=0) * 100, label=score)
        axis.fill_between(rates, band[0], band[1], alpha=0.12)
    axis.axhline(summary["cloud_accuracy"]["mean"] * 100, color="black", ls="--", label="cloud")
    axis.set(
        xlabel="escalated test digits (%)",
        ylabel="cascade accuracy (%)",
        title=f"mean over {len(results)} builds (band: 10th-90th percentile)",
    )
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
