"""The rollout controller under the sequential gate, over a real registry and real ingest."""

import sqlite3
from pathlib import Path

import pytest

from edgeserve.wire.errors import InvalidInput
from edgeserve.wire.model_card import ModelCard, RouterPolicy
from edgeserve.wire.sync_messages import ReportedState, RunningModel, UpdateResult
from edgeserve.wire.telemetry import OutboxEntry, TelemetryBatch
from sync.ingest import ingest_batch
from sync.registry import Registry
from sync.rollout import Assign, RolloutController, RolloutSpec
from tests.unit.sync_setup import Clock, tiny_card

MODEL = "digits-edge"
THRESHOLD = 0.9
DEVICES = [f"dev-{i}" for i in range(4)]


def card(version: str) -> ModelCard:
    return tiny_card(version, RouterPolicy(threshold=THRESHOLD))


class Fleet:
    """Devices that report, install and send telemetry, each with its own sequence."""

    def __init__(self, registry: Registry, clock: Clock) -> None:
        self.registry, self.clock = registry, clock
        self.seq = dict.fromkeys(DEVICES, 0)

    def serve(self, device: str, version: str, requests: int, below: float, agree: float):
        """``requests`` one-row requests: a ``below`` share scored under the threshold and
        escalated, of which an ``agree`` share the cloud answered alike."""
        records = []
        escalated = round(requests * below)
        agreeing = round(escalated * agree)
        for i in range(requests):
            self.seq[device] += 1
            data = {"model": MODEL, "version": version, "latency_ms": 1.0, "confidence": 0.99}
            if i < escalated:
                data |= {"confidence": 0.5, "escalated": True, "agreement": float(i < agreeing)}
            records.append(
                OutboxEntry(seq=self.seq[device], kind="request", created=self.clock(), data=data)
            )
        batch = TelemetryBatch(
            device_id=device,
            from_seq=self.seq[device] - requests,
            to_seq=self.seq[device],
            records=records,
        )
        ingest_batch(self.registry, batch)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry(tmp_path: Path, clock: Clock) -> Registry:
    registry = Registry(tmp_path / "registry.db", clock=clock)
    registry.add_version(card("1"), "1" * 64)
    registry.add_version(card("2"), "2" * 64)
    for device in DEVICES:
        models = {MODEL: RunningModel(version="1", sha256="0")}
        registry.record_reported(ReportedState(device_id=device, group="default", models=models))
    return registry


@pytest.fixture
def controller(registry: Registry, clock: Clock) -> RolloutController:
    return RolloutController(registry, clock)


@pytest.fixture
def fleet(registry: Registry, clock: Clock) -> Fleet:
    return Fleet(registry, clock)


def sequential(**overrides: object) -> RolloutSpec:
    settings: dict[str, object] = {
        "model": MODEL,
        "version": "2",
        "canary": 1,
        "stages": [1.0],
        "gate": "sequential",
        "gate_min_requests": 100,
        **overrides,
    }
    return RolloutSpec(**settings)


def install(controller: RolloutController, device: str) -> list[Assign]:
    ok = UpdateResult(
        device_id=device, model=MODEL, version="2", ok=True, stage="done", running_version="2"
    )
    return controller.on_result(ok)


def test_the_fixed_threshold_gate_stays_the_default():
    assert RolloutSpec(model=MODEL, version="2").gate == "threshold"


def test_an_unknown_gate_is_refused():
    with pytest.raises(InvalidInput, match="gate 'vibes'"):
        sequential(gate="vibes")


def test_an_installed_canary_waits_for_evidence(controller: RolloutController):
    rollout_id, _ = controller.start(sequential())
    assert install(controller, "dev-0") == []
    view = controller.show(rollout_id)
    assert (view.state, view.stage, view.gate["0"]["action"]) == ("running", 0, "wait")


def test_a_canary_as_good_as_the_control_is_promoted(
    controller: RolloutController, fleet: Fleet, clock: Clock
):
    rollout_id, _ = controller.start(sequential())
    install(controller, "dev-0")
    clock.now += 1
    fleet.serve("dev-0", "2", requests=6000, below=0.2, agree=0.8)
    for device in DEVICES[1:]:
        fleet.serve(device, "1", requests=2000, below=0.2, agree=0.8)
    promoted = controller.tick()
    assert sorted(a.device_id for a in promoted) == DEVICES[1:]
    view = controller.show(rollout_id)
    assert view.stage == 1
    assert view.gate["0"]["metrics"]["agreement"]["verdict"] in ("not worse", "better")


def test_a_canary_that_disagrees_with_the_cloud_is_halted_and_rolled_back(
    controller: RolloutController, fleet: Fleet, clock: Clock
):
    rollout_id, _ = controller.start(sequential())
    install(controller, "dev-0")
    clock.now += 1
    fleet.serve("dev-0", "2", requests=1000, below=0.2, agree=0.1)
    for device in DEVICES[1:]:
        fleet.serve(device, "1", requests=1000, below=0.2, agree=0.8)
    assert controller.tick() == [Assign("dev-0", MODEL, "1", True, rollout_id)]
    view = controller.show(rollout_id)
    assert view.state == "halted"
    assert view.reason.startswith("sequential test: agreement 10.0% of 200")
    assert view.counts["pending"] == 3  # nothing past the canary was touched


def test_traffic_from_before_the_stage_is_no_evidence(
    controller: RolloutController, fleet: Fleet, clock: Clock
):
    fleet.serve("dev-1", "1", requests=1000, below=0.2, agree=0.8)  # before the rollout
    clock.now += 1
    rollout_id, _ = controller.start(sequential())
    install(controller, "dev-0")
    fleet.serve("dev-0", "2", requests=1000, below=0.2, agree=0.8)
    controller.tick()
    assert controller.show(rollout_id).gate["0"]["metrics"]["errors"]["control"] == [0, 0]


def test_the_last_stage_completes_on_guardrails_alone(
    controller: RolloutController, fleet: Fleet, clock: Clock
):
    rollout_id, _ = controller.start(sequential(canary=4))
    for device in DEVICES:
        install(controller, device)
    view = controller.show(rollout_id)
    assert view.state == "completed"
    assert view.gate["0"]["reason"] == "no devices left on the old version: guardrails only"


def test_a_registry_made_before_the_gate_column_gains_it(tmp_path: Path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE rollouts (id INTEGER PRIMARY KEY, model TEXT, version TEXT,"
            " target_group TEXT, spec TEXT, state TEXT, stage INTEGER, stage_started FLOAT,"
            " created FLOAT, updated FLOAT, reason TEXT DEFAULT '')"
        )
        conn.execute(
            "INSERT INTO rollouts VALUES (1, 'm', '2', NULL, '{}', 'completed', 0, 0, 0, 0, '')"
        )
    registry = Registry(path)
    row = registry.rollout(1)
    assert row is not None and row.gate == {}


def test_a_gate_margin_past_one_is_refused():
    with pytest.raises(InvalidInput, match="gate margins"):
        sequential(gate_margin_agreement=1.5)
