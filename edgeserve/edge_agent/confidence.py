"""Confidence of a classifier's answer, from temperature-scaled softmax probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def softmax(logits: npt.NDArray[Any], temperature: float = 1.0) -> npt.NDArray[np.float64]:
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    probs: npt.NDArray[np.float64] = exp / exp.sum(axis=-1, keepdims=True)
    return probs


def max_probability(probs: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Per row, the probability of the top class."""
    top: npt.NDArray[np.float64] = probs.max(axis=-1)
    return top
