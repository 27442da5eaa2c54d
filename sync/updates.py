"""Turn "device X should run M@V" into a signed manifest on the device's retained topic.

The payload is chosen per device: a delta against the artifact the device *reports*
running when the store has that artifact (``wire.delta.build_payload`` keeps the delta
only when it is smaller than the full zstd), else the full artifact, in the newest
tensor-delta format the device's agent release applies (``tensor_format_for``). A
payload is built once per (base, new, format) and stored content-addressed, so a
thousand devices on the same base share one file. A payload of ``bulk_min_bytes`` or more
is also published for a static HTTP server (``sync.bulk``) and its manifest names that
URL, so the bytes may leave the broker. With ``builds`` (the service), a
payload not yet in the store is built in a worker process: ``issue`` raises
``BuildPending`` and remembers the device, and ``ready_waiting`` (called on the core's
tick) hands back every update whose payload has since been built, to be issued.

The manifest lists each chunk's sha256, is signed with the operator key, and replaces
that model's entry in the device's ``DesiredState`` under a new revision;
``registry.record_issue`` is what later lets the device fetch the chunks.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgeserve.security.signing import OperatorKey
from edgeserve.wire import topics
from edgeserve.wire.delta import tensor_format_for
from edgeserve.wire.errors import IntegrityError, InvalidInput, ModelNotFound
from edgeserve.wire.manifest import (
    INLINE_BANK_SINCE,
    PayloadSpec,
    SelfTest,
    SignedManifest,
    UpdateManifest,
    version_key,
)
from edgeserve.wire.sync_messages import DesiredState
from sync.artifacts import ArtifactStore, CachedPayload
from sync.builds import BuildKey, BuildPending, PayloadBuilds, build_into_store
from sync.bulk import BulkPublisher
from sync.metrics import SyncMetrics
from sync.registry import Registry
from sync.views import VersionRow

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One MQTT message the service should publish."""

    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 1


def desired_message(state: DesiredState) -> Outgoing:
    return Outgoing(topics.desired(state.device_id), state.to_bytes(), retain=True)


@dataclass(frozen=True, slots=True)
class Waiting:
    """An update that waits for its payload's build."""

    device_id: str
    model: str
    version: str
    rollback: bool


@dataclass(frozen=True, slots=True)
class Issued:
    """An update issued to one device: its new desired state and the payload it fetches."""

    state: DesiredState
    spec: PayloadSpec

    @property
    def message(self) -> Outgoing:
        return desired_message(self.state)


class UpdateIssuer:
    """Builds, signs and records per-device manifests; lives on the registry's thread."""

    def __init__(
        self,
        registry: Registry,
        store: ArtifactStore,
        key: OperatorKey,
        chunk_size: int,
        manifest_ttl_s: float,
        clock: Callable[[], float] = time.time,
        builds: PayloadBuilds | None = None,
        bulk: BulkPublisher | None = None,
    ) -> None:
        self.registry = registry
        self.store = store
        self.key = key
        self.chunk_size = chunk_size
        self.manifest_ttl_s = manifest_ttl_s
        self.clock = clock
        self.builds = builds
        self.bulk = bulk
        # Per build, the update each (device, model) waits for: asked again, the last wins.
        self._waiting: dict[BuildKey, dict[tuple[str, str], Waiting]] = {}
        self._failed: set[BuildKey] = set()

    def issue(self, device_id: str, model: str, version: str, rollback: bool = False) -> Issued:
        """Sign ``model@version`` for ``device_id`` and make it that device's desire.

        Raises BuildPending when the payload is being built in the worker (the update
        is then handed back by :meth:`ready_waiting`).
        """
        target = self._version(model, version)
        for waiting in self._waiting.values():  # a newer desire replaces a waiting one
            waiting.pop((device_id, model), None)
        try:
            spec = self._payload_for(device_id, target)
        except BuildPending as pending:
            waiting = self._waiting.setdefault(pending.key, {})
            waiting[(device_id, model)] = Waiting(device_id, model, version, rollback)
            raise
        now = self.clock()
        manifest = UpdateManifest(
            model=model,
            version=version,
            rollback=rollback,
            issued_at=now,
            expires_at=now + self.manifest_ttl_s,
            card=target.card,
            payload=spec,
            self_test=self._self_test(target),
            bank=self._inline_bank(device_id, target),
        )
        state = self._desire(device_id, model, manifest, now)
        self.registry.record_issue(
            device_id, model, version, spec.update_id, spec.sha256, len(spec.chunks)
        )
        log.info(
            "update issued",
            extra={
                "device": device_id,
                "model": model,
                "version": version,
                "rollback": rollback,
                "encoding": spec.encoding,
                "base_version": spec.base_version,
                "payload_bytes": spec.size,
                "revision": state.revision,
            },
        )
        return Issued(state, spec)

    def ready_waiting(self, metrics: SyncMetrics) -> list[Waiting]:
        """The updates whose payload build finished since the last call, to issue now
        (``handlers.issue_built``). A failed build is not retried: its devices get the
        full payload instead."""
        if self.builds is None:
            return []
        ready: list[Waiting] = []
        for finished in self.builds.finished():
            metrics.payload_builds.labels("failed" if finished.payload is None else "done").inc()
            if finished.payload is None:
                self._failed.add(finished.key)
            ready += self._waiting.pop(finished.key, {}).values()
        metrics.payload_builds_running.clear()
        for progress in self.builds.progress():
            metrics.payload_builds_running.labels(progress.stage).inc()
        return ready

    def close(self) -> None:
        if self.builds is not None:
            self.builds.close()

    def refresh_expiring(self, margin_s: float) -> list[Issued]:
        """Re-sign every desired manifest that expires within ``margin_s``.

        Desired states are retained for devices that may stay offline for a long time; a
        manifest that expired on the broker would be refused when the device returns. A
        device whose payload must be built anew (its agent was upgraded, say) gets its
        refreshed manifest from ``handlers.issue_built`` once the build is done.
        """
        refreshed = []
        deadline = self.clock() + margin_s
        for state in self.registry.all_desired():
            for model, envelope in state.models.items():
                manifest = _own_manifest(envelope)
                if manifest.expires_at > deadline:
                    continue
                try:
                    issued = self.issue(state.device_id, model, manifest.version, manifest.rollback)
                except BuildPending:
                    continue
                refreshed.append(issued)
        return refreshed

    def _version(self, model: str, version: str) -> VersionRow:
        row = self.registry.version(model, version)
        if row is None or not self.store.has_artifact(row.sha256):
            raise ModelNotFound(f"{model} v{version} is not registered with its artifact")
        return row

    def _payload_for(self, device_id: str, target: VersionRow) -> PayloadSpec:
        base_version, base_sha = self._base(device_id, target)
        tensor_format = self._tensor_format(device_id)
        if (base_sha, target.sha256, tensor_format) in self._failed:
            base_version, base_sha = None, None
        cached = self.store.cached_delta(base_sha, target.sha256, tensor_format)
        if cached is None:
            cached = self._build((base_sha, target.sha256, tensor_format))
        if cached.encoding == "zstd":
            base_version, base_sha = None, None
        url = self._bulk_url(cached)
        # Every device on the same base gets the same payload: hash its chunks once.
        known = self.store.spec(cached.sha256[:32])
        if known and (known.sha256, known.chunk_size, known.url) == (
            cached.sha256,
            self.chunk_size,
            url,
        ):
            return known
        spec = PayloadSpec(
            encoding=cached.encoding,
            base_version=base_version,
            base_sha256=base_sha,
            sha256=cached.sha256,
            size=cached.size,
            chunk_size=self.chunk_size,
            chunks=self._chunk_hashes(cached.sha256),
            url=url,
        )
        self.store.save_spec(spec)
        return spec

    def _bulk_url(self, cached: CachedPayload) -> str | None:
        """Where a large payload is also served over HTTP (published there first)."""
        if self.bulk is None or not self.bulk.wants(cached.size):
            return None
        return self.bulk.publish(self.store.payload_path(cached.sha256), cached.sha256)

    def _base(self, device_id: str, target: VersionRow) -> tuple[str | None, str | None]:
        """The artifact the device reports running, if we hold it and it is another one."""
        device = self.registry.device(device_id)
        running = device.running.get(target.model) if device is not None else None
        if running is None or running.sha256 == target.sha256:
            return None, None
        if not self.store.has_artifact(running.sha256):
            return None, None
        return running.version, running.sha256

    def _inline_bank(self, device_id: str, target: VersionRow) -> str | None:
        """The target's reference bank (base64) if the device may not hold it yet: not
        when its running version has the same bank (it copies that from its serving
        slot), nor for an agent too old to take it (it keeps its max-probability score)."""
        bank = target.card.bank
        device = self.registry.device(device_id)
        if bank is None or device is None or not self.store.has_artifact(bank.sha256):
            return None
        if not _takes_inline_bank(device.agent_version):
            return None
        running = device.running.get(target.model)
        held = self.registry.version(target.model, running.version) if running else None
        if held is not None and held.card.bank is not None and held.card.bank.sha256 == bank.sha256:
            return None
        return base64.b64encode(self.store.read_artifact(bank.sha256)).decode()

    def _tensor_format(self, device_id: str) -> int:
        device = self.registry.device(device_id)
        return tensor_format_for(device.agent_version if device is not None else "")

    def _build(self, key: BuildKey) -> CachedPayload:
        if self.builds is None:
            return build_into_store(self.store, key)
        if key in self._failed:
            raise IntegrityError(f"no payload could be built for artifact {key[1][:12]}")
        self.builds.start(key)
        raise BuildPending(
            f"payload for artifact {key[1][:12]} is being built; the update follows when it is",
            key,
        )

    def _chunk_hashes(self, payload_sha: str) -> list[str]:
        data = self.store.read_payload(payload_sha)
        size = self.chunk_size
        return [
            hashlib.sha256(data[start : start + size]).hexdigest()
            for start in range(0, max(len(data), 1), size)
        ]

    def _self_test(self, target: VersionRow) -> SelfTest:
        stored = self.store.self_test(target.sha256)
        if stored is not None:
            return stored
        from sync.golden import compute_self_test

        computed = compute_self_test(target.card, self.store.artifact_path(target.sha256))
        self.store.save_self_test(target.sha256, computed)
        return computed

    def _desire(
        self, device_id: str, model: str, manifest: UpdateManifest, now: float
    ) -> DesiredState:
        current = self.registry.desired(device_id)
        models = dict(current.models) if current is not None else {}
        models[model] = self.key.sign(manifest)
        state = DesiredState(
            device_id=device_id,
            revision=self.registry.next_desired_revision(device_id),
            models=models,
            router=dict(current.router) if current is not None else {},
            issued_at=now,
        )
        self.registry.save_desired(state)
        return state


def _own_manifest(envelope: SignedManifest) -> UpdateManifest:
    """A manifest this service signed and stored itself (so no signature check, no expiry)."""
    return UpdateManifest.model_validate_json(base64.b64decode(envelope.manifest))


def _takes_inline_bank(agent_version: str) -> bool:
    try:
        release = version_key(agent_version.split("+")[0])
    except InvalidInput:  # an empty or non-numeric version: assume an old agent
        return False
    return release >= version_key(INLINE_BANK_SINCE)
