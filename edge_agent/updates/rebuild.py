"""Rebuilding the new artifact from a downloaded payload, and checking it is the one signed.

A delta payload only means something against the exact bytes it was built from, so the
base is read from the slot the device serves and hashed as read; the rebuilt bytes must
then match the signed card's size and sha256 before anything writes them to a slot.
"""

from __future__ import annotations

import hashlib

from edge_agent.store import ModelStore
from edge_agent.updates.downloads import Download
from edgeserve.wire.errors import IntegrityError, UpdateRefused
from edgeserve.wire.manifest import UpdateManifest


def rebuild_artifact(store: ModelStore, download: Download) -> bytes:
    """The artifact the manifest's card describes; raises IntegrityError or UpdateRefused."""
    # Imported here: only an install needs the codecs (and their zstd bindings).
    from edgeserve.wire.delta import apply_payload

    manifest = download.manifest
    spec = manifest.payload
    payload = download.payload()
    base: bytes | None = None
    if spec.encoding != "zstd":
        card, base = store.read_active_bytes(manifest.model)
        if card.sha256 != spec.base_sha256:
            raise UpdateRefused(wrong_base(manifest, card.sha256))
    artifact = apply_payload(spec.encoding, payload, base, manifest.card.size_bytes)
    digest = hashlib.sha256(artifact).hexdigest()
    if len(artifact) != manifest.card.size_bytes or digest != manifest.card.sha256:
        raise IntegrityError(
            f"rebuilt artifact ({len(artifact)} bytes, sha256 {digest[:12]}…) does not match "
            f"the card ({manifest.card.size_bytes} bytes, {manifest.card.sha256[:12]}…)"
        )
    return artifact


def wrong_base(manifest: UpdateManifest, running_sha256: str | None) -> str:
    running = f"sha256 {running_sha256[:12]}…" if running_sha256 else "no verified model"
    return (
        f"wrong base: {manifest.model} v{manifest.version} is a delta against "
        f"v{manifest.payload.base_version} (sha256 {str(manifest.payload.base_sha256)[:12]}…) "
        f"but the device runs {running}"
    )
