"""Builders shared by the sync unit tests: a real registry, store and issuer on tmp files."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import numpy_helper

from edgeserve.artifacts import packaged_artifacts
from edgeserve.security.signing import OperatorKey, ensure_operator_key
from edgeserve.wire.model_card import ModelCard, RouterPolicy, TensorSpec
from edgeserve.wire.sync_messages import ReportedState, RunningModel
from sync.artifacts import ArtifactStore
from sync.handlers import HandlerContext
from sync.metrics import SyncMetrics
from sync.registry import Registry
from sync.rollout import RolloutController
from sync.updates import UpdateIssuer

MODEL = "digits-edge"
CHUNK_SIZE = 1024


@dataclass
class Fleet:
    registry: Registry
    store: ArtifactStore
    key: OperatorKey
    issuer: UpdateIssuer
    ctx: HandlerContext
    artifacts: dict[str, bytes]
    cards: dict[str, ModelCard]

    def report(self, device_id: str, running: str | None = None, group: str = "default") -> None:
        models = {}
        if running is not None:
            card = self.cards[running]
            models[MODEL] = RunningModel(version=running, sha256=card.sha256, slot="slot-a")
        self.registry.record_reported(
            ReportedState(device_id=device_id, group=group, models=models, ts=time.time())
        )

    def corrupt(self, what: str) -> float:
        value = self.ctx.metrics.registry.get_sample_value(
            "edgeserve_sync_store_corrupt_total", {"what": what}
        )
        return value or 0.0

    def rejected(self, kind: str, reason: str) -> float:
        value = self.ctx.metrics.registry.get_sample_value(
            "edgeserve_sync_rejected_total", {"kind": kind, "reason": reason}
        )
        return value or 0.0


def fine_tuned(artifact: bytes) -> bytes:
    """The same int8 model with its last layer's scales nudged: a small, valid new version."""
    model = onnx.load_from_string(artifact)
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name == "fc3.weight_scale":
            changed = numpy_helper.to_array(tensor) * 1.01
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(changed, tensor.name))
    data: bytes = model.SerializeToString()
    return data


def build_fleet(tmp_path: Path) -> Fleet:
    registry = Registry(tmp_path / "registry.db")
    store = ArtifactStore(tmp_path / "store")
    key = ensure_operator_key(tmp_path / "keys")
    issuer = UpdateIssuer(registry, store, key, CHUNK_SIZE, manifest_ttl_s=3600)
    metrics = SyncMetrics()
    ctx = HandlerContext(registry, store, issuer, RolloutController(registry), metrics)
    base_card = ModelCard.load(packaged_artifacts() / f"{MODEL}.card.json")
    v1 = (packaged_artifacts() / base_card.file).read_bytes()
    artifacts = {"1": v1, "2": fine_tuned(v1)}
    cards = {}
    for version, data in artifacts.items():
        sha = store.put_artifact(data)
        card = base_card.model_copy(
            update={"version": version, "sha256": sha, "size_bytes": len(data)}
        )
        registry.add_version(card, sha)
        cards[version] = card
    return Fleet(registry, store, key, issuer, ctx, artifacts, cards)


class Clock:
    """An injectable clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tiny_card(version: str, router: RouterPolicy | None = None) -> ModelCard:
    """A card for registry and rollout logic (no artifact behind it)."""
    return ModelCard(
        name=MODEL,
        version=version,
        format="onnx",
        file="m.onnx",
        sha256="0" * 64,
        size_bytes=10,
        inputs=[TensorSpec(name="input", datatype="FP32", shape=[-1, 64])],
        outputs=[TensorSpec(name="logits", datatype="FP32", shape=[-1, 10])],
        router=router,
    )
