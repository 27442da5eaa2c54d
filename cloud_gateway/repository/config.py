"""A model's serving configuration: ``<repository>/<model>/config.toml``.

::

    <repository>/
      digits-cloud/
        config.toml          this file (model-level, shared by all versions)
        1/model.onnx         one folder per version: model.onnx | model.pt | model.pt2 | model.plan
        2/model.onnx

Shapes include the batch axis as -1, as in the model card, so a client sees the same
signature from the edge agent and from the gateway.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgeserve.wire.errors import InvalidInput
from edgeserve.wire.model_card import TensorSpec

BackendName = Literal["onnxruntime", "torch", "tensorrt"]

# The file each backend loads from a version folder, in order of preference.
ARTIFACT_FILES: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("model.onnx",),
    "torch": ("model.pt2", "model.pt"),
    "tensorrt": ("model.plan",),
}


class BatchingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    max_queue_delay_us: int = Field(2000, ge=0)
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    max_queue_size: int = Field(1024, ge=1)
    default_priority_level: int = Field(1, ge=1, description="level for priority 0 (default)")
    max_concurrent_batches: int = Field(1, ge=1)
    dispatch_when_idle: bool = Field(
        True, description="run at once when nothing is running instead of waiting the delay"
    )


class VersionPolicy(BaseModel):
    """Which versions to serve: the latest N, or exactly the listed ones."""

    model_config = ConfigDict(extra="forbid")

    latest: int | None = Field(1, ge=1)
    specific: list[str] | None = None

    @model_validator(mode="after")
    def _one_policy(self) -> VersionPolicy:
        if self.specific is not None:
            self.latest = None
        return self


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    backend: BackendName = "onnxruntime"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int = Field(32, ge=1)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    instances: int = Field(1, ge=1, description="concurrent executions of this model")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    providers: list[str] = Field(
        default_factory=lambda: [
            "TensorrtExecutionProvider",
            "CUDAExecutionProvider",
            "CPUExecutionProvider",
        ],
        description="ONNX Runtime execution providers, in preference order",
    )
    intra_op_threads: int = Field(1, ge=0)
    memory_estimate_bytes: int | None = Field(None, ge=0, description="default: file size x2")
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    labels: list[str] = Field(default_factory=list)
    logits_output: str | None = None
    temperature: float = Field(1.0, gt=0)

    @classmethod
    def load(cls, path: Path) -> ModelConfig:
        try:
            return cls.model_validate(tomllib.loads(path.read_text()))
        except (OSError, tomllib.TOMLDecodeError, ValidationError) as exc:
            raise InvalidInput(f"bad model config {path}: {exc}") from exc


def artifact_path(version_dir: Path, backend: str) -> Path:
    """The artifact a backend loads from a version folder."""
    for name in ARTIFACT_FILES[backend]:
        candidate = version_dir / name
        if candidate.is_file():
            return candidate
    expected = " or ".join(ARTIFACT_FILES[backend])
    raise InvalidInput(f"{version_dir} has no {expected} for backend '{backend}'")
