"""The device side of a model update, from signed manifest to the new model serving.

``Updater`` knows nothing of MQTT: the sync client hands it manifests (``offer``) and
chunks (``accept_chunk``), asks what is still ``missing``, and calls ``finish`` (blocking,
in an executor) once every chunk is in. ``finish`` rebuilds the artifact from the
payload (a delta applies to the verified bytes the device serves), checks it against
the signed card, stages it into the inactive slot, runs the self-test, switches the
store and hot-swaps the served model — and on any failure leaves the old model serving
and says at which stage and why.

Crash safety, step by step (``kill -9`` at any instant):

- during download: chunks are atomic files; the folder is resumed by the next Updater.
- during rebuild/stage/self-test: ``state.json`` never points at the slot being
  written, so the store loads the old model; the download is complete and resumes.
- after the store switched, before trust was recorded or the folder deleted: the store
  loads the new (verified, self-tested) model; the next Updater sees the download's
  manifest is what runs, records it as trusted and deletes the folder.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.store import ModelStore, VerifiedModel, check_card_names
from edge_agent.updates.downloads import UPDATE_ID, ChunksRotted, Download, check_payload_spec
from edge_agent.updates.rebuild import rebuild_artifact, wrong_base
from edge_agent.updates.selftest import check_self_test, run_self_test
from edge_agent.updates.session import UpdateSession, UpdateStats
from edge_agent.updates.trust import TrustStore, manifest_digest
from edgeserve.runtimes import RuntimeOptions
from edgeserve.wire.errors import (
    EdgeServeError,
    IntegrityError,
    InvalidInput,
    ModelNotFound,
    PayloadTooLarge,
    Unavailable,
    UpdateRefused,
)
from edgeserve.wire.manifest import SignedManifest, UpdateManifest, verify_signed_manifest
from edgeserve.wire.sync_messages import UpdateResult, UpdateStage

DOWNLOADS = "downloads"
TRUST_FILE = "updates/trust.json"
DEFAULT_MAX_ARTIFACT_BYTES = 1 << 30

log = logging.getLogger(__name__)


class Updater:
    def __init__(
        self,
        store: ModelStore,
        state_dir: Path,
        public_key: Ed25519PublicKey,
        activate: Callable[[str], None],
        *,
        device_id: str = "",
        runtime_options: RuntimeOptions | None = None,
        max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES,
        clock: Callable[[], float] = time.time,
        on_step: Callable[[str], None] | None = None,
    ) -> None:
        """``activate(name)`` must hot-swap the served model and, if it raises, leave the
        old one serving (``AgentCore.load`` does). ``on_step(step)`` is called after each
        install step (rebuilt, staged, self_tested, switched, activated, trusted): a seam
        for crash tests and progress reporting."""
        self._store = store
        self._public_key = public_key
        self._activate = activate
        self._device_id = device_id
        self._options = runtime_options or RuntimeOptions()
        self._max_artifact_bytes = max_artifact_bytes
        self._clock = clock
        self._on_step = on_step or (lambda step: None)
        self._downloads = state_dir / DOWNLOADS
        self._downloads.mkdir(parents=True, exist_ok=True)
        self._trust = TrustStore(state_dir / TRUST_FILE)
        self._lock = threading.Lock()
        self._sessions: dict[str, Download] = {}
        self._finishing: set[str] = set()
        self.stats = UpdateStats()
        self._resume()

    # -- download ------------------------------------------------------------------------

    def offer(self, envelope: SignedManifest) -> UpdateSession | None:
        """Verify a signed manifest and start (or resume) its download.

        None when that exact version already runs. Raises SignatureError, UpdateRefused
        (replay, older version, expired, wrong base, failed before), InvalidInput,
        PayloadTooLarge, or Unavailable while another update of the model installs.
        """
        try:
            manifest = verify_signed_manifest(envelope, self._public_key, now=self._clock())
            self._check_shape(manifest)
            with self._lock:
                self.stats.offered += 1
                return self._offer_locked(envelope, manifest)
        except EdgeServeError as exc:
            self.stats.refused += 1
            log.warning("update refused", extra={"reason": exc.message})
            raise

    def accept_chunk(self, update_id: str, index: int, data: bytes) -> bool:
        """Store one chunk if its hash matches the manifest; True if it was new."""
        with self._lock:
            download = self._get(update_id)
            try:
                new = download.accept(index, data)
            except IntegrityError:
                self.stats.chunks_rejected += 1
                raise
            if new:
                self.stats.chunks_accepted += 1
                self.stats.bytes_received += len(data)
            else:
                self.stats.chunks_duplicate += 1
            return new

    def abandon(self, update_id: str, error: OSError) -> UpdateResult:
        """Give up a download whose chunks cannot be stored (a full or failing disk).

        Its chunks are removed to give the space back and the old model keeps serving.
        Unlike a refused update, nothing is recorded against the manifest: the disk may
        have room later, and the same signed manifest may then be offered again.
        """
        with self._lock:
            download = self._get(update_id)
            self._forget_locked(download)
        self.stats.failed["download"] = self.stats.failed.get("download", 0) + 1
        reason = f"storage: {error.strerror or error}"
        log.error("update abandoned", extra={"model": download.manifest.model, "reason": reason})
        return self._result(download, False, "download", reason, time.monotonic())

    def missing(self, update_id: str, limit: int = 256) -> list[int]:
        with self._lock:
            return self._get(update_id).missing(limit)

    def pending(self) -> list[UpdateSession]:
        """Updates not yet finished, including those resumed from disk at start."""
        with self._lock:
            downloads = sorted(self._sessions.values(), key=lambda d: d.manifest.model)
            return [UpdateSession(download) for download in downloads]

    def session(self, update_id: str) -> UpdateSession:
        with self._lock:
            return UpdateSession(self._get(update_id))

    # -- install -------------------------------------------------------------------------

    def finish(self, update_id: str) -> UpdateResult:
        """Install a fully downloaded update; blocking, so run it in an executor.

        Never raises for a failed update: the result says ok=False, the stage and why,
        and the old model keeps serving. Raises ModelNotFound for an unknown update id
        and Unavailable while chunks are missing or the update is already finishing —
        ChunksRotted when stored chunks failed their hashes and must be fetched again.
        """
        with self._lock:
            download = self._get(update_id)
            if not download.complete:
                raise Unavailable(
                    f"update {update_id} still misses {download.total - download.received} chunks"
                )
            if update_id in self._finishing:
                raise Unavailable(f"update {update_id} is already being installed")
            self._finishing.add(update_id)
        started = time.monotonic()
        try:
            return self._install(download, started)
        except ChunksRotted as rotted:
            self.stats.chunks_rotted += len(rotted.indices)
            raise
        finally:
            with self._lock:
                self._finishing.discard(update_id)

    def _install(self, download: Download, started: float) -> UpdateResult:
        manifest = download.manifest
        stage: UpdateStage = "verify"
        try:
            if self._admit(manifest) == "running":
                return self._done(download, started)
            stage = "rebuild"
            artifact = rebuild_artifact(self._store, download)
            self._on_step("rebuilt")
            stage = "stage"
            staged = self._store.stage(manifest.card, artifact, manifest.bank_bytes())
            self._on_step("staged")
            stage = "self_test"
            run_self_test(staged, manifest.self_test, self._options)
            self._on_step("self_tested")
            stage = "activate"
            self._switch(staged)
        except ChunksRotted:
            raise  # not a failed update: the download is incomplete again
        except Exception as exc:
            return self._failed(download, stage, exc, started)
        return self._done(download, started)

    def _switch(self, staged: VerifiedModel) -> None:
        name = staged.card.name
        old = self._serving(name)
        self._store.activate(name, staged.slot)
        self._on_step("switched")
        try:
            self._activate(name)
        except Exception as exc:
            if old is not None:
                self._store.activate(name, old.slot, keep_previous=False)
            message = exc.message if isinstance(exc, EdgeServeError) else repr(exc)
            raise UpdateRefused(f"hot swap failed, switched back: {message}") from exc
        self._on_step("activated")

    def _done(self, download: Download, started: float) -> UpdateResult:
        manifest = download.manifest
        with self._lock:
            self._trust.record(manifest)
        self._on_step("trusted")
        self._forget(download)
        self.stats.installed += 1
        log.info("model updated", extra={"model": manifest.model, "version": manifest.version})
        return self._result(download, True, "done", "", started)

    def _failed(
        self, download: Download, stage: UpdateStage, exc: Exception, started: float
    ) -> UpdateResult:
        reason = exc.message if isinstance(exc, EdgeServeError) else repr(exc)
        log.error(
            "update failed",
            exc_info=not isinstance(exc, EdgeServeError),
            extra={"model": download.manifest.model, "stage": stage, "reason": reason},
        )
        with self._lock:
            self._trust.record_failure(manifest_digest(download.envelope), f"{stage}: {reason}")
        self._forget(download)
        self.stats.failed[stage] = self.stats.failed.get(stage, 0) + 1
        return self._result(download, False, stage, reason, started)

    def _result(
        self, download: Download, ok: bool, stage: UpdateStage, reason: str, started: float
    ) -> UpdateResult:
        serving = self._serving(download.manifest.model)
        return UpdateResult(
            device_id=self._device_id,
            model=download.manifest.model,
            version=download.manifest.version,
            update_id=download.update_id,
            ok=ok,
            stage=stage,
            reason=reason,
            running_version=serving.card.version if serving else "",
            duration_s=round(time.monotonic() - started, 6),
            ts=self._clock(),
        )

    # -- checks --------------------------------------------------------------------------

    def _check_shape(self, manifest: UpdateManifest) -> None:
        """Refuse, before any byte is downloaded, a manifest that cannot install."""
        check_card_names(manifest.card)
        check_payload_spec(manifest.payload)
        check_self_test(manifest.self_test)
        if manifest.payload.encoding != "zstd" and manifest.payload.base_sha256 is None:
            raise InvalidInput(f"{manifest.payload.encoding} payload names no base_sha256")
        size = max(manifest.card.size_bytes, manifest.payload.size)
        if size > self._max_artifact_bytes:
            raise PayloadTooLarge(
                f"{manifest.model} v{manifest.version}: {size} bytes is over this device's "
                f"limit of {self._max_artifact_bytes}"
            )

    def _admit(self, manifest: UpdateManifest) -> str:
        """Whether ``manifest`` may install ("new") or already runs ("running"); else raise."""
        serving = self._serving(manifest.model)
        if serving is not None and serving.card.version == manifest.version:
            if serving.card.sha256 != manifest.card.sha256:
                raise UpdateRefused(
                    f"{manifest.model} v{manifest.version} already runs with other bytes"
                )
            return "running"
        self._trust.check(manifest, serving.card.version if serving else None)
        base = manifest.payload.base_sha256
        if manifest.payload.encoding != "zstd" and (serving is None or serving.card.sha256 != base):
            raise UpdateRefused(wrong_base(manifest, serving.card.sha256 if serving else None))
        return "new"

    def _runs(self, manifest: UpdateManifest) -> bool:
        serving = self._serving(manifest.model)
        signed = (manifest.version, manifest.card.sha256)
        return serving is not None and (serving.card.version, serving.card.sha256) == signed

    def _serving(self, name: str) -> VerifiedModel | None:
        if not self._store.has(name):
            return None
        try:
            return self._store.load_verified(name)
        except IntegrityError:
            return None

    # -- sessions ------------------------------------------------------------------------

    def _offer_locked(
        self, envelope: SignedManifest, manifest: UpdateManifest
    ) -> UpdateSession | None:
        update_id = manifest.payload.update_id
        failure = self._trust.failure(manifest_digest(envelope))
        if failure is not None:
            raise UpdateRefused(
                f"{manifest.model} v{manifest.version}: this manifest failed before ({failure})"
            )
        if self._admit(manifest) == "running":
            self.stats.already_running += 1
            return None
        current = self._sessions.get(update_id)
        if current is not None and current.envelope == envelope:
            return UpdateSession(current)
        self._supersede(manifest)
        download = Download.create(self._downloads, envelope, manifest)
        self.stats.chunks_rotted += download.rotted_on_open
        self._sessions[update_id] = download
        log.info(
            "update offered",
            extra={"model": manifest.model, "version": manifest.version, "update": update_id},
        )
        return UpdateSession(download)

    def _supersede(self, manifest: UpdateManifest) -> None:
        """Drop other downloads of the same model, unless they are newer or installing."""
        for update_id, other in list(self._sessions.items()):
            if other.manifest.model != manifest.model:
                continue
            if update_id in self._finishing:
                raise Unavailable(f"an update of {manifest.model} is being installed")
            if other.manifest.issued_at > manifest.issued_at:
                raise UpdateRefused(
                    f"{manifest.model} v{manifest.version}: older than the update in progress "
                    f"(v{other.manifest.version})"
                )
            if update_id != manifest.payload.update_id:
                self._forget_locked(other)

    def _get(self, update_id: str) -> Download:
        download = self._sessions.get(update_id)
        if download is None:
            raise ModelNotFound(f"no update in progress with id {update_id[:40]!r}")
        return download

    def _forget(self, download: Download) -> None:
        with self._lock:
            self._forget_locked(download)

    def _forget_locked(self, download: Download) -> None:
        if self._sessions.get(download.update_id) is download:
            del self._sessions[download.update_id]
        download.remove()

    def _resume(self) -> None:
        """Reopen downloads left by an earlier run; settle the ones a crash interrupted."""
        for folder in sorted(self._downloads.iterdir()):
            download = self._reopen(folder)
            if download is None:
                continue
            manifest = download.manifest
            if self._runs(manifest):
                # Killed after the store switched: the install is done, only its
                # bookkeeping is not.
                self._trust.record(manifest)
                download.remove()
            elif self._trust.failure(manifest_digest(download.envelope)) is not None:
                download.remove()
            else:
                self._sessions[download.update_id] = download
        for download in list(self._sessions.values()):
            try:
                self._supersede(download.manifest)
            except EdgeServeError:
                self._forget_locked(download)

    def _reopen(self, folder: Path) -> Download | None:
        if not folder.is_dir() or not UPDATE_ID.match(folder.name):
            _remove(folder)
            return None
        try:
            download = Download.open(folder, self._public_key)
        except EdgeServeError as exc:
            log.error("dropping an unusable download", extra={"reason": exc.message})
            _remove(folder)
            return None
        self.stats.chunks_rotted += download.rotted_on_open
        return download


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
