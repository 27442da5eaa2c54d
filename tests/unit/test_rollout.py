"""The rollout controller: staged assignment, promotion, halting and rollback."""

from pathlib import Path

import pytest

from edgeserve.wire.errors import InvalidInput, ModelNotFound, UpdateRefused
from edgeserve.wire.sync_messages import ReportedState, RunningModel, UpdateResult
from edgeserve.wire.telemetry import OutboxEntry, TelemetryBatch
from sync.ingest import ingest_batch
from sync.registry import Registry
from sync.rollout import Assign, RolloutController, RolloutNotFound, RolloutSpec
from tests.unit.sync_setup import Clock, tiny_card

MODEL = "digits-edge"


card = tiny_card


def report(registry: Registry, device_id: str, version: str | None, group: str = "default"):
    models = {} if version is None else {MODEL: RunningModel(version=version, sha256="0")}
    registry.record_reported(ReportedState(device_id=device_id, group=group, models=models))


def result(device_id: str, ok: bool = True, version: str = "2.0") -> UpdateResult:
    return UpdateResult(
        device_id=device_id,
        model=MODEL,
        version=version,
        ok=ok,
        stage="done" if ok else "self_test",
        reason="" if ok else "golden mismatch",
        running_version=version if ok else "1.0",
    )


def spec(**overrides) -> RolloutSpec:
    settings = {
        "model": MODEL,
        "version": "2.0",
        "canary": 1,
        "stages": [0.5, 1.0],
        "max_failures": 2,
        "max_failure_rate": 0.5,
        **overrides,
    }
    return RolloutSpec(**settings)


def devices(assigns: list[Assign]) -> list[str]:
    return [a.device_id for a in assigns]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry(tmp_path: Path, clock: Clock) -> Registry:
    registry = Registry(tmp_path / "registry.db", clock=clock)
    registry.add_version(card("1.0"), "1" * 64)
    registry.add_version(card("2.0"), "2" * 64)
    for i in range(10):
        report(registry, f"dev-{i:02d}", "1.0")
    return registry


@pytest.fixture
def controller(registry: Registry, clock: Clock) -> RolloutController:
    return RolloutController(registry, clock)


def install(controller: RolloutController, device_ids: list[str]) -> list[Assign]:
    actions: list[Assign] = []
    for device_id in device_ids:
        actions += controller.on_result(result(device_id))
    return actions


def test_the_canary_is_the_first_device_in_id_order(controller: RolloutController):
    rollout_id, assigns = controller.start(spec())
    assert assigns == [Assign("dev-00", MODEL, "2.0", False, rollout_id)]
    view = controller.show(rollout_id)
    assert (view.state, view.stage, view.counts["assigned"], view.counts["pending"]) == (
        "running",
        0,
        1,
        9,
    )


def test_a_canary_fraction_rounds_up_to_at_least_one_device(controller: RolloutController):
    _, assigns = controller.start(spec(canary=0.01))
    assert devices(assigns) == ["dev-00"]


def test_stages_are_cumulative_fractions_of_the_targets():
    assert spec(canary=2, stages=[0.5, 1.0]).stage_sizes(10) == [2, 3, 5]
    assert spec(canary=0.25, stages=[0.1, 0.5, 1.0]).stage_sizes(10) == [3, 2, 5]
    assert spec(canary=5, stages=[1.0]).stage_sizes(3) == [3]


def test_canary_promotes_after_all_canaries_install(controller: RolloutController):
    rollout_id, _ = controller.start(spec(canary=2))
    assert install(controller, ["dev-00"]) == []
    promoted = install(controller, ["dev-01"])
    assert devices(promoted) == ["dev-02", "dev-03", "dev-04"]
    assert controller.show(rollout_id).stage == 1


def test_promotion_waits_for_the_soak_time(controller: RolloutController, clock: Clock):
    controller.start(spec(soak_s=60))
    assert install(controller, ["dev-00"]) == []
    clock.now += 59
    assert controller.tick() == []
    clock.now += 1
    assert devices(controller.tick()) == ["dev-01", "dev-02", "dev-03", "dev-04"]


def test_promote_after_healthy_needs_only_that_many_installs(controller: RolloutController):
    controller.start(spec(canary=3, promote_after_healthy=2))
    assert install(controller, ["dev-00"]) == []
    assert devices(install(controller, ["dev-01"])) == ["dev-03", "dev-04"]


def test_devices_already_running_the_version_count_as_installed(
    registry: Registry, controller: RolloutController
):
    report(registry, "dev-00", "2.0")
    rollout_id, assigns = controller.start(spec())
    # The canary already runs 2.0, so the next stage is assigned at once.
    assert devices(assigns) == ["dev-01", "dev-02", "dev-03", "dev-04"]
    assert controller.show(rollout_id).devices[0].state == "installed"


def test_the_rollout_completes_when_every_target_installed(controller: RolloutController):
    rollout_id, assigns = controller.start(spec())
    while assigns:
        assigns = install(controller, devices(assigns))
    view = controller.show(rollout_id)
    assert view.state == "completed" and view.counts["installed"] == 10
    assert view.stage == 2 and view.stage_sizes == (1, 4, 5)


def test_a_device_reporting_the_new_version_counts_as_installed_without_its_result(
    registry: Registry, controller: RolloutController
):
    # Its result message was lost (the broker died holding it); its reported state,
    # retained and sent again on every reconnect, still says what it runs.
    rollout_id, assigns = controller.start(spec(canary=1, stages=[1.0]))
    canary = devices(assigns)[0]
    report(registry, canary, "2.0")
    promoted = controller.on_reported(canary)
    view = controller.show(rollout_id)
    assert view.devices[0].state == "installed" and view.stage == 1
    assert len(promoted) == 9  # the next stage was assigned


def test_a_reported_state_with_the_old_version_changes_nothing(
    registry: Registry, controller: RolloutController
):
    rollout_id, assigns = controller.start(spec())
    report(registry, devices(assigns)[0], "1.0")
    assert controller.on_reported(devices(assigns)[0]) == []
    assert controller.show(rollout_id).devices[0].state == "assigned"


def test_failures_over_threshold_halt_and_roll_back(controller: RolloutController):
    rollout_id, _ = controller.start(spec(canary=4, max_failures=2, max_failure_rate=1.0))
    install(controller, ["dev-00"])
    assert controller.on_result(result("dev-01", ok=False)) == []
    rollbacks = controller.on_result(result("dev-02", ok=False))
    assert rollbacks == [
        Assign(d, MODEL, "1.0", True, rollout_id) for d in ("dev-00", "dev-01", "dev-02", "dev-03")
    ]
    view = controller.show(rollout_id)
    assert view.state == "halted" and "2 update failures" in view.reason
    assert view.counts == {
        "pending": 6,
        "assigned": 0,
        "installed": 0,
        "failed": 2,
        "rolled_back": 2,
    }


def test_a_failure_rate_over_threshold_halts(controller: RolloutController):
    rollout_id, _ = controller.start(spec(canary=4, max_failures=10, max_failure_rate=0.5))
    install(controller, ["dev-00"])
    assert controller.on_result(result("dev-01", ok=False)) != []
    assert controller.show(rollout_id).state == "halted"


def test_an_error_rate_over_threshold_after_soak_halts(
    registry: Registry, controller: RolloutController, clock: Clock
):
    rollout_id, _ = controller.start(spec(soak_s=30, max_error_rate=0.1))
    install(controller, ["dev-00"])
    records = [
        OutboxEntry(
            seq=seq,
            kind="request",
            created=clock.now,
            data={
                "model": MODEL,
                "version": "2.0",
                "latency_ms": 1.0,
                "error": "internal" if seq <= 2 else None,
            },
        )
        for seq in range(1, 11)
    ]
    ingest_batch(
        registry, TelemetryBatch(device_id="dev-00", from_seq=0, to_seq=10, records=records)
    )
    assert controller.tick() == []  # still soaking
    clock.now += 30
    assert controller.tick() == [Assign("dev-00", MODEL, "1.0", True, rollout_id)]
    view = controller.show(rollout_id)
    assert view.state == "halted" and "error rate 20.0%" in view.reason


def test_manual_rollback_sends_every_touched_device_back(controller: RolloutController):
    rollout_id, assigns = controller.start(spec())
    install(controller, devices(assigns))
    rollbacks = controller.rollback(rollout_id, "operator changed their mind")
    assert devices(rollbacks) == ["dev-00", "dev-01", "dev-02", "dev-03", "dev-04"]
    assert all(a.rollback and a.version == "1.0" for a in rollbacks)
    view = controller.show(rollout_id)
    assert (view.state, view.reason) == ("rolled_back", "operator changed their mind")
    with pytest.raises(UpdateRefused):
        controller.rollback(rollout_id, "again")


def test_a_device_that_ran_no_earlier_version_gets_no_rollback(
    registry: Registry, controller: RolloutController
):
    report(registry, "dev-00", None)
    rollout_id, _ = controller.start(spec())
    assert controller.rollback(rollout_id, "stop") == []


def test_results_for_other_versions_or_unknown_devices_are_ignored(
    controller: RolloutController,
):
    rollout_id, _ = controller.start(spec())
    assert controller.on_result(result("dev-00", ok=False, version="1.5")) == []
    assert controller.on_result(result("dev-99", ok=False)) == []
    view = controller.show(rollout_id)
    assert view.state == "running" and view.counts["failed"] == 0


def test_an_offline_device_stays_assigned_until_it_reports(
    registry: Registry, controller: RolloutController, clock: Clock
):
    rollout_id, _ = controller.start(spec())
    clock.now += 3600
    assert controller.tick() == []
    assert controller.show(rollout_id).devices[0].state == "assigned"


def test_a_group_rollout_targets_only_that_group(registry: Registry, controller: RolloutController):
    report(registry, "edge-a", "1.0", group="east")
    report(registry, "edge-b", "1.0", group="east")
    rollout_id, assigns = controller.start(spec(group="east", canary=1))
    assert devices(assigns) == ["edge-a"]
    assert controller.show(rollout_id).total == 2


def test_the_rollout_resumes_from_the_registry_after_a_restart(
    tmp_path: Path, controller: RolloutController, clock: Clock
):
    rollout_id, _ = controller.start(spec())
    controller.registry.close()
    resumed = RolloutController(Registry(tmp_path / "registry.db", clock=clock), clock)
    assert devices(resumed.on_result(result("dev-00"))) == ["dev-01", "dev-02", "dev-03", "dev-04"]
    assert resumed.show(rollout_id).stage == 1


def test_a_new_rollout_of_the_same_model_supersedes_the_running_one(
    registry: Registry, controller: RolloutController
):
    registry.add_version(card("3.0"), "3" * 64)
    first, _ = controller.start(spec())
    second, _ = controller.start(spec(version="3.0"))
    assert controller.show(first).state == "superseded"
    assert controller.on_result(result("dev-00")) == []
    assert [view.id for view in controller.list()] == [first, second]


def test_an_unregistered_version_is_refused(controller: RolloutController):
    with pytest.raises(ModelNotFound):
        controller.start(spec(version="9.0"))


def test_a_group_without_devices_is_refused(controller: RolloutController):
    with pytest.raises(InvalidInput):
        controller.start(spec(group="nowhere"))


def test_an_unknown_rollout_is_not_found(controller: RolloutController):
    with pytest.raises(RolloutNotFound):
        controller.show(42)


@pytest.mark.parametrize(
    "overrides",
    [
        {"canary": 0},
        {"canary": 1.5},
        {"canary": True},
        {"stages": []},
        {"stages": [0.5]},
        {"stages": [0.8, 0.5, 1.0]},
        {"max_failure_rate": 2.0},
        {"soak_s": -1},
        {"promote_after_healthy": 0},
    ],
)
def test_invalid_specs_are_refused(overrides):
    with pytest.raises(InvalidInput):
        spec(**overrides)


def test_devices_that_already_ran_the_version_do_not_dilute_the_failure_rate(
    registry: Registry, controller: RolloutController
):
    for i in range(1, 10):
        report(registry, f"dev-{i:02d}", "2.0")
    rollout_id, _ = controller.start(spec(max_failures=5, max_failure_rate=0.5))
    assert devices(controller.on_result(result("dev-00", ok=False))) == ["dev-00"]
    assert controller.show(rollout_id).state == "halted"
