"""The device updater: only signed, forward, intact, self-tested models ever serve.

Real parts throughout: the packaged ONNX models (int8 ``digits-edge`` v1 is seeded; the
fp32 build of the same network plays v2), a real operator key, manifests signed with
it, a real ``AgentCore`` whose ``load`` is the hot-swap callback, and a model store on
disk. Crashes are simulated by raising from the updater's step hook and then reopening
everything from disk, as a restarted agent would.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import AgentConfig
from edge_agent.core import AgentCore
from edge_agent.store import ModelStore
from edge_agent.updates import Updater
from edgeserve.artifacts import packaged_artifacts
from edgeserve.runtimes import RuntimeOptions, open_session
from edgeserve.security.signing import OperatorKey, ensure_operator_key
from edgeserve.wire.delta import Payload, candidates
from edgeserve.wire.errors import (
    IntegrityError,
    ModelNotFound,
    PayloadTooLarge,
    SignatureError,
    Unavailable,
    UpdateRefused,
)
from edgeserve.wire.manifest import (
    GoldenTensor,
    PayloadSpec,
    SelfTest,
    SignedManifest,
    UpdateManifest,
)
from edgeserve.wire.model_card import ModelCard

MODEL = "digits-edge"
CHUNK = 4096


class SimulatedCrash(BaseException):
    """Escapes every ``except Exception``, like the process dying at that instant."""


@dataclass(frozen=True)
class Release:
    envelope: SignedManifest
    manifest: UpdateManifest
    chunks: list[bytes]

    @property
    def update_id(self) -> str:
        return self.manifest.payload.update_id


def _artifact(version: str) -> tuple[ModelCard, bytes]:
    """v1 (and odd versions) are the int8 model, v2 (and even ones) the fp32 build."""
    source = packaged_artifacts()
    seeded = ModelCard.load(source / f"{MODEL}.card.json")
    if int(version.split(".")[0]) % 2:
        data = (source / seeded.file).read_bytes()
        return seeded.model_copy(update={"version": version}), data
    data = (source / "digits-edge-fp32.onnx").read_bytes()
    card = seeded.model_copy(
        update={
            "version": version,
            "precision": "fp32",
            "sha256": hashlib.sha256(data).hexdigest(),
            "size_bytes": len(data),
        }
    )
    return card, data


def _golden(card: ModelCard, data: bytes, workdir: Path) -> SelfTest:
    path = workdir / f"golden-{card.sha256[:12]}.onnx"
    path.write_bytes(data)
    inputs = np.random.default_rng(0).random((2, 64), dtype=np.float32)
    session = open_session("onnx", path, RuntimeOptions())
    logits = session.run({"input": inputs}, ["logits"])["logits"]
    session.close()
    return SelfTest(
        inputs=[
            GoldenTensor(name="input", datatype="FP32", shape=[2, 64], data=inputs.ravel().tolist())
        ],
        expected=[
            GoldenTensor(
                name="logits", datatype="FP32", shape=[2, 10], data=logits.ravel().tolist()
            )
        ],
    )


def _release(
    key: OperatorKey,
    workdir: Path,
    version: str,
    *,
    payload: Payload | None = None,
    base: tuple[ModelCard, bytes] | None = None,
    rollback: bool = False,
    issued_at: float | None = None,
    expires_in: float = 3600.0,
    skew_expected: float = 0.0,
    bank: bytes | None = None,
) -> Release:
    card, data = _artifact(version)
    if bank is not None and card.bank is not None:
        sha = hashlib.sha256(bank).hexdigest()
        card = card.model_copy(
            update={"bank": card.bank.model_copy(update={"sha256": sha, "size_bytes": len(bank)})}
        )
    payload = payload or Payload("zstd", candidates(data, None)[0].data)
    chunks = [payload.data[i : i + CHUNK] for i in range(0, len(payload.data), CHUNK)]
    self_test = _golden(card, data, workdir)
    if skew_expected:
        wrong = [value + skew_expected for value in self_test.expected[0].data]
        expected = self_test.expected[0].model_copy(update={"data": wrong})
        self_test = self_test.model_copy(update={"expected": [expected]})
    issued = time.time() if issued_at is None else issued_at
    manifest = UpdateManifest(
        model=MODEL,
        version=version,
        rollback=rollback,
        issued_at=issued,
        expires_at=issued + expires_in,
        card=card,
        payload=PayloadSpec(
            encoding=payload.encoding,
            base_version=base[0].version if base else None,
            base_sha256=base[0].sha256 if base else None,
            sha256=hashlib.sha256(payload.data).hexdigest(),
            size=len(payload.data),
            chunk_size=CHUNK,
            chunks=[hashlib.sha256(chunk).hexdigest() for chunk in chunks],
        ),
        self_test=self_test,
        bank=base64.b64encode(bank).decode() if bank is not None else None,
    )
    return Release(key.sign(manifest), manifest, chunks)


def _delta(version: str, base_version: str) -> tuple[Payload, tuple[ModelCard, bytes]]:
    base = _artifact(base_version)
    _, data = _artifact(version)
    patch = next(p for p in candidates(data, base[1]) if p.encoding == "zstd-patch")
    return patch, base


def _download(updater: Updater, release: Release, only: int | None = None) -> None:
    for index in updater.missing(release.update_id, limit=len(release.chunks))[:only]:
        updater.accept_chunk(release.update_id, index, release.chunks[index])


@pytest.fixture
def key(tmp_path: Path) -> OperatorKey:
    return ensure_operator_key(tmp_path / "operator")


@pytest.fixture
def config(tmp_path: Path) -> AgentConfig:
    return AgentConfig(state_dir=tmp_path / "agent", models=[MODEL], device_id="dev-1")


@pytest.fixture
def core(config: AgentConfig):
    core = AgentCore.from_config(config)
    core.start()
    yield core
    core.close()


def _updater(core: AgentCore, key: OperatorKey, config: AgentConfig, **kwargs) -> Updater:
    return Updater(core.store, config.state_dir, key.public, core.load, device_id="dev-1", **kwargs)


@pytest.fixture
def updater(core, key, config) -> Updater:
    return _updater(core, key, config)


def _install(updater: Updater, release: Release):
    session = updater.offer(release.envelope)
    assert session is not None
    _download(updater, release)
    return updater.finish(release.update_id)


# -- the happy paths ---------------------------------------------------------------------


def test_a_bank_sent_with_the_update_is_installed_beside_the_new_model(
    updater, core, key, tmp_path
):
    bank = (packaged_artifacts() / "digits-edge.bank.npz").read_bytes() + b"\0"
    release = _release(key, tmp_path, "2", bank=bank)
    assert _install(updater, release).ok
    served = core.store.load_verified(MODEL)
    assert served.card.bank is not None
    assert (served.artifact.parent / served.card.bank.file).read_bytes() == bank


def test_full_update_is_installed_and_served(updater, core, key, tmp_path, config):
    release = _release(key, tmp_path, "2")
    result = _install(updater, release)
    assert (result.ok, result.stage, result.running_version) == (True, "done", "2")
    assert (result.device_id, result.update_id) == ("dev-1", release.update_id)
    assert core.model(MODEL).version == "2"
    assert core.store.load_verified(MODEL).card.sha256 == release.manifest.card.sha256
    assert core.store.rollback(MODEL).card.version == "1"
    assert not (config.state_dir / "downloads" / release.update_id).exists()
    assert updater.pending() == []


def test_delta_is_applied_to_the_bytes_of_the_active_slot(updater, core, key, tmp_path):
    patch, base = _delta("2", base_version="1")
    release = _release(key, tmp_path, "2", payload=patch, base=base)
    result = _install(updater, release)
    assert result.ok, result.reason
    assert core.model(MODEL).version == "2"


def test_offer_of_the_running_version_is_none(updater, key, tmp_path):
    assert updater.offer(_release(key, tmp_path, "1").envelope) is None


def test_redelivered_chunk_is_accepted_once(updater, key, tmp_path):
    release = _release(key, tmp_path, "2")
    updater.offer(release.envelope)
    assert updater.accept_chunk(release.update_id, 0, release.chunks[0]) is True
    assert updater.accept_chunk(release.update_id, 0, release.chunks[0]) is False
    assert updater.session(release.update_id).received_chunks == 1


# -- signatures and trust ----------------------------------------------------------------


def test_manifest_signed_by_another_key_is_refused(updater, tmp_path):
    stranger = ensure_operator_key(tmp_path / "stranger")
    with pytest.raises(SignatureError, match="does not verify"):
        updater.offer(_release(stranger, tmp_path, "2").envelope)


def test_manifest_altered_after_signing_is_refused(updater, key, tmp_path):
    genuine = _release(key, tmp_path, "2").envelope
    other = _release(key, tmp_path, "4").envelope
    forged = genuine.model_copy(update={"manifest": other.manifest})
    with pytest.raises(SignatureError):
        updater.offer(forged)


def test_expired_manifest_is_refused(updater, key, tmp_path):
    stale = _release(key, tmp_path, "2", issued_at=time.time() - 7200, expires_in=3600)
    with pytest.raises(UpdateRefused, match="expired"):
        updater.offer(stale.envelope)


def test_older_version_without_signed_rollback_is_refused(updater, key, tmp_path):
    assert _install(updater, _release(key, tmp_path, "2")).ok
    with pytest.raises(UpdateRefused, match="older than the running v2"):
        updater.offer(_release(key, tmp_path, "1").envelope)


def test_signed_rollback_newer_than_the_last_trusted_manifest_is_installed(
    updater, core, key, tmp_path
):
    now = time.time()
    assert _install(updater, _release(key, tmp_path, "2", issued_at=now)).ok
    rollback = _release(key, tmp_path, "1", rollback=True, issued_at=now + 1)
    result = _install(updater, rollback)
    assert (result.ok, result.running_version) == (True, "1")
    assert core.model(MODEL).version == "1"


def test_replayed_manifest_is_refused_after_a_rollback(updater, key, tmp_path):
    now = time.time()
    forward = _release(key, tmp_path, "2", issued_at=now)
    assert _install(updater, forward).ok
    assert _install(updater, _release(key, tmp_path, "1", rollback=True, issued_at=now + 1)).ok
    with pytest.raises(UpdateRefused, match="replay"):
        updater.offer(forward.envelope)


def test_rollback_issued_before_the_last_trusted_manifest_is_refused(updater, key, tmp_path):
    now = time.time()
    old_rollback = _release(key, tmp_path, "1", rollback=True, issued_at=now)
    assert _install(updater, _release(key, tmp_path, "2", issued_at=now + 1)).ok
    with pytest.raises(UpdateRefused, match="not newer than the last trusted"):
        updater.offer(old_rollback.envelope)


def test_trust_survives_a_restart(updater, core, key, tmp_path, config):
    now = time.time()
    forward = _release(key, tmp_path, "2", issued_at=now)
    assert _install(updater, forward).ok
    assert _install(updater, _release(key, tmp_path, "1", rollback=True, issued_at=now + 1)).ok
    restarted = _updater(core, key, config)
    with pytest.raises(UpdateRefused, match="replay"):
        restarted.offer(forward.envelope)


# -- payload integrity -------------------------------------------------------------------


def test_tampered_chunk_is_refused_and_not_stored(updater, key, tmp_path):
    release = _release(key, tmp_path, "2")
    updater.offer(release.envelope)
    tampered = bytes([release.chunks[0][0] ^ 1]) + release.chunks[0][1:]
    with pytest.raises(IntegrityError, match="chunk 0 sha256"):
        updater.accept_chunk(release.update_id, 0, tampered)
    assert updater.missing(release.update_id)[0] == 0
    assert updater.stats.chunks_rejected == 1


def test_chunk_index_out_of_range_is_an_integrity_error(updater, key, tmp_path):
    release = _release(key, tmp_path, "2")
    updater.offer(release.envelope)
    with pytest.raises(IntegrityError, match="out of range"):
        updater.accept_chunk(release.update_id, len(release.chunks), release.chunks[0])


def test_unknown_update_id_is_not_found(updater):
    with pytest.raises(ModelNotFound):
        updater.accept_chunk("0" * 32, 0, b"x")
    with pytest.raises(ModelNotFound):
        updater.missing("../../etc")
    with pytest.raises(ModelNotFound):
        updater.finish("0" * 32)


def test_finish_before_every_chunk_arrived_is_unavailable(updater, key, tmp_path):
    release = _release(key, tmp_path, "2")
    updater.offer(release.envelope)
    _download(updater, release, only=1)
    with pytest.raises(Unavailable, match="still misses"):
        updater.finish(release.update_id)


def test_delta_against_a_version_the_device_does_not_run_is_refused(updater, key, tmp_path):
    patch, base = _delta("3", base_version="2")
    with pytest.raises(UpdateRefused, match="wrong base"):
        updater.offer(_release(key, tmp_path, "3", payload=patch, base=base).envelope)


# -- failures keep the old model ---------------------------------------------------------


def test_self_test_failure_keeps_the_old_model_serving(updater, core, key, tmp_path, config):
    serving = core.store.load_verified(MODEL)
    release = _release(key, tmp_path, "2", skew_expected=0.5)
    result = _install(updater, release)
    assert (result.ok, result.stage, result.running_version) == (False, "self_test", "1")
    assert "self-test output 'logits' differs" in result.reason
    assert core.model(MODEL).version == "1"
    assert core.store.load_verified(MODEL).slot == serving.slot
    assert not (config.state_dir / "downloads" / release.update_id).exists()
    with pytest.raises(UpdateRefused, match="failed before"):
        updater.offer(release.envelope)


def test_hot_swap_failure_switches_the_store_back(core, key, tmp_path, config):
    def refuse(name: str) -> None:
        raise Unavailable("runtime out of memory")

    updater = Updater(core.store, config.state_dir, key.public, refuse)
    result = _install(updater, _release(key, tmp_path, "2"))
    assert (result.ok, result.stage, result.running_version) == (False, "activate", "1")
    assert "runtime out of memory" in result.reason
    assert ModelStore(core.store.root).load_verified(MODEL).card.version == "1"


# -- restarts and crashes ----------------------------------------------------------------


def test_download_resumes_after_the_updater_is_recreated(updater, core, key, tmp_path, config):
    release = _release(key, tmp_path, "2")
    updater.offer(release.envelope)
    _download(updater, release, only=3)
    restarted = _updater(core, key, config)
    [session] = restarted.pending()
    assert (session.update_id, session.received_chunks) == (release.update_id, 3)
    assert 0 not in restarted.missing(release.update_id)
    _download(restarted, release)
    assert restarted.finish(release.update_id).ok
    assert core.model(MODEL).version == "2"


@pytest.mark.parametrize("step", ["rebuilt", "staged", "self_tested"])
def test_crash_before_the_switch_restarts_on_the_old_model_and_can_finish(
    step, core, key, tmp_path, config
):
    release = _release(key, tmp_path, "2")
    crashing = _crashing_updater(core, key, config, step)
    with pytest.raises(SimulatedCrash):
        _install(crashing, release)
    restarted = _restart(config)
    assert restarted.model(MODEL).version == "1"
    updater = _updater(restarted, key, config)
    [session] = updater.pending()
    assert session.complete
    assert updater.finish(release.update_id).ok
    assert restarted.model(MODEL).version == "2"
    restarted.close()


@pytest.mark.parametrize("step", ["switched", "activated", "trusted"])
def test_crash_after_the_switch_restarts_on_the_new_model_and_trusts_it(
    step, core, key, tmp_path, config
):
    now = time.time()
    release = _release(key, tmp_path, "2", issued_at=now)
    crashing = _crashing_updater(core, key, config, step)
    with pytest.raises(SimulatedCrash):
        _install(crashing, release)
    restarted = _restart(config)
    assert restarted.model(MODEL).version == "2"
    updater = _updater(restarted, key, config)
    assert updater.pending() == []
    assert not (config.state_dir / "downloads" / release.update_id).exists()
    assert updater.offer(release.envelope) is None
    with pytest.raises(UpdateRefused, match="not newer than the last trusted"):
        updater.offer(_release(key, tmp_path, "1", rollback=True, issued_at=now - 1).envelope)
    restarted.close()


def _crashing_updater(core: AgentCore, key: OperatorKey, config: AgentConfig, at: str) -> Updater:
    def on_step(step: str) -> None:
        if step == at:
            raise SimulatedCrash(step)

    return _updater(core, key, config, on_step=on_step)


def _restart(config: AgentConfig) -> AgentCore:
    core = AgentCore.from_config(config)
    core.start()
    return core


# -- one download per model --------------------------------------------------------------


def test_a_newer_manifest_replaces_an_unfinished_download(updater, key, tmp_path, config):
    now = time.time()
    first = _release(key, tmp_path, "2", issued_at=now)
    updater.offer(first.envelope)
    _download(updater, first, only=2)
    patch, base = _delta("3", base_version="1")
    second = _release(key, tmp_path, "3", payload=patch, base=base, issued_at=now + 1)
    updater.offer(second.envelope)
    assert [s.version for s in updater.pending()] == ["3"]
    assert not (config.state_dir / "downloads" / first.update_id).exists()
    with pytest.raises(UpdateRefused, match="older than the update in progress"):
        updater.offer(first.envelope)


def test_a_chunk_corrupted_on_disk_is_downloaded_again_after_restart(
    updater, core, key, tmp_path, config
):
    release = _release(key, tmp_path, "2")
    updater.offer(release.envelope)
    _download(updater, release, only=2)
    chunk = config.state_dir / "downloads" / release.update_id / "chunks" / "1"
    chunk.write_bytes(b"bit rot")
    restarted = _updater(core, key, config)
    assert restarted.missing(release.update_id, limit=2) == [1, 2]
    assert restarted.stats.chunks_rotted == 1


def test_artifact_over_the_device_limit_is_refused_before_download(core, key, tmp_path, config):
    updater = _updater(core, key, config, max_artifact_bytes=10_000)
    with pytest.raises(PayloadTooLarge):
        updater.offer(_release(key, tmp_path, "2").envelope)
