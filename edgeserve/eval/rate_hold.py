"""``edgeserve eval rate-hold``: does the device hold the escalation rate it is asked for?

Streams of 2,000 digits resampled from the test split, clean, with pixel noise and with
blur (a shift the calibration split never showed), are scored by the committed int8
edge model and its reference bank, and routed by the agent's own ``RateController``
starting from the card's threshold. Reported per stream and target: the realised rate
after the first 500 requests (worst and mean over stream seeds), the rate the card's
fixed threshold would have given, and the cascade's accuracy on the stream (the labels
are used for this report only; the controller never sees them).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.routing.rate import RateController
from edgeserve.artifacts import packaged_artifacts
from edgeserve.wire.trust import trust_scores

STREAM, WARM_UP = 2000, 500
TARGETS = (0.05, 0.10, 0.20)
Array = npt.NDArray[Any]


def _noise(x: Array, rng: np.random.Generator) -> Array:
    return np.clip(x + rng.normal(0.0, 0.15, x.shape), 0.0, 1.0)


def _blur(x: Array, rng: np.random.Generator) -> Array:
    """A 3x3 box blur of each 8x8 digit (edges padded by repetition)."""
    images = np.pad(x.reshape(-1, 8, 8), ((0, 0), (1, 1), (1, 1)), mode="edge")
    shifted = [images[:, i : i + 8, j : j + 8] for i in range(3) for j in range(3)]
    blurred: Array = np.mean(shifted, axis=0).reshape(-1, 64)
    return blurred


SHIFTS: dict[str, Callable[[Array, np.random.Generator], Array] | None] = {
    "clean": None,
    "noise sigma 0.15": _noise,
    "blur 3x3": _blur,
}


def run_rate_hold(out: Path | None = None, stream_seeds: int = 5) -> dict[str, Any]:
    """Every shift x target x stream seed; returns (and writes) the summary."""
    from models.bank import load_bank
    from models.calibrate import load_card, model_logits
    from models.data import load_split

    artifacts = packaged_artifacts()
    card, cloud = load_card(artifacts, "digits-edge"), load_card(artifacts, "digits-cloud")
    if card.router is None:
        raise ValueError("the packaged edge card has no router policy")
    policy, bank = card.router, load_bank(artifacts, card)
    x, y = load_split(artifacts, "test")
    report: dict[str, Any] = {"stream": STREAM, "warm_up": WARM_UP, "window": policy.rate_window}
    for shift, transform in SHIFTS.items():
        rows: dict[str, Any] = {}
        for seed in range(stream_seeds):
            rng = np.random.default_rng(seed)
            pick = rng.integers(0, len(y), STREAM)
            digits = x[pick] if transform is None else transform(x[pick], rng).astype(np.float32)
            labels = y[pick]
            logits = model_logits(artifacts, card, digits)
            edge_ok = logits.argmax(1) == labels
            cloud_ok = model_logits(artifacts, cloud, digits).argmax(1) == labels
            _, scores = trust_scores(logits, card.temperature, digits, bank, policy.trust_weight)
            fixed = float((scores[WARM_UP:] < policy.threshold).mean())
            for target in TARGETS:
                controller = RateController(target, policy.rate_window or 500, policy.threshold)
                sent = np.array([bool(controller.route([float(s)])) for s in scores])
                row = rows.setdefault(f"{target:.2f}", {"realised": [], "accuracy": []})
                row["realised"].append(float(sent[WARM_UP:].mean()))
                row["accuracy"].append(float(np.where(sent, cloud_ok, edge_ok)[WARM_UP:].mean()))
                row.setdefault("fixed_threshold", []).append(fixed)
        report[shift] = {target: _summary(float(target), row) for target, row in rows.items()}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "rate_hold.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _summary(target: float, row: dict[str, list[float]]) -> dict[str, float]:
    realised = np.array(row["realised"])
    return {
        "realised_mean": round(float(realised.mean()), 4),
        "worst_error": round(float(np.abs(realised - target).max()), 4),
        "accuracy_mean": round(float(np.mean(row["accuracy"])), 4),
        "fixed_threshold_rate": round(float(np.mean(row["fixed_threshold"])), 4),
    }
