"""The model pairs the delta benchmark encodes: real training, real export, real int8.

Each :class:`DeltaCase` is a base artifact a device runs and the new artifact the fleet
pushes. Two model families: the committed digits-cloud CNN (0.6 MB fp32, the actual
artifact devices run, loaded back into torch so fine-tunes start from it exactly) and a
wide MLP of realistic size (~51 MB fp32) trained briefly on the same digits. For each:
a retrain from a new seed, a last-layer fine-tune, a full fine-tune, and three int8 cases
(the same weights re-calibrated on other data; a full fine-tune at each of two learning
rates, re-quantized: the smaller rate leaves sparse ±1 changes).
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeserve.artifacts import packaged_artifacts
from models import nets
from models.data import NUM_CLASSES, NUM_FEATURES, DigitsSplit, FloatArray, LabelArray
from models.export import export_onnx_bytes
from models.quantize import quantize_int8

__all__ = ["CASES", "DeltaCase", "WideMLP", "big_cases", "small_cases"]

CASES = (
    "last-layer fine-tune",
    "int8 re-calibration",
    "int8 after fine-tune lr 1e-4",
    "int8 after fine-tune lr 1e-5",
    "full fine-tune",
    "retrain (new seed)",
)
# Full fine-tunes at two learning rates: the smaller one moves few int8 weights by one
# step (sparse changes), the larger one many; the fp32 case uses the larger.
_TUNE_RATES = (1e-4, 1e-5)


@dataclass(frozen=True)
class DeltaCase:
    model: str
    case: str
    base: bytes
    new: bytes


class WideMLP(nn.Module):
    """64 -> 2048 -> 4096 -> 1024 -> 10: 12.7M parameters, a 51 MB fp32 ONNX file."""

    def __init__(self) -> None:
        super().__init__()
        widths = (NUM_FEATURES, 2048, 4096, 1024)
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.body(x))
        return out


def _train(
    model: nn.Module,
    params: list[nn.Parameter],
    data: tuple[FloatArray, LabelArray],
    epochs: int,
    lr: float,
    seed: int,
) -> nn.Module:
    """Adam + cross-entropy on ``params`` only (the others stay bit-identical)."""
    x, y = (torch.from_numpy(np.ascontiguousarray(a)) for a in data)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(params, lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), 32):
            batch = order[start : start + 32]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
    return model.eval()


def _fresh(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return factory()


def _copy(factory: Callable[[], nn.Module], model: nn.Module) -> nn.Module:
    twin = factory()
    twin.load_state_dict(model.state_dict())
    return twin


def _export(model: nn.Module) -> bytes:
    return export_onnx_bytes(model.eval(), torch.zeros(1, NUM_FEATURES))


def _int8(fp32: bytes, calibration: FloatArray) -> bytes:
    with tempfile.TemporaryDirectory(prefix="edgeserve-delta-") as scratch:
        src, dst = Path(scratch) / "fp32.onnx", Path(scratch) / "int8.onnx"
        src.write_bytes(fp32)
        quantize_int8(src, dst, calibration)
        return dst.read_bytes()


def _committed_cloud_cnn() -> tuple[nn.Module, bytes]:
    """The committed digits-cloud CNN, as torch weights and as its exact ONNX bytes."""
    import onnx
    from onnx import numpy_helper

    data = (packaged_artifacts() / "digits-cloud.onnx").read_bytes()
    graph = onnx.load_from_string(data).graph
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    model = nets.CloudCNN()
    model.load_state_dict(weights)
    return model.eval(), data


def _family(
    name: str,
    factory: Callable[[], nn.Module],
    base: tuple[nn.Module, bytes],
    head: Callable[[nn.Module], list[nn.Parameter]],
    split: DigitsSplit,
    retrain_epochs: int,
    tune_epochs: int,
) -> Iterator[DeltaCase]:
    """The six cases for one architecture, in :data:`CASES` order.

    Fine-tunes use the calibration split as the "new data"; the int8 re-calibration
    calibrates the same fp32 weights on training rows instead of the calibration split.
    """
    model, base_bytes = base
    new_data = (split.x_calibration, split.y_calibration)
    last = _copy(factory, model)
    _train(last, head(last), new_data, tune_epochs, lr=1e-3, seed=7)
    yield DeltaCase(name, CASES[0], base_bytes, _export(last))
    base_int8 = _int8(base_bytes, split.x_calibration)
    yield DeltaCase(name, CASES[1], base_int8, _int8(base_bytes, split.x_train[:256]))
    tuned = []
    for case, lr in zip(CASES[2:4], _TUNE_RATES, strict=True):
        full = _copy(factory, model)
        tuned.append(_export(_train(full, list(full.parameters()), new_data, tune_epochs, lr, 7)))
        yield DeltaCase(name, case, base_int8, _int8(tuned[-1], split.x_calibration))
    yield DeltaCase(name, CASES[4], base_bytes, tuned[0])
    fresh = _fresh(factory, seed=1)
    retrained = _train(fresh, list(fresh.parameters()), (split.x_train, split.y_train),
                       retrain_epochs, lr=1e-3, seed=1)  # fmt: skip
    yield DeltaCase(name, CASES[5], base_bytes, _export(retrained))


def small_cases(split: DigitsSplit) -> Iterator[DeltaCase]:
    """The committed digits-cloud CNN and six successors (the retrain runs 10 epochs)."""

    def head(model: nn.Module) -> list[nn.Parameter]:
        assert isinstance(model, nets.CloudCNN)
        return list(model.classifier[-1].parameters())

    yield from _family(
        "digits-cloud CNN", nets.CloudCNN, _committed_cloud_cnn(), head, split,
        retrain_epochs=10, tune_epochs=5,
    )  # fmt: skip


def big_cases(split: DigitsSplit) -> Iterator[DeltaCase]:
    """A 51 MB wide MLP trained one epoch from seed 0, and six successors."""
    base = _fresh(WideMLP, seed=0)
    _train(base, list(base.parameters()), (split.x_train, split.y_train), 1, lr=1e-3, seed=0)

    def head(model: nn.Module) -> list[nn.Parameter]:
        assert isinstance(model, WideMLP)
        return list(model.head.parameters())

    yield from _family(
        "wide MLP 51 MB", WideMLP, (base, _export(base)), head, split,
        retrain_epochs=1, tune_epochs=1,
    )  # fmt: skip
