"""A hot swap closes the runtime session it replaces, once no request is running it."""

from __future__ import annotations

import gc
import hashlib
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import AgentConfig
from edge_agent.core import AgentCore
from edge_agent.sessions import SessionLeases
from edgeserve.artifacts import packaged_artifacts
from edgeserve.runtimes.onnx import OnnxRuntimeSession
from edgeserve.wire.model_card import ModelCard
from edgeserve.wire.tensors import InferRequest, InferTensor
from tests.unit.sync_setup import fine_tuned

MODEL = "digits-edge"
ROWS = np.random.default_rng(0).random((2, 64), dtype=np.float32) * 16


@pytest.fixture
def core(tmp_path: Path) -> Iterator[AgentCore]:
    config = AgentConfig(state_dir=tmp_path / "agent", models=[MODEL], device_id="dev-0")
    core = AgentCore.from_config(config)
    core.start()
    yield core
    core.close()


def swap_to_v2(core: AgentCore) -> None:
    """What an update does: stage version 2, switch the store, hot-swap the served model."""
    card = ModelCard.load(packaged_artifacts() / f"{MODEL}.card.json")
    data = fine_tuned((packaged_artifacts() / card.file).read_bytes())
    card = card.model_copy(
        update={"version": "2", "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}
    )
    staged = core.store.stage(card, data)
    core.store.activate(MODEL, staged.slot)
    core.load(MODEL)


def ort_session(core: AgentCore) -> weakref.ref[object]:
    session = core.model(MODEL).session
    assert isinstance(session, OnnxRuntimeSession)
    return weakref.ref(session._session)


def infer(core: AgentCore) -> str:
    request = InferRequest(MODEL, [InferTensor.from_numpy("input", ROWS)])
    return core.infer(request).model_version


def test_a_hot_swap_releases_the_onnx_runtime_session_it_replaces(core: AgentCore) -> None:
    old = core.model(MODEL)
    old_ort = ort_session(core)
    swap_to_v2(core)
    gc.collect()
    assert old.leases.closed
    assert old_ort() is None, "the old InferenceSession (and its weights) is still alive"
    assert infer(core) == "2"


def test_a_request_running_across_the_swap_keeps_the_old_session_until_it_ends(
    core: AgentCore,
) -> None:
    old_ort = ort_session(core)
    with core.borrow(MODEL) as old:
        swap_to_v2(core)
        open_during_the_request = not old.leases.closed
        assert old.session.run({"input": ROWS}, old.output_names)  # still answers
    gc.collect()
    assert open_during_the_request
    assert old.leases.closed and old_ort() is None


def test_closing_the_core_closes_every_session(core: AgentCore) -> None:
    model = core.model(MODEL)
    core.close()
    assert model.leases.closed


def test_a_retired_session_closes_exactly_once_after_its_last_borrower() -> None:
    closes: list[int] = []
    leases = SessionLeases(lambda: closes.append(1))
    leases.acquire()
    leases.acquire()
    leases.retire()
    leases.release()
    assert closes == []
    leases.release()
    leases.retire()
    assert closes == [1]
