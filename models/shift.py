"""A distribution shift the edge model handles badly: digits moved one pixel sideways.

The reference digits are centred 8x8 images; a camera mounted a little off, or a
scanner that crops differently, moves every digit by a pixel. The edge MLP sees pixels,
not shapes, so a one-pixel shift to the right halves its accuracy (96% -> 50% on the
test split) while the cloud CNN, whose convolutions see local shapes, keeps 79%: the
kind of gap the learning loop (``models.distill``) is for. Optional pixel noise makes
every pass over the same digits a new stream. numpy only.
"""

from __future__ import annotations

import numpy as np

from models.data import FloatArray

SIDE = 8
SHIFT_DESCRIPTION = "digits moved one pixel to the right (the left column blank)"


def shift_right(x: FloatArray, pixels: int = 1) -> FloatArray:
    """Each ``[64]`` row as an 8x8 image moved ``pixels`` to the right, zeros entering."""
    if not 0 <= pixels < SIDE:
        raise ValueError(f"pixels must be in [0, {SIDE}), got {pixels}")
    images = np.asarray(x, dtype=np.float32).reshape(-1, SIDE, SIDE)
    moved = np.zeros_like(images)
    moved[:, :, pixels:] = images[:, :, : SIDE - pixels]
    return moved.reshape(-1, SIDE * SIDE)


def shifted_stream(x: FloatArray, passes: int, noise: float, seed: int) -> FloatArray:
    """``passes`` copies of ``x`` shifted right, each with fresh Gaussian pixel noise of
    standard deviation ``noise`` (clipped to [0, 1]), in a seeded random order."""
    rng = np.random.default_rng(seed)
    moved = np.concatenate([shift_right(x)] * passes)
    noisy = np.clip(moved + rng.normal(0.0, noise, moved.shape), 0.0, 1.0)
    return np.ascontiguousarray(noisy[rng.permutation(len(noisy))], dtype=np.float32)
