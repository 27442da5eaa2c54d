"""The agent's router with the trust score and a held escalation rate (no cloud
configured: rows under the threshold come back as ``uncertain_rows``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import AgentConfig
from edge_agent.core import AgentCore
from edge_agent.executor import BoundedExecutor
from edge_agent.recorder import Answered, request_record
from edge_agent.router import Router
from edgeserve.artifacts import packaged_artifacts
from edgeserve.wire.errors import IntegrityError
from edgeserve.wire.model_card import CARD_SUFFIX, ModelCard, RouterPolicy
from edgeserve.wire.sync_messages import DesiredState
from edgeserve.wire.telemetry import RequestRecord
from edgeserve.wire.tensors import InferRequest, InferResponse, InferTensor
from edgeserve.wire.trust import trust_scores
from models.bank import load_bank
from models.calibrate import model_logits
from models.data import load_split

MODEL = "digits-edge"


@pytest.fixture
def core(tmp_path: Path):
    core = AgentCore.from_config(AgentConfig(state_dir=tmp_path / "agent", models=[MODEL]))
    core.start()
    yield core
    core.close()


@pytest.fixture
def router(core):
    router = Router(core, BoundedExecutor(1, 4), None, None, "escalate", 0.05)
    yield router
    asyncio.run(router.close())


def _ask(router: Router, rows: np.ndarray) -> InferResponse:
    request = InferRequest(MODEL, [InferTensor("input", "FP32", list(rows.shape), rows)])
    return asyncio.run(router.infer(request))


def _test_digits(count: int) -> np.ndarray:
    x, _ = load_split(packaged_artifacts(), "test")
    return x[:count]


def _metric(core: AgentCore, name: str) -> float | None:
    return core.metrics.registry.get_sample_value(name, {"model": MODEL})


def test_the_card_routes_on_the_trust_score_from_its_verified_bank(router):
    digits = _test_digits(8)
    answer = _ask(router, digits)
    card = ModelCard.load(packaged_artifacts() / f"{MODEL}{CARD_SUFFIX}")
    assert card.router is not None
    logits = model_logits(packaged_artifacts(), card, digits)
    bank = load_bank(packaged_artifacts(), card)
    _, expected = trust_scores(logits, card.temperature, digits, bank, card.router.trust_weight)
    assert answer.parameters["score"] == "trust"
    np.testing.assert_allclose(answer.parameters["confidence"], expected, atol=1e-5)


def test_a_missing_bank_falls_back_to_max_probability_and_is_counted(core):
    model = core.model(MODEL)
    assert model.card.bank is not None
    (core.store.root / MODEL / model.slot / model.card.bank.file).unlink()
    router = Router(core, BoundedExecutor(1, 4), None, None, "escalate", 0.05)
    answer = _ask(router, _test_digits(1))
    assert answer.parameters["score"] == "max_probability"
    assert core.metrics.registry.get_sample_value("edgeserve_agent_router_bank_failures_total") == 1
    asyncio.run(router.close())


def test_the_bank_is_read_when_the_router_starts_not_on_the_first_request(core, router):
    model = core.model(MODEL)
    assert model.card.bank is not None
    (core.store.root / MODEL / model.slot / model.card.bank.file).unlink()
    assert _ask(router, _test_digits(1)).parameters["score"] == "trust"


def test_an_altered_bank_fails_the_slot_like_altered_model_bytes(core):
    model = core.model(MODEL)
    assert model.card.bank is not None
    path = core.store.root / MODEL / model.slot / model.card.bank.file
    data = path.read_bytes()
    path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    with pytest.raises(IntegrityError, match="bank"):
        core.store.load_verified(MODEL)


def test_an_update_that_keeps_the_bank_takes_it_from_the_serving_slot(core):
    serving = core.store.load_verified(MODEL)
    card = serving.card.model_copy(update={"version": "2"})
    staged = core.store.stage(card, serving.artifact.read_bytes())
    assert card.bank is not None
    assert (staged.artifact.parent / card.bank.file).read_bytes() == (
        serving.artifact.parent / card.bank.file
    ).read_bytes()


def test_a_rate_target_override_holds_the_rate_and_exports_it(core, router):
    card_policy = core.model(MODEL).card.router
    assert card_policy is not None
    target = card_policy.model_copy(
        update={"target_kind": "escalation_rate", "target_value": 0.2, "rate_window": 200}
    )
    router.override(MODEL, target)
    uncertain = [
        bool(_ask(router, row[None, :]).parameters.get("uncertain_rows"))
        for row in _test_digits(539)
    ]
    assert abs(np.mean(uncertain[200:]) - 0.2) <= 0.03
    assert _metric(core, "edgeserve_agent_router_target_rate") == 0.2
    assert _metric(core, "edgeserve_agent_router_threshold") != card_policy.threshold
    realised = _metric(core, "edgeserve_agent_router_escalation_rate")
    assert realised is not None and abs(realised - 0.2) <= 0.05


def test_answers_under_a_held_rate_report_the_threshold_and_window_rate(router):
    answer = _ask(router, _test_digits(1))
    assert {"threshold", "window_rate"} <= set(answer.parameters)


def test_telemetry_records_carry_the_threshold_and_window_rate(router):
    answer = _ask(router, _test_digits(1))
    record = RequestRecord.model_validate(
        request_record(Answered(MODEL, "1", 0.001, 1, answer.parameters))
    )
    assert record.threshold == answer.parameters["threshold"]
    assert record.window_rate == answer.parameters["window_rate"]


def test_a_held_rate_policy_survives_the_sync_desired_state_unchanged():
    policy = RouterPolicy(
        score="trust",
        threshold=0.96,
        target_kind="accuracy",
        target_value=0.985,
        trust_weight=0.4,
        rate_window=500,
        accuracy_curve=[(0.0, 0.96), (0.1, 0.99)],
    )
    desired = DesiredState(device_id="dev-1", revision=1, router={MODEL: policy})
    assert DesiredState.model_validate_json(desired.model_dump_json()).router[MODEL] == policy


def test_a_pinned_threshold_never_moves(core, router):
    pinned = RouterPolicy(score="trust", threshold=0.5, target_kind="manual", rate_window=200)
    router.override(MODEL, pinned)
    for row in _test_digits(100):
        assert "threshold" not in _ask(router, row[None, :]).parameters
    assert _metric(core, "edgeserve_agent_router_threshold") is None
