"""Per-device signed manifests: delta against what the device runs, hashed chunks, signature."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from edge_agent.store import VerifiedModel
from edge_agent.updates.selftest import run_self_test
from edgeserve.polling import wait_until
from edgeserve.runtimes import RuntimeOptions
from edgeserve.security.signing import ensure_operator_key
from edgeserve.wire import topics
from edgeserve.wire.delta import apply_payload
from edgeserve.wire.errors import IntegrityError, ModelNotFound, SignatureError
from edgeserve.wire.manifest import INLINE_BANK_SINCE, UpdateManifest, verify_signed_manifest
from edgeserve.wire.sync_messages import ReportedState, RunningModel
from sync.builds import BuildPending, PayloadBuilds
from sync.handlers import issue_built
from tests.unit.sync_setup import MODEL, Fleet, build_fleet


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return build_fleet(tmp_path)


def _manifest(fleet: Fleet, device_id: str) -> UpdateManifest:
    state = fleet.registry.desired(device_id)
    assert state is not None
    return verify_signed_manifest(state.models[MODEL], fleet.key.public)


def test_device_running_v1_gets_a_delta_smaller_than_the_full_payload(fleet: Fleet) -> None:
    fleet.report("fresh")
    fleet.report("on-v1", running="1")
    full = fleet.issuer.issue("fresh", MODEL, "2").spec
    delta = fleet.issuer.issue("on-v1", MODEL, "2").spec
    assert full.encoding == "zstd" and full.base_version is None
    assert delta.encoding in ("zstd-patch", "tensor-delta")
    assert (delta.base_version, delta.base_sha256) == ("1", fleet.cards["1"].sha256)
    assert delta.size < full.size


def test_manifest_verifies_with_the_operator_public_key(fleet: Fleet) -> None:
    fleet.report("on-v1", running="1")
    fleet.issuer.issue("on-v1", MODEL, "2")
    manifest = _manifest(fleet, "on-v1")
    assert (manifest.model, manifest.version, manifest.rollback) == (MODEL, "2", False)
    assert manifest.card.sha256 == fleet.cards["2"].sha256
    assert manifest.expires_at > manifest.issued_at


def test_manifest_does_not_verify_with_another_key(fleet: Fleet, tmp_path: Path) -> None:
    fleet.report("on-v1", running="1")
    state = fleet.issuer.issue("on-v1", MODEL, "2").state
    stranger = ensure_operator_key(tmp_path / "stranger")
    with pytest.raises(SignatureError):
        verify_signed_manifest(state.models[MODEL], stranger.public)


def test_chunks_hash_match_and_reassemble_to_the_payload(fleet: Fleet) -> None:
    fleet.report("on-v1", running="1")
    spec = fleet.issuer.issue("on-v1", MODEL, "2").spec
    chunks = [
        fleet.store.read_chunk(spec.sha256, index, spec.chunk_size)
        for index in range(len(spec.chunks))
    ]
    assert [hashlib.sha256(chunk).hexdigest() for chunk in chunks] == spec.chunks
    payload = b"".join(chunks)
    assert hashlib.sha256(payload).hexdigest() == spec.sha256 and len(payload) == spec.size
    rebuilt = apply_payload(spec.encoding, payload, fleet.artifacts["1"], len(fleet.artifacts["2"]))
    assert rebuilt == fleet.artifacts["2"]


def test_issue_is_recorded_and_bumps_the_desired_revision(fleet: Fleet) -> None:
    fleet.report("on-v1", running="1")
    first = fleet.issuer.issue("on-v1", MODEL, "2")
    second = fleet.issuer.issue("on-v1", MODEL, "1", rollback=True)
    assert second.state.revision > first.state.revision
    issue = fleet.registry.issue("on-v1", first.spec.update_id)
    assert issue is not None
    assert (issue.version, issue.chunk_count) == ("2", len(first.spec.chunks))
    assert _manifest(fleet, "on-v1").rollback is True


def test_devices_on_the_same_base_share_one_payload(fleet: Fleet) -> None:
    for device in ("a", "b"):
        fleet.report(device, running="1")
    specs = [fleet.issuer.issue(device, MODEL, "2").spec for device in ("a", "b")]
    assert specs[0].sha256 == specs[1].sha256
    payloads = [p for p in (fleet.store.root / "payloads").rglob("*") if p.is_file()]
    assert len(payloads) == 1


def test_unknown_version_is_not_issued(fleet: Fleet) -> None:
    fleet.report("on-v1", running="1")
    with pytest.raises(ModelNotFound):
        fleet.issuer.issue("on-v1", MODEL, "9")


def test_golden_self_test_passes_on_the_new_model_and_fails_on_the_old(fleet: Fleet) -> None:
    fleet.report("on-v1", running="1")
    fleet.issuer.issue("on-v1", MODEL, "2")
    self_test = _manifest(fleet, "on-v1").self_test
    assert [t.shape for t in self_test.inputs] == [[2, 64]]

    run_self_test(_verified(fleet, "2"), self_test, RuntimeOptions())  # the device's own check
    with pytest.raises(IntegrityError):
        run_self_test(_verified(fleet, "1"), self_test, RuntimeOptions())


def _verified(fleet: Fleet, version: str) -> VerifiedModel:
    card = fleet.cards[version]
    return VerifiedModel(card, fleet.store.artifact_path(card.sha256), "slot-a")


def test_manifests_near_expiry_are_signed_again_with_a_new_revision(fleet: Fleet) -> None:
    fleet.report("on-v1", running="1")
    first = fleet.issuer.issue("on-v1", MODEL, "2", rollback=True)
    assert fleet.issuer.refresh_expiring(margin_s=60) == []
    refreshed = fleet.issuer.refresh_expiring(margin_s=2 * fleet.issuer.manifest_ttl_s)
    assert len(refreshed) == 1 and refreshed[0].state.revision > first.state.revision
    manifest = _manifest(fleet, "on-v1")
    assert (manifest.version, manifest.rollback) == ("2", True)


def _report_agent(fleet: Fleet, device_id: str, agent_version: str) -> None:
    running = RunningModel(version="1", sha256=fleet.cards["1"].sha256, slot="slot-a")
    fleet.registry.record_reported(
        ReportedState(device_id=device_id, agent_version=agent_version, models={MODEL: running})
    )


@pytest.mark.parametrize(
    ("agent_version", "refused"), [("0.1.0", "tensor-delta-2"), ("0.2.0", "tensor-delta")]
)
def test_each_agent_release_gets_a_delta_it_applies(
    fleet: Fleet, agent_version: str, refused: str
) -> None:
    _report_agent(fleet, "dev", agent_version)
    spec = fleet.issuer.issue("dev", MODEL, "2").spec
    assert spec.encoding != refused and spec.base_version == "1"
    payload = fleet.store.read_payload(spec.sha256)
    rebuilt = apply_payload(spec.encoding, payload, fleet.artifacts["1"], len(fleet.artifacts["2"]))
    assert rebuilt == fleet.artifacts["2"]


def test_payloads_for_old_and_new_agents_are_cached_apart(fleet: Fleet) -> None:
    _report_agent(fleet, "old", "0.1.0")
    _report_agent(fleet, "new", "0.2.0")
    fleet.issuer.issue("old", MODEL, "2")
    fleet.issuer.issue("new", MODEL, "2")
    base, new = fleet.cards["1"].sha256, fleet.cards["2"].sha256
    old_cached, new_cached = (fleet.store.cached_delta(base, new, f) for f in (1, 2))
    assert old_cached is not None and new_cached is not None
    assert old_cached.encoding != "tensor-delta-2" and new_cached.encoding != "tensor-delta"


def test_a_refresh_that_needs_a_new_build_issues_the_rest_and_that_one_later(
    tmp_path: Path,
) -> None:
    fleet = build_fleet(tmp_path)
    _report_agent(fleet, "old", "0.1.0")
    _report_agent(fleet, "new", "0.1.0")
    for device in ("old", "new"):
        fleet.issuer.issue(device, MODEL, "2")
    _report_agent(fleet, "new", "0.2.0")  # upgraded: its payload is built anew
    builds = PayloadBuilds(fleet.store.root)
    fleet.issuer.builds = builds
    try:
        refreshed = fleet.issuer.refresh_expiring(margin_s=2 * fleet.issuer.manifest_ttl_s)
        assert [issued.state.device_id for issued in refreshed] == ["old"]
        later = wait_until(lambda: issue_built(fleet.ctx), 120, "the new build")
    finally:
        builds.close()
    assert [message.topic for message in later] == [topics.desired("new")]


def test_a_device_waiting_for_a_build_gets_only_its_latest_desire(tmp_path: Path) -> None:
    fleet = build_fleet(tmp_path)
    _report_agent(fleet, "dev", "0.2.0")
    builds = PayloadBuilds(fleet.store.root)
    fleet.issuer.builds = builds
    try:
        for rollback in (False, True):  # asked twice while its payload builds
            with pytest.raises(BuildPending):
                fleet.issuer.issue("dev", MODEL, "2", rollback=rollback)
        later = wait_until(lambda: issue_built(fleet.ctx), 120, "the build")
    finally:
        builds.close()
    assert len(later) == 1
    assert _manifest(fleet, "dev").rollback is True


def _version_with_bank(fleet: Fleet, version: str, bank: bytes) -> None:
    """``version``: v2's bytes under a card naming another reference bank, stored."""
    named = fleet.cards["2"].bank
    assert named is not None  # the packaged cards carry the digits bank
    sha = fleet.store.put_artifact(bank)
    card = fleet.cards["2"].model_copy(
        update={
            "version": version,
            "bank": named.model_copy(update={"sha256": sha, "size_bytes": len(bank)}),
        }
    )
    fleet.registry.add_version(card, card.sha256)


def test_a_new_bank_travels_inline_to_an_agent_that_takes_it(fleet: Fleet) -> None:
    _version_with_bank(fleet, "3", b"another bank")
    _report_agent(fleet, "dev", INLINE_BANK_SINCE)
    fleet.issuer.issue("dev", MODEL, "3")
    assert _manifest(fleet, "dev").bank_bytes() == b"another bank"


def test_a_bank_the_device_already_holds_is_not_sent_again(fleet: Fleet) -> None:
    _report_agent(fleet, "dev", INLINE_BANK_SINCE)  # on v1, whose bank v2 keeps
    fleet.issuer.issue("dev", MODEL, "2")
    assert _manifest(fleet, "dev").bank is None


def test_an_agent_too_old_for_an_inline_bank_gets_none(fleet: Fleet) -> None:
    _version_with_bank(fleet, "3", b"another bank")
    _report_agent(fleet, "dev", "0.1.0")
    fleet.issuer.issue("dev", MODEL, "3")
    assert _manifest(fleet, "dev").bank is None
