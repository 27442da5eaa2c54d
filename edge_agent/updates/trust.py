"""What the device trusts: the last installed manifest per model, and manifests that failed.

Signatures alone do not stop replay or freeze attacks (TUF/Uptane): an old, validly
signed manifest would happily move a device back to a version with a known bug. So the
device remembers, per model, the version and ``issued_at`` of the last manifest it
installed, and a new manifest must move the version forward — or be an explicit signed
rollback issued after that last trusted manifest. Manifests whose install failed are
remembered by digest too, so a redelivered desired state does not download and fail
the same update again and again; the operator issues a new manifest instead.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from edgeserve.durable import write_atomic
from edgeserve.wire.errors import IntegrityError, UpdateRefused
from edgeserve.wire.manifest import SignedManifest, UpdateManifest, version_key

MAX_FAILED = 256


@dataclass(frozen=True, slots=True)
class TrustedManifest:
    version: str
    issued_at: float
    sha256: str


def manifest_digest(envelope: SignedManifest) -> str:
    """Names one signed manifest exactly (its signed bytes), whatever wire form carried it."""
    return hashlib.sha256(envelope.manifest.encode()).hexdigest()


class TrustStore:
    """``trust.json``: last trusted manifest per model and failed manifest digests."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._models: dict[str, TrustedManifest] = {}
        self._failed: dict[str, str] = {}
        if path.is_file():
            self._load()

    def last(self, model: str) -> TrustedManifest | None:
        return self._models.get(model)

    def check(self, manifest: UpdateManifest, running_version: str | None) -> None:
        """Raise UpdateRefused unless ``manifest`` may replace what runs now."""
        last = self._models.get(manifest.model)
        label = f"{manifest.model} v{manifest.version}"
        if last is not None and manifest.issued_at <= last.issued_at:
            raise UpdateRefused(
                f"{label}: manifest issued at {manifest.issued_at:.3f} is not newer than the "
                f"last trusted one (v{last.version}, issued at {last.issued_at:.3f}): replay"
            )
        if manifest.rollback:
            return
        new = version_key(manifest.version)
        if running_version is not None and new < version_key(running_version):
            raise UpdateRefused(
                f"{label} is older than the running v{running_version} and not a signed rollback"
            )
        if last is not None and new < version_key(last.version):
            raise UpdateRefused(
                f"{label} is older than the last trusted v{last.version} and not a signed rollback"
            )

    def record(self, manifest: UpdateManifest) -> None:
        """Trust ``manifest`` as the newest for its model (never moves issued_at back)."""
        last = self._models.get(manifest.model)
        if last is not None and last.issued_at > manifest.issued_at:
            return
        self._models[manifest.model] = TrustedManifest(
            manifest.version, manifest.issued_at, manifest.card.sha256
        )
        self._save()

    def failure(self, digest: str) -> str | None:
        """Why the manifest with this digest failed before, if it did."""
        return self._failed.get(digest)

    def record_failure(self, digest: str, why: str) -> None:
        self._failed[digest] = why
        while len(self._failed) > MAX_FAILED:
            del self._failed[next(iter(self._failed))]
        self._save()

    def _load(self) -> None:
        try:
            data = json.loads(self._path.read_bytes())
            self._models = {
                name: TrustedManifest(**entry) for name, entry in data["models"].items()
            }
            self._failed = dict(data["failed"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Refusing to start is safer than forgetting what was trusted: a forgotten
            # record would let a replayed old manifest through.
            raise IntegrityError(f"update trust file {self._path} is unreadable: {exc}") from exc

    def _save(self) -> None:
        data = {
            "models": {name: asdict(entry) for name, entry in self._models.items()},
            "failed": self._failed,
        }
        self._path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self._path, json.dumps(data, indent=1).encode())
