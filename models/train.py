"""Deterministic CPU training of the digits models.

Same seed, same code, same machine -> the same weights bit for bit, which is what lets
the build reproduce the committed artifacts' sha256. That rules out multithreaded
reductions (their summation order varies), so training runs on one thread; the data
set is tiny enough that this costs seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.data import FloatArray, LabelArray

TRAINING_SCRIPT = "models/train.py"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights besides the data and the architecture."""

    epochs: int
    learning_rate: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 0.0
    seed: int = 0

    def as_source(self) -> dict[str, object]:
        """The fields recorded in a model card's ``source``."""
        return {
            "training_script": TRAINING_SCRIPT,
            "seed": self.seed,
            "epochs": self.epochs,
            "optimizer": "Adam",
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "weight_decay": self.weight_decay,
        }


EDGE_TRAIN_CONFIG = TrainConfig(epochs=60, learning_rate=1e-3)
CLOUD_TRAIN_CONFIG = TrainConfig(epochs=40, learning_rate=1e-3)


@contextmanager
def deterministic_torch(seed: int) -> Iterator[None]:
    """Seed torch and force deterministic kernels on one thread, restoring both afterwards.

    Restoring matters because these are process-wide switches and the caller (a test run,
    the CLI) may go on to do unrelated torch work.
    """
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous_deterministic)
        torch.set_num_threads(previous_threads)


def train_classifier(
    model_factory: Callable[[], nn.Module],
    x: FloatArray,
    y: LabelArray,
    config: TrainConfig,
) -> nn.Module:
    """Build a model with ``model_factory`` and train it with Adam and cross-entropy.

    The factory runs after seeding so the initial weights are part of what the seed fixes.
    Returns the model in eval mode.
    """
    features = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    labels = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    with deterministic_torch(config.seed):
        model = model_factory()
        # A dedicated generator keeps the batch order independent of the global RNG,
        # which dropout also draws from.
        order_rng = torch.Generator().manual_seed(config.seed)
        optimizer = torch.optim.Adam(
            model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        for _ in range(config.epochs):
            permutation = torch.randperm(len(labels), generator=order_rng)
            for start in range(0, len(labels), config.batch_size):
                batch = permutation[start : start + config.batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(features[batch]), labels[batch])
                loss.backward()
                optimizer.step()
    return model.eval()
