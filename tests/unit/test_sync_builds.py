"""Payload builds run in a worker process: the sync core keeps handling device messages."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeserve.artifacts import packaged_artifacts
from edgeserve.client import metric_value
from edgeserve.polling import wait_until
from edgeserve.wire import topics
from edgeserve.wire.delta import TENSOR_DELTA_2_SINCE, apply_payload
from edgeserve.wire.manifest import verify_signed_manifest
from edgeserve.wire.model_card import ModelCard
from edgeserve.wire.sync_messages import DesiredState, DeviceStatus, ReportedState, RunningModel
from sync.artifacts import ArtifactStore
from sync.builds import BuildProgress, PayloadBuilds
from sync.config import SyncConfig
from sync.core import SyncCore
from sync.metrics import SyncMetrics
from sync.rollout import RolloutSpec
from sync.updates import Outgoing

MODEL = "wide"
HIDDEN = 1 << 16  # a 64 x 65536 float layer: 16 MiB, a build of several seconds here


def wide_model(seed: int, tuned: bool = False) -> bytes:
    """input[N,64] -> MatMul -> Relu -> MatMul -> logits[N,10]; ``tuned`` moves every weight."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.05, (64, HIDDEN)).astype(np.float32)
    w2 = rng.normal(0, 0.05, (HIDDEN, 10)).astype(np.float32)
    if tuned:
        w1 += np.random.default_rng(seed + 1).normal(0, 1e-4, w1.shape).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "wide",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data: bytes = model.SerializeToString()
    return data


@pytest.fixture
def core(tmp_path: Path) -> Iterator[tuple[SyncCore, list[Outgoing]]]:
    published: list[Outgoing] = []
    core = SyncCore(SyncConfig(state_dir=tmp_path / "state"), SyncMetrics(), published.append)
    try:
        yield core, published
    finally:
        core.close()


def _register(core: SyncCore, version: str, data: bytes) -> str:
    card = ModelCard.load(packaged_artifacts() / "digits-edge.card.json")
    sha = core.store.put_artifact(data)
    card = card.model_copy(
        # a wide model of its own: not the digits bank of the card it is copied from
        update={
            "name": MODEL,
            "version": version,
            "sha256": sha,
            "size_bytes": len(data),
            "bank": None,
        }
    )
    core.register_version(card, sha)
    return sha


def _report(core: SyncCore, device_id: str, group: str, running: dict[str, RunningModel]) -> None:
    state = ReportedState(
        device_id=device_id, agent_version=TENSOR_DELTA_2_SINCE, group=group, models=running
    )
    core.handle(topics.reported(device_id), state.to_bytes())


def _desired(published: list[Outgoing], device_id: str) -> DesiredState | None:
    found = [m for m in published if m.topic == topics.desired(device_id)]
    return DesiredState.model_validate_json(found[-1].payload) if found else None


def _building(core: SyncCore, stage: str) -> BuildProgress | None:
    builds = core.ctx.issuer.builds
    assert builds is not None
    return next((p for p in builds.progress() if p.stage == stage), None)


def test_a_device_message_is_handled_while_a_big_delta_builds(
    core: tuple[SyncCore, list[Outgoing]],
) -> None:
    sync, published = core
    v1, v2 = wide_model(0), wide_model(0, tuned=True)
    base_sha = _register(sync, "1", v1)
    new_sha = _register(sync, "2", v2)
    _report(sync, "dev-a", "canary", {MODEL: RunningModel(version="1", sha256=base_sha)})
    _report(sync, "dev-b", "default", {})
    sync.start_rollout(RolloutSpec(model=MODEL, version="2", group="canary", stages=[1.0]))
    assert _desired(published, "dev-a") is None  # not issued yet: its payload is building

    wait_until(lambda: _building(sync, "tensor-delta-2"), 120, "the worker to reach the delta")
    status = DeviceStatus(device_id="dev-b", online=True, ts=time.time())
    sync.handle(topics.status("dev-b"), status.to_bytes())
    device = sync.registry.device("dev-b")
    assert device is not None and device.online
    assert _building(sync, "tensor-delta-2") is not None, "the build ended before the message"
    (shown,) = sync.builds()  # what GET /v1/builds and fleet push --wait show
    assert (shown["artifact"], shown["base"], shown["stage"]) == (
        new_sha,
        base_sha,
        "tensor-delta-2",
    )
    sync.tick()
    running = 'edgeserve_sync_payload_builds_running{stage="tensor-delta-2"}'
    assert metric_value(sync.metrics.render().decode(), running) == 1

    def issued() -> DesiredState | None:
        sync.tick()
        return _desired(published, "dev-a")

    state = wait_until(issued, 180, "the update issued once its payload is built")
    exposition = sync.metrics.render().decode()
    assert metric_value(exposition, 'edgeserve_sync_payload_builds_total{outcome="done"}') == 1
    key = sync.ctx.issuer.key.public
    manifest = verify_signed_manifest(state.models[MODEL], key)
    assert manifest.payload.encoding == "tensor-delta-2"
    payload = sync.store.read_payload(manifest.payload.sha256)
    assert apply_payload(manifest.payload.encoding, payload, v1, len(v2)) == v2


def test_progress_names_each_stage_of_the_build(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    base = store.put_artifact((packaged_artifacts() / "digits-edge.onnx").read_bytes())
    new = store.put_artifact((packaged_artifacts() / "digits-edge-fp32.onnx").read_bytes())
    builds = PayloadBuilds(store.root)
    try:
        builds.start((base, new, 2))
        finished = wait_until(builds.finished, 120, "the build to finish")
    finally:
        builds.close()
    assert [f.key for f in finished] == [(base, new, 2)] and finished[0].payload is not None
    assert finished[0].stages == ("zstd", "zstd-patch", "tensor-delta-2", "verify")
    assert store.cached_delta(base, new, 2) == finished[0].payload


def test_a_failed_build_is_reported_once_with_its_error(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    missing = "0" * 64
    builds = PayloadBuilds(store.root)
    try:
        builds.start((None, missing, 2))
        finished = wait_until(builds.finished, 120, "the build to fail")
        assert builds.finished() == []
    finally:
        builds.close()
    assert finished[0].payload is None and "not in the store" in finished[0].error


def test_closing_stops_a_running_build_instead_of_waiting_for_it(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    base = store.put_artifact(wide_model(0))
    new = store.put_artifact(wide_model(0, tuned=True))
    builds = PayloadBuilds(store.root)
    builds.start((base, new, 2))

    def delta_stage() -> bool:
        return any(p.stage == "tensor-delta-2" for p in builds.progress())

    wait_until(delta_stage, 120, "the worker to reach the delta")
    builds.close()
    assert store.cached_delta(base, new, 2) is None  # stopped, not waited for
