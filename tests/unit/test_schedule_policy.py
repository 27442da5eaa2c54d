"""Triton's schedule-policy parameters, one validator for the agent and the gateway."""

import asyncio
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import AgentConfig
from edge_agent.core import AgentCore
from edge_agent.executor import BoundedExecutor
from edge_agent.router import Router
from edgeserve.wire.errors import InvalidInput
from edgeserve.wire.schedule import MAX_TIMEOUT_US, SchedulePolicy, schedule_policy
from edgeserve.wire.tensors import InferRequest, InferTensor


def test_no_parameters_is_the_default_policy():
    assert schedule_policy({}) == SchedulePolicy(priority=0, timeout_s=None)


def test_priority_and_timeout_in_microseconds_are_read():
    assert schedule_policy({"priority": 2, "timeout": 5000}) == SchedulePolicy(2, 0.005)
    assert schedule_policy({"timeout": 2.5e6}).timeout_s == 2.5


@pytest.mark.parametrize(
    "timeout",
    [float("nan"), float("inf"), -float("inf"), 0, -5, MAX_TIMEOUT_US + 1, True, "soon", [1]],
    ids=["nan", "inf", "-inf", "zero", "negative", "past-max", "bool", "str", "list"],
)
def test_a_timeout_that_is_not_positive_finite_microseconds_is_refused(timeout):
    with pytest.raises(InvalidInput, match="parameter 'timeout' must be positive"):
        schedule_policy({"timeout": timeout})


@pytest.mark.parametrize(
    "priority",
    [-1, 1.5, float("nan"), True, "high", 2**64],
    ids=["negative", "float", "nan", "bool", "str", "past-uint64"],
)
def test_a_priority_that_is_not_a_uint64_is_refused(priority):
    with pytest.raises(InvalidInput, match="parameter 'priority' must be an integer"):
        schedule_policy({"priority": priority})


def test_a_refusal_quotes_a_huge_value_shortly():
    with pytest.raises(InvalidInput) as refused:
        schedule_policy({"priority": "p" * 100_000})
    assert len(refused.value.message) < 300


@pytest.fixture
def core(tmp_path: Path):
    config = AgentConfig(state_dir=tmp_path / "state", models=["digits-edge"], cache_entries=0)
    agent = AgentCore.from_config(config)
    agent.start()
    yield agent
    agent.close()


def test_the_agent_router_refuses_a_nan_timeout_before_running_the_model(core):
    request = InferRequest(
        "digits-edge",
        [InferTensor.from_numpy("input", np.zeros((1, 64), np.float32))],
        parameters={"timeout": float("nan")},
    )

    async def scenario() -> None:
        executor = BoundedExecutor(1, 8)
        try:
            await Router(core, executor, None, None, "escalate", 0.05).infer(request)
        finally:
            executor.shutdown()

    with pytest.raises(InvalidInput, match="parameter 'timeout'"):
        asyncio.run(scenario())
    runs = "edgeserve_agent_inference_seconds_count"
    assert not core.metrics.registry.get_sample_value(runs, {"model": "digits-edge"})
