"""The model card: the JSON document that travels with every model artifact.

A card names the artifact, pins its bytes by sha256, and declares the tensor contract
(inputs/outputs with datatype and shape, -1 for a dynamic axis). Runtimes, the agent's
model store and, later, the signed update manifest all trust the card and check the
bytes against it before anything is loaded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ArtifactFormat = Literal["onnx", "tflite"]
CARD_SUFFIX = ".card.json"


class TensorSpec(BaseModel):
    """One named tensor of a model's signature; -1 in ``shape`` marks a dynamic axis."""

    model_config = ConfigDict(frozen=True)

    name: str
    datatype: str = Field(description="OIP v2 datatype name, e.g. FP32, INT64, BYTES")
    shape: list[int]


class ModelMetrics(BaseModel):
    """Quality measured when the artifact was built, on the fixed test split."""

    test_accuracy: float
    test_samples: int


ConfidenceScore = Literal["max_probability", "margin", "entropy"]


class CalibrationReport(BaseModel):
    """Temperature scaling fit on the calibration split, and what it changed."""

    temperature: float = Field(gt=0)
    samples: int
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float


class RouterPolicy(BaseModel):
    """When the edge answers alone and when it escalates, for one model.

    Every score is "higher = more confident" in [0, 1]: the top-class probability, the
    top-1 minus top-2 margin, or 1 - entropy / log(classes). A request escalates when its
    score is below ``threshold``.
    """

    score: ConfidenceScore = "max_probability"
    threshold: float = Field(ge=0, le=1)
    target_kind: Literal["escalation_rate", "accuracy", "manual"] = "manual"
    target_value: float | None = None
    escalation_model: str = Field("digits-cloud", description="model name at the gateway")
    expected_escalation_rate: float | None = Field(None, description="on the calibration split")
    expected_accuracy: float | None = Field(None, description="system accuracy, calibration")


class ModelCard(BaseModel):
    """Everything needed to verify, load and describe one model artifact."""

    model_config = ConfigDict(extra="allow")

    name: str
    version: str
    format: ArtifactFormat
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    file: str = Field(description="artifact file name, relative to the card")
    sha256: str
    size_bytes: int
    parameters: int = Field(0, description="trainable parameter count of the source model")
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    labels: list[str] = Field(default_factory=list)
    logits_output: str | None = Field(
        None, description="output whose softmax gives class probabilities (classifiers)"
    )
    temperature: float = Field(1.0, gt=0, description="softmax temperature for confidence")
    preprocessing: str = ""
    metrics: ModelMetrics | None = None
    calibration: CalibrationReport | None = None
    router: RouterPolicy | None = None
    source: dict[str, object] = Field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> ModelCard:
        return cls.model_validate_json(path.read_bytes())

    def save(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=2, exclude_none=True) + "\n")

    def input(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed so large models do not need to fit in memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def card_path_for(artifact: Path) -> Path:
    """Where the card of an artifact lives: ``model.int8.onnx`` -> ``model.int8.card.json``."""
    return artifact.with_name(artifact.name.rsplit(".", 1)[0] + CARD_SUFFIX)
