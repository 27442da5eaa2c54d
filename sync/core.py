"""The sync service's one core, and the single thread it lives on.

Everything that reads or writes the registry — device messages, rollout decisions, admin
requests — runs on one worker thread that owns the SQLite connection (``CoreThread``),
so the event loop never blocks on the database and no two writers ever race. The core
takes plain types and publishes through a callback (``MqttLink.publish`` is thread-safe);
the MQTT consumer and the admin API are thin adapters that call it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any, TypeVar

from edgeserve.security.signing import ensure_operator_key
from edgeserve.wire.errors import (
    IntegrityError,
    InvalidInput,
    ModelNotFound,
    Unavailable,
    UpdateRefused,
)
from edgeserve.wire.model_card import ModelCard
from sync.artifacts import ArtifactStore
from sync.builds import PayloadBuilds
from sync.bulk import bulk_publisher
from sync.cert_store import CertStatus
from sync.certs import FleetCertificates, check_device, fleet_certificates
from sync.config import SyncConfig
from sync.handlers import HandlerContext, dispatch, issue_assignments, issue_built
from sync.ingest import fleet_summary
from sync.metrics import SyncMetrics
from sync.registry import Registry
from sync.rollout import RolloutController, RolloutSpec
from sync.updates import Outgoing, UpdateIssuer, desired_message
from sync.views import DeviceRow, RolloutView, VersionRow, VersionSummary

log = logging.getLogger(__name__)
# How often retained manifests are checked for expiry; they live for days.
REFRESH_EVERY_S = 600.0
T = TypeVar("T")
Publish = Callable[[Outgoing], None]


def artifact_store(config: SyncConfig) -> ArtifactStore:
    return ArtifactStore(config.state_dir / "store")


class SyncCore:
    """Registry, artifact store, issuer and rollout controller, wired together."""

    def __init__(self, config: SyncConfig, metrics: SyncMetrics, publish: Publish) -> None:
        self.registry = Registry(config.registry_path)
        self.store = artifact_store(config)
        key = ensure_operator_key(config.keys_dir)
        issuer = UpdateIssuer(
            self.registry,
            self.store,
            key,
            config.chunk_size,
            config.manifest_ttl_s,
            builds=PayloadBuilds(self.store.root),
            bulk=bulk_publisher(config.bulk_dir, config.bulk_base_url, config.bulk_min_bytes),
        )
        self.controller = RolloutController(self.registry)
        self.certs = fleet_certificates(config, metrics.registry)
        self.ctx = HandlerContext(
            self.registry,
            self.store,
            issuer,
            self.controller,
            metrics,
            config.request_window,
            self.certs,
        )
        self.metrics = metrics
        self._publish = publish
        self._ttl_s = config.manifest_ttl_s
        self._last_refresh = -REFRESH_EVERY_S

    def handle(self, topic: str, payload: bytes) -> None:
        self._send(dispatch(self.ctx, topic, payload))

    def republish_desired(self) -> int:
        """Every persisted desired state again (retained), e.g. after a broker restart."""
        states = self.registry.all_desired()
        self._send(desired_message(state) for state in states)
        return len(states)

    def tick(self) -> None:
        self._send(issue_assignments(self.ctx, self.controller.tick()))
        self._send(issue_built(self.ctx))  # payloads built meanwhile
        self.metrics.set_rollout_states(Counter(row.state for row in self.registry.rollouts()))
        self.metrics.devices_online.set(self.registry.count_online())
        if self.certs is not None:
            self.certs.refresh_metrics()
        now = time.monotonic()
        if now - self._last_refresh >= REFRESH_EVERY_S:
            self._last_refresh = now
            refreshed = self.ctx.issuer.refresh_expiring(self._ttl_s / 4)
            self._send(issued.message for issued in refreshed)

    # -- admin operations ---------------------------------------------------------------

    def check_new_version(self, card: ModelCard, sha256: str) -> bool:
        """True if ``card``'s version is already registered with these bytes; raises if
        it is registered with other bytes (versions are immutable)."""
        existing = self.registry.version(card.name, card.version)
        if existing is not None and existing.sha256 != sha256:
            raise UpdateRefused(
                f"{card.name} v{card.version} already exists with other bytes; "
                "versions are immutable, push a new version"
            )
        return existing is not None

    def register_version(self, card: ModelCard, sha256: str) -> VersionRow:
        """Add a version; re-uploading identical bytes is fine, different bytes are not."""
        self.check_new_version(card, sha256)
        self.registry.add_version(card, sha256)
        row = self.registry.version(card.name, card.version)
        assert row is not None
        return row

    def add_bank(self, model: str, version: str, data: bytes) -> str:
        """Store the reference bank ``model@version``'s card names (its sha256 must match)."""
        row = self.registry.version(model, version)
        if row is None:
            raise ModelNotFound(f"{model} v{version} is not registered: upload the model first")
        bank = row.card.bank
        if bank is None:
            raise InvalidInput(f"the card of {model} v{version} names no reference bank")
        sha = hashlib.sha256(data).hexdigest()
        if sha != bank.sha256:
            raise IntegrityError(
                f"uploaded bank sha256 {sha[:12]} is not the card's {bank.sha256[:12]}"
            )
        return self.store.put_artifact(data)

    def start_rollout(self, spec: RolloutSpec) -> RolloutView:
        row = self.registry.version(spec.model, spec.version)
        bank = row.card.bank if row is not None else None
        if bank is not None and not self.store.has_artifact(bank.sha256):
            # Still served: devices route by max-probability until a bank arrives (and
            # count it). fleet push always sends the bank with the model.
            log.warning(
                "rolling out without the reference bank the card names",
                extra={"model": spec.model, "version": spec.version, "bank": bank.file},
            )
        rollout_id, assigns = self.controller.start(spec)
        self._send(issue_assignments(self.ctx, assigns))
        return self.controller.show(rollout_id)

    def rollback(self, rollout_id: int, reason: str) -> RolloutView:
        self._send(issue_assignments(self.ctx, self.controller.rollback(rollout_id, reason)))
        return self.controller.show(rollout_id)

    def builds(self) -> list[dict[str, object]]:
        """Payload builds running in the worker: what they build and how far they are."""
        builds = self.ctx.issuer.builds
        return [
            {
                "artifact": progress.key[1],
                "base": progress.key[0],
                "stage": progress.stage,
                "done": progress.done,
                "total": progress.total,
                "elapsed_s": round(progress.elapsed_s, 3),
            }
            for progress in (builds.progress() if builds is not None else [])
        ]

    def rollout(self, rollout_id: int) -> RolloutView:
        return self.controller.show(rollout_id)

    def rollouts(self) -> list[RolloutView]:
        return self.controller.list()

    def devices(self, group: str | None = None) -> list[DeviceRow]:
        return self.registry.devices(group)

    def device_views(self, group: str | None = None) -> list[dict[str, Any]]:
        """``devices`` with each one's certificate: expiry, serial, revoked (for the CLI)."""
        rows = self.registry.devices(group)
        certs = {} if self.certs is None else {c.device_id: c for c in self.certs.statuses()}
        views = []
        for row in rows:
            cert = certs.get(row.device_id)
            views.append(
                asdict(row)
                | {
                    "cert_not_after": cert.not_after if cert and cert.not_after else None,
                    "cert_days_left": _days_left(cert.not_after)
                    if cert and cert.not_after
                    else None,
                    "cert_serial": cert.serial if cert else None,
                    "cert_revoked": bool(cert and cert.revoked_at),
                }
            )
        return views

    def cert_statuses(self) -> list[CertStatus]:
        return self._certs().statuses()

    def approve_cert(self, device_id: str) -> CertStatus:
        status, messages = self._certs().approve(check_device(device_id))
        self._send(messages)
        return status

    def revoke_device(self, device_id: str, reason: str) -> CertStatus:
        return self._certs().revoke(check_device(device_id), reason)

    def _certs(self) -> FleetCertificates:
        if self.certs is None:
            raise Unavailable("this sync service knows no fleet CA (certs_broker_dir)")
        return self.certs

    def versions(self, model: str | None = None) -> list[VersionRow]:
        return self.registry.versions(model)

    def telemetry_summary(self, model: str | None = None) -> list[VersionSummary]:
        return fleet_summary(self.registry, model)

    def close(self) -> None:
        self.ctx.issuer.close()
        self.registry.close()
        if self.certs is not None:
            self.certs.close()

    def _send(self, messages: Iterable[Outgoing]) -> None:
        for message in messages:
            self._publish(message)


def _days_left(not_after: float) -> float:
    # Tenths of a day: two reads a moment apart agree (cert_not_after has the exact time).
    return round((not_after - time.time()) / 86400, 1)


class CoreThread:
    """Runs ``SyncCore`` calls one at a time on a dedicated thread, awaitable from the loop."""

    def __init__(self, config: SyncConfig, metrics: SyncMetrics, publish: Publish) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sync-core")
        self._config = config
        self._metrics = metrics
        self._publish = publish
        self._core: SyncCore | None = None

    async def start(self) -> None:
        self._core = await self._run(lambda: SyncCore(self._config, self._metrics, self._publish))

    async def call(self, operation: Callable[[SyncCore], T]) -> T:
        core = self._core
        if core is None:
            raise RuntimeError("CoreThread.start() was not awaited")
        return await self._run(lambda: operation(core))

    async def close(self) -> None:
        if self._core is not None:
            await self.call(SyncCore.close)
            self._core = None
        self._executor.shutdown(wait=True)

    async def _run(self, function: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function)
