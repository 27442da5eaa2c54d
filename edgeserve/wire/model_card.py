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
# What a router may rank requests by: a softmax score, or the trust score (max-probability
# combined with the k-NN share of the predicted class in the card's reference bank).
RouterScore = Literal["max_probability", "margin", "entropy", "trust"]


class ReferenceBank(BaseModel):
    """Labelled examples in the model's feature space, for the router's trust score.

    Part of the model package like the artifact: a file beside it, pinned by sha256 and
    checked before the agent uses it.
    """

    model_config = ConfigDict(frozen=True)

    file: str = Field(description="bank file name (npz of x float32 [n, d], y int64 [n])")
    sha256: str
    size_bytes: int = Field(ge=0)
    rows: int = Field(gt=0)
    features: int = Field(gt=0)
    feature_space: Literal["input"] = Field(
        "input", description="the model input (digits); a penultimate layer for larger models"
    )
    k: int = Field(3, ge=1, description="neighbours consulted")
    max_per_class: int | None = Field(None, description="class-wise cap the bank was reduced to")


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
    top-1 minus top-2 margin, 1 - entropy / log(classes), or the trust score (see
    ``wire.trust``). A request escalates when its score is below ``threshold``.

    With ``rate_window`` > 0 and a rate or accuracy target, ``threshold`` is only where
    the device starts: it then moves the threshold so its live escalation rate holds the
    target (an accuracy target becomes the lowest calibration rate reaching it, read
    from ``accuracy_curve``). ``manual`` pins the threshold.
    """

    score: RouterScore = "max_probability"
    threshold: float = Field(ge=0, le=1)
    target_kind: Literal["escalation_rate", "accuracy", "manual"] = "manual"
    target_value: float | None = None
    trust_weight: float = Field(
        0.5, ge=0, le=1, description="trust score: weight of max-probability vs the k-NN share"
    )
    rate_window: int = Field(
        0,
        ge=0,
        le=100_000,
        description="hold the target rate over this many recent scores (0: fixed threshold)",
    )
    accuracy_curve: list[tuple[float, float]] | None = Field(
        None, description="(escalation rate, accuracy) on the calibration split, rate ascending"
    )
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
    bank: ReferenceBank | None = None
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
