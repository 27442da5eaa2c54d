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


def top_class_confidence(
    logits: npt.NDArray[Any], temperature: float = 1.0
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """Per row, the top class and its softmax probability, without the full softmax.

    max_i softmax(z)_i = 1 / sum_j exp(z_j - max z): a handful of numpy calls, which
    matters on the hot path where the model itself runs in tens of microseconds.
    """
    scaled = np.asarray(logits, dtype=np.float64)
    if temperature != 1.0:
        scaled = scaled / temperature
    top = scaled.argmax(axis=-1)
    peak = np.take_along_axis(scaled, top[..., None], axis=-1)
    confidence: npt.NDArray[np.float64] = 1.0 / np.exp(scaled - peak).sum(axis=-1)
    return top, confidence
