"""The fleet registry: versions, devices, desired states and issued payloads on disk."""

from pathlib import Path

import pytest

from edgeserve.wire.errors import InvalidInput
from edgeserve.wire.manifest import SignedManifest
from edgeserve.wire.model_card import ModelCard, TensorSpec
from edgeserve.wire.sync_messages import (
    MAX_REVISION,
    DesiredState,
    DeviceStatus,
    ReportedState,
    RunningModel,
)
from sync.registry import Registry


def card(version: str, name: str = "digits-edge") -> ModelCard:
    return ModelCard(
        name=name,
        version=version,
        format="onnx",
        file="model.onnx",
        sha256=f"{version:0>64}",
        size_bytes=1234,
        inputs=[TensorSpec(name="input", datatype="FP32", shape=[-1, 64])],
        outputs=[TensorSpec(name="logits", datatype="FP32", shape=[-1, 10])],
    )


def reported(
    device_id: str,
    group: str = "default",
    ts: float = 0.0,
    desired_revision: int = 3,
    **models: str,
):
    return ReportedState(
        device_id=device_id,
        group=group,
        agent_version="0.1.0",
        labels={"site": "lab"},
        desired_revision=desired_revision,
        models={
            name: RunningModel(version=v, sha256="a" * 64, slot="slot-a")
            for name, v in models.items()
        },
        ts=ts,
    )


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry.db", clock=lambda: 1000.0)


def test_adding_a_version_twice_keeps_one_row(registry: Registry):
    registry.add_version(card("1.0"), "f" * 64)
    registry.add_version(card("1.0"), "e" * 64)
    rows = registry.versions("digits-edge")
    assert len(rows) == 1
    assert rows[0].sha256 == "f" * 64 and rows[0].card == card("1.0") and rows[0].size == 1234


def test_versions_are_ordered_numerically(registry: Registry):
    for version in ("1.10", "1.9", "2.0"):
        registry.add_version(card(version), "f" * 64)
    assert [row.version for row in registry.versions()] == ["1.9", "1.10", "2.0"]


def test_a_version_that_cannot_be_ordered_is_refused(registry: Registry):
    with pytest.raises(InvalidInput):
        registry.add_version(card("latest"), "f" * 64)


def test_unknown_version_is_none(registry: Registry):
    assert registry.version("digits-edge", "9.9") is None


def test_reported_state_records_group_labels_and_running_models(registry: Registry):
    registry.record_reported(reported("dev-1", group="east", **{"digits-edge": "1.0"}))
    device = registry.device("dev-1")
    assert device is not None
    assert (device.group, device.labels, device.agent_version) == ("east", {"site": "lab"}, "0.1.0")
    assert device.running_version("digits-edge") == "1.0"
    assert device.desired_revision == 3 and device.last_seen == 1000.0


def test_status_changes_online_without_clobbering_the_reported_state(registry: Registry):
    registry.record_reported(reported("dev-1", group="east", **{"digits-edge": "1.0"}))
    registry.record_status(DeviceStatus(device_id="dev-1", online=True))
    registry.record_status(DeviceStatus(device_id="dev-1", online=False))
    device = registry.device("dev-1")
    assert device is not None and not device.online
    assert device.group == "east" and device.running_version("digits-edge") == "1.0"


def test_status_of_a_new_device_creates_it_with_defaults(registry: Registry):
    registry.record_status(DeviceStatus(device_id="dev-9", online=True, agent_version="0.2"))
    device = registry.device("dev-9")
    assert device is not None and device.online and device.group == "default"
    assert device.running == {} and device.agent_version == "0.2"


def test_online_devices_are_counted_from_their_last_status(registry: Registry):
    assert registry.count_online() == 0
    for device in ("dev-1", "dev-2", "dev-3"):
        registry.record_status(DeviceStatus(device_id=device, online=True))
    registry.record_status(DeviceStatus(device_id="dev-2", online=False))  # its last will
    assert registry.count_online() == 2


def test_last_seen_never_moves_backwards(registry: Registry):
    registry.record_reported(reported("dev-1", ts=5000.0))
    registry.record_reported(reported("dev-1", ts=4000.0))
    device = registry.device("dev-1")
    assert device is not None and device.last_seen == 5000.0


def test_devices_are_listed_in_id_order_and_filtered_by_group(registry: Registry):
    for device_id, group in (("dev-3", "east"), ("dev-1", "west"), ("dev-2", "east")):
        registry.record_reported(reported(device_id, group=group))
    assert [d.device_id for d in registry.devices()] == ["dev-1", "dev-2", "dev-3"]
    assert [d.device_id for d in registry.devices("east")] == ["dev-2", "dev-3"]


def test_desired_state_survives_reopening(tmp_path: Path):
    envelope = SignedManifest(manifest="bWFuaWZlc3Q=", signature="c2ln", key_id="k1")
    state = DesiredState(device_id="dev-1", revision=4, models={"digits-edge": envelope})
    Registry(tmp_path / "r.db").save_desired(state)
    reopened = Registry(tmp_path / "r.db")
    assert reopened.desired("dev-1") == state
    assert reopened.all_desired() == [state]
    assert reopened.desired("dev-2") is None


def test_next_desired_revision_is_ours_and_never_what_the_device_says(registry: Registry):
    first = registry.next_desired_revision("dev-1")
    registry.save_desired(DesiredState(device_id="dev-1", revision=first))
    registry.record_reported(reported("dev-1", desired_revision=MAX_REVISION))

    assert registry.next_desired_revision("dev-1") == first + 1


def test_next_desired_revision_is_at_least_the_clock_in_ms(tmp_path: Path):
    now = [1_000.0]
    registry = Registry(tmp_path / "r.db", clock=lambda: now[0])
    registry.save_desired(DesiredState(device_id="dev-1", revision=7))  # an older backup
    assert registry.next_desired_revision("dev-1") == 1_000_000
    now[0] = 0.0  # a clock that went back still cannot go below our own sequence
    registry.save_desired(DesiredState(device_id="dev-1", revision=1_000_000))
    assert registry.next_desired_revision("dev-1") == 1_000_001


def test_an_issue_is_found_only_for_the_device_it_was_issued_to(registry: Registry):
    registry.record_issue("dev-1", "digits-edge", "2.0", "u" * 32, "p" * 64, 7)
    issue = registry.issue("dev-1", "u" * 32)
    assert issue is not None and (issue.version, issue.chunk_count) == ("2.0", 7)
    assert registry.issue("dev-2", "u" * 32) is None
