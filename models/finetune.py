"""A new version of the edge model the way teams make one: fine-tune its last layer.

The fleet demo and the sync tests need a real "version 2" of ``digits-edge`` to roll out:
the committed fp32 weights are loaded back into the torch MLP, only the output layer is
trained further on the training and calibration digits, and the result is exported and
quantized exactly like version 1. The card keeps version 1's temperature and router
policy (the hidden layers, hence the confidence profile, are unchanged) and records how
it was made. Deterministic: the same inputs give the same bytes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from edgeserve.artifacts import packaged_artifacts
from edgeserve.wire.model_card import ModelCard, ModelMetrics, card_path_for, file_sha256
from models import nets
from models.data import load_split, make_split
from models.evaluate import onnx_accuracy
from models.export import export_classifier
from models.quantize import QuantizeConfig, quantize_int8
from models.train import TrainConfig, train_classifier

BASE_FP32 = "digits-edge-fp32"
BASE_INT8 = "digits-edge"


FINE_TUNE = TrainConfig(epochs=30, learning_rate=5e-4, batch_size=64, seed=1)


def load_edge_mlp(onnx_path: Path) -> nets.EdgeMLP:
    """The torch MLP with the weights of an exported edge model."""
    graph = onnx.load(onnx_path).graph
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    model = nets.EdgeMLP()
    model.load_state_dict(weights)
    return model


def fine_tune_last_layer(model: nn.Module, config: TrainConfig) -> nn.Module:
    """Train only the output layer, on the training and calibration digits."""
    split = make_split(0)
    x = np.concatenate([split.x_train, split.x_calibration])
    y = np.concatenate([split.y_train, split.y_calibration])
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("fc3."))  # Adam skips gradient-less ones
    return train_classifier(lambda: model, x, y, config)


def build_edge_version(
    out_dir: Path, version: str = "2", config: TrainConfig = FINE_TUNE
) -> tuple[Path, ModelCard]:
    """Write ``digits-edge`` ``version`` (int8 ONNX, card, the base's bank) into ``out_dir``."""
    source = packaged_artifacts()
    base_card = ModelCard.load(source / f"{BASE_INT8}.card.json")
    out_dir.mkdir(parents=True, exist_ok=True)
    model = fine_tune_last_layer(load_edge_mlp(source / f"{BASE_FP32}.onnx"), config)
    fp32 = export_classifier(model, out_dir / f"{BASE_INT8}-v{version}.fp32.onnx")
    x_calibration, _ = load_split(source, "calibration")
    int8 = quantize_int8(
        fp32, out_dir / f"{BASE_INT8}-v{version}.onnx", x_calibration, QuantizeConfig()
    )
    card = versioned_card(
        base_card,
        int8,
        version,
        source,
        {
            "derived_from": f"{BASE_INT8}:{base_card.version}",
            "fine_tune": "output layer only, train + calibration digits",
            "epochs": config.epochs,
            "learning_rate": config.learning_rate,
            "seed": config.seed,
        },
    )
    if card.bank is not None:  # the package keeps the base's bank: copy it beside
        shutil.copyfile(source / card.bank.file, out_dir / card.bank.file)
    card.save(card_path_for(int8))
    return int8, card


def versioned_card(
    base: ModelCard, artifact: Path, version: str, splits: Path, source: dict[str, Any]
) -> ModelCard:
    """``base``'s card for a new ``version`` of it: these bytes, their test accuracy on the
    split in ``splits``, and where they came from."""
    x_test, y_test = load_split(splits, "test")
    return base.model_copy(
        update={
            "version": version,
            "file": artifact.name,
            "sha256": file_sha256(artifact),
            "size_bytes": artifact.stat().st_size,
            "metrics": ModelMetrics(
                test_accuracy=round(onnx_accuracy(artifact, x_test, y_test), 6),
                test_samples=len(y_test),
            ),
            "source": source,
        }
    )
