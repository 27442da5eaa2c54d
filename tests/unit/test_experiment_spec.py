"""Experiment specs: sticky, weighted assignment by a hashed key, and what is refused."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from cloud_gateway.experiments import Arm, ExperimentSpec
from edgeserve.wire.errors import InvalidInput


def spec(*arms: Arm, name: str = "exp") -> ExperimentSpec:
    return ExperimentSpec(name, "digits-cloud", arms, key_header="x-user")


AB = (Arm("1", "split", 90), Arm("2", "split", 10))


def test_a_key_always_gets_the_same_arm():
    experiment = spec(*AB)
    assert len({spec(*AB).assign(f"user-{i}").version for i in range(200)}) == 2
    for key in ("user-1", "user-2", "user-3"):
        assert len({experiment.assign(key).version for _ in range(20)}) == 1


def test_keys_spread_over_arms_by_weight():
    experiment = spec(*AB)
    counts = Counter(experiment.assign(f"user-{i}").version for i in range(20_000))
    assert 0.085 < counts["2"] / 20_000 < 0.115


def test_assignment_depends_on_the_experiment_so_two_experiments_are_independent():
    first, second = spec(*AB, name="one"), spec(*AB, name="two")
    in_b = [k for k in map(str, range(5000)) if first.assign(k).version == "2"]
    both = sum(second.assign(k).version == "2" for k in in_b)
    assert 0.05 < both / len(in_b) < 0.16  # about 10% of one's arm-2 keys, not all of them


def test_a_stopped_arm_sends_its_keys_to_the_control_and_moves_nobody_else():
    arms = (Arm("1", "split", 50), Arm("2", "split", 25), Arm("3", "split", 25))
    before = spec(*arms)
    after = spec(arms[0], dataclasses.replace(arms[1], stopped="worse"), arms[2])
    keys = [f"k{i}" for i in range(3000)]
    for key in keys:
        was, now = before.assign(key).version, after.assign(key).version
        assert now == ("1" if was == "2" else was)


def test_without_a_key_requests_are_drawn_by_weight():
    experiment = spec(*AB)
    counts = Counter(experiment.assign(None).version for _ in range(5000))
    assert set(counts) == {"1", "2"}


def test_a_shadow_is_never_assigned_traffic():
    experiment = spec(Arm("1", "split", 1), Arm("3", "shadow"))
    assert {experiment.assign(str(i)).version for i in range(500)} == {"1"}
    assert experiment.shadow is not None and experiment.shadow.name == "3 (shadow)"


@pytest.mark.parametrize(
    ("arms", "message"),
    [
        ((Arm("1", "split", 1),), "second split arm or a shadow"),
        ((Arm("3", "shadow"), Arm("1", "split", 1)), "first arm must be a split arm"),
        ((Arm("1", "split", 1), Arm("2", "split", 0)), "positive weight"),
        ((Arm("1", "split", 1), Arm("1", "shadow")), "one arm only"),
        ((Arm("1", "split", 1), Arm("2", "shadow"), Arm("3", "shadow")), "at most one shadow"),
    ],
)
def test_malformed_experiments_are_refused_with_the_reason(arms, message):
    with pytest.raises(InvalidInput, match=message):
        spec(*arms)


def test_a_key_from_a_header_and_a_parameter_at_once_is_refused():
    with pytest.raises(InvalidInput, match="not both"):
        ExperimentSpec("e", "m", AB, key_header="x-user", key_parameter="user")
