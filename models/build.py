"""Build every reference artifact, with its model card, from a seed.

``build_all`` is the one entry point the CLI wires up: it trains the edge and cloud
digits models, exports, quantizes and converts them, measures each artifact on the fixed
test split with the runtime that will serve it, and writes artifact + card pairs. The
outputs are byte-reproducible, so the committed ``artifacts/`` folder can be checked by
simply rebuilding and comparing hashes.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from edgeserve.artifacts import packaged_artifacts
from edgeserve.wire.model_card import (
    ModelCard,
    ModelMetrics,
    ReferenceBank,
    TensorSpec,
    card_path_for,
    file_sha256,
)
from models import nets
from models.bank import write_bank
from models.data import (
    NUM_CLASSES,
    NUM_FEATURES,
    PREPROCESSING,
    DigitsSplit,
    make_split,
    write_splits,
)
from models.evaluate import onnx_accuracy, tflite_accuracy
from models.export import (
    INPUT_NAME,
    OPSET,
    OUTPUT_NAME,
    export_classifier,
    export_onnx_bytes,
    verify_against_torch,
)
from models.quantize import QuantizeConfig, quantize_int8
from models.tflite_convert import convert_onnx_to_tflite, verify_against_onnx
from models.train import (
    CLOUD_TRAIN_CONFIG,
    EDGE_TRAIN_CONFIG,
    TrainConfig,
    train_classifier,
)

Progress = Callable[[str], None]
Precision = Literal["fp32", "int8"]

ARTIFACTS_DIR = packaged_artifacts()
EDGE_FP32 = "digits-edge-fp32"
EDGE_INT8 = "digits-edge"
EDGE_TFLITE = "digits-edge-tflite"
CLOUD = "digits-cloud"
ARTIFACT_VERSION = "1"
LABELS = [str(digit) for digit in range(NUM_CLASSES)]


class NondeterministicBuildError(RuntimeError):
    """Two builds from the same seed produced different bytes."""


def _classifier_card(
    artifact: Path,
    *,
    name: str,
    precision: Precision,
    parameters: int,
    test_accuracy: float,
    test_samples: int,
    source: dict[str, object],
    bank: ReferenceBank | None = None,
) -> ModelCard:
    card = ModelCard(
        name=name,
        version=ARTIFACT_VERSION,
        format="tflite" if artifact.suffix == ".tflite" else "onnx",
        precision=precision,
        file=artifact.name,
        sha256=file_sha256(artifact),
        size_bytes=artifact.stat().st_size,
        parameters=parameters,
        inputs=[TensorSpec(name=INPUT_NAME, datatype="FP32", shape=[-1, NUM_FEATURES])],
        outputs=[TensorSpec(name=OUTPUT_NAME, datatype="FP32", shape=[-1, NUM_CLASSES])],
        labels=LABELS,
        logits_output=OUTPUT_NAME,
        preprocessing=PREPROCESSING,
        # Rounded so the card text cannot pick up float-printing noise.
        metrics=ModelMetrics(test_accuracy=round(test_accuracy, 6), test_samples=test_samples),
        bank=bank,
        source=source,
    )
    card.save(card_path_for(artifact))
    return card


def _common_source(split: DigitsSplit, seed: int) -> dict[str, object]:
    return {
        "dataset": "sklearn.datasets.load_digits",
        "split_seed": seed,
        "split_sizes": {
            "train": len(split.y_train),
            "calibration": len(split.y_calibration),
            "test": len(split.y_test),
        },
        "torch_version": torch.__version__.split("+")[0],
        "onnx_opset": OPSET,
    }


def build_all(out_dir: Path, seed: int = 0, progress: Progress | None = None) -> list[ModelCard]:
    """Train, export, quantize and convert the digits models into ``out_dir``.

    Writes ``digits-edge-fp32.onnx``, ``digits-edge.onnx`` (int8), ``digits-edge-tflite.tflite``
    and ``digits-cloud.onnx``, each with its ``.card.json``, plus the calibration and test
    splits as npz and the edge models' reference bank (``digits-edge.bank.npz``, named and
    hashed in each edge card). Returns the cards in that order.
    """
    say = progress or (lambda _message: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    split = make_split(seed)
    write_splits(split, out_dir)
    # The trust score's bank: the edge models' training digits, in their input space.
    bank = write_bank(out_dir, split.x_train, split.y_train)
    common = _common_source(split, seed)
    n_test = len(split.y_test)

    def trained_source(config: TrainConfig, architecture: str) -> dict[str, object]:
        return {**common, **config.as_source(), "architecture": architecture}

    edge_config = replace(EDGE_TRAIN_CONFIG, seed=seed)
    say(f"training edge MLP ({edge_config.epochs} epochs)")
    edge = train_classifier(nets.EdgeMLP, split.x_train, split.y_train, edge_config)
    edge_params = nets.count_parameters(edge)
    edge_fp32 = export_classifier(edge, out_dir / f"{EDGE_FP32}.onnx")
    verify_against_torch(edge, edge_fp32, split.x_test)
    edge_acc = onnx_accuracy(edge_fp32, split.x_test, split.y_test)
    edge_source = trained_source(edge_config, "EdgeMLP 64-128-64-10 ReLU")
    cards = [
        _classifier_card(
            edge_fp32,
            name=EDGE_FP32,
            precision="fp32",
            parameters=edge_params,
            test_accuracy=edge_acc,
            test_samples=n_test,
            bank=bank,
            source=edge_source,
        )
    ]
    say(f"{EDGE_FP32}: test accuracy {edge_acc:.4f}, {edge_params} parameters")

    quant_config = QuantizeConfig()
    edge_int8 = quantize_int8(
        edge_fp32, out_dir / f"{EDGE_INT8}.onnx", split.x_calibration, quant_config
    )
    int8_acc = onnx_accuracy(edge_int8, split.x_test, split.y_test)
    cards.append(
        _classifier_card(
            edge_int8,
            name=EDGE_INT8,
            precision="int8",
            parameters=edge_params,
            test_accuracy=int8_acc,
            test_samples=n_test,
            bank=bank,
            source={
                **edge_source,
                "derived_from": EDGE_FP32,
                "fp32_test_accuracy": round(edge_acc, 6),
                "quantization": quant_config.as_source(),
            },
        )
    )
    say(f"{EDGE_INT8}: int8 test accuracy {int8_acc:.4f} (fp32 {edge_acc:.4f})")

    edge_tflite = convert_onnx_to_tflite(edge_fp32, out_dir / f"{EDGE_TFLITE}.tflite")
    verify_against_onnx(edge_fp32, edge_tflite, split.x_test)
    tflite_acc = tflite_accuracy(edge_tflite, split.x_test, split.y_test)
    cards.append(
        _classifier_card(
            edge_tflite,
            name=EDGE_TFLITE,
            precision="fp32",
            parameters=edge_params,
            test_accuracy=tflite_acc,
            test_samples=n_test,
            bank=bank,
            source={
                **edge_source,
                "derived_from": EDGE_FP32,
                "converter": "models/tflite_convert.py",
            },
        )
    )
    say(f"{EDGE_TFLITE}: test accuracy {tflite_acc:.4f}")

    cloud_config = replace(CLOUD_TRAIN_CONFIG, seed=seed)
    say(f"training cloud CNN ({cloud_config.epochs} epochs)")
    cloud = train_classifier(nets.CloudCNN, split.x_train, split.y_train, cloud_config)
    cloud_params = nets.count_parameters(cloud)
    cloud_path = export_classifier(cloud, out_dir / f"{CLOUD}.onnx")
    verify_against_torch(cloud, cloud_path, split.x_test)
    cloud_acc = onnx_accuracy(cloud_path, split.x_test, split.y_test)
    cards.append(
        _classifier_card(
            cloud_path,
            name=CLOUD,
            precision="fp32",
            parameters=cloud_params,
            test_accuracy=cloud_acc,
            test_samples=n_test,
            source=trained_source(cloud_config, "CloudCNN conv32-conv64-pool-fc128-fc10"),
        )
    )
    say(f"{CLOUD}: test accuracy {cloud_acc:.4f}, {cloud_params} parameters")
    return cards


def folder_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file in ``folder`` (not recursive), keyed by file name."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.iterdir())
        if path.is_file()
    }


def check_deterministic(out_dir: Path, seed: int = 0, progress: Progress | None = None) -> None:
    """Rebuild into a scratch folder and raise unless every file in ``out_dir`` matches."""
    with tempfile.TemporaryDirectory(prefix="edgeserve-rebuild-") as scratch:
        build_all(Path(scratch), seed, progress)
        rebuilt = folder_digests(Path(scratch))
    existing = {name: digest for name, digest in folder_digests(out_dir).items() if name in rebuilt}
    differing = sorted(name for name in rebuilt if existing.get(name) != rebuilt[name])
    if differing:
        raise NondeterministicBuildError(f"rebuild differs from {out_dir}: {', '.join(differing)}")


def build_mobilenet_v2_pair(
    out_dir: Path, seed: int = 0, calibration_batches: int = 4
) -> tuple[Path, Path]:
    """Random-weight MobileNetV2 as fp32 and int8 ONNX, for latency benchmarks only.

    The int8 model is calibrated on seeded random images: the weights are random too, so
    real images would not make its ranges any more meaningful.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    model = nets.build_mobilenet_v2(seed)
    shape = [1, 3, 224, 224]
    fp32_path = out_dir / "mobilenet-v2-fp32.onnx"
    fp32_path.write_bytes(export_onnx_bytes(model, torch.zeros(*shape)))
    rng = np.random.default_rng(seed)
    batches = [rng.standard_normal(shape, dtype=np.float32) for _ in range(calibration_batches)]
    int8_path = quantize_int8(
        fp32_path, out_dir / "mobilenet-v2-int8.onnx", batches, QuantizeConfig()
    )
    params = nets.count_parameters(model)
    pairs: tuple[tuple[Path, Precision], ...] = ((fp32_path, "fp32"), (int8_path, "int8"))
    for path, precision in pairs:
        ModelCard(
            name=path.stem,
            version=ARTIFACT_VERSION,
            format="onnx",
            precision=precision,
            file=path.name,
            sha256=file_sha256(path),
            size_bytes=path.stat().st_size,
            parameters=params,
            inputs=[TensorSpec(name=INPUT_NAME, datatype="FP32", shape=[-1, 3, 224, 224])],
            outputs=[TensorSpec(name=OUTPUT_NAME, datatype="FP32", shape=[-1, 1000])],
            logits_output=OUTPUT_NAME,
            source={"architecture": "MobileNetV2 width 1.0", "weights": "random", "seed": seed},
        ).save(card_path_for(path))
    return fp32_path, int8_path
