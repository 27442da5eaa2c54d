"""One update's download on disk: the signed manifest and every verified chunk so far.

::

    <state_dir>/downloads/<update_id>/
        manifest.json      the SignedManifest envelope exactly as received
        chunks/<index>     one verified chunk each

A chunk is hashed against the manifest before it is written, and written under a
temporary name, fsynced and renamed, so after ``kill -9`` a chunk file is either absent
or complete and correct. Reopening the folder after a restart re-verifies the manifest's
signature and every chunk's hash, so a download resumes from exactly the chunks that are
good, across reconnects and reboots.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgeserve.durable import TMP_SUFFIX, fsync_dir, write_atomic
from edgeserve.wire.errors import IntegrityError, InvalidInput, Unavailable
from edgeserve.wire.manifest import (
    PayloadSpec,
    SignedManifest,
    UpdateManifest,
    parse_envelope,
    verify_signed_manifest,
)


class ChunksRotted(Unavailable):
    """Stored chunks no longer match their hashes: they were dropped and must be fetched
    again (not a failed update: the download simply is not complete any more)."""

    def __init__(self, update_id: str, indices: list[int]) -> None:
        super().__init__(
            f"update {update_id}: {len(indices)} stored chunks no longer verify "
            f"(first {indices[0]}); fetching them again"
        )
        self.indices = indices


MANIFEST_NAME = "manifest.json"
CHUNKS_NAME = "chunks"
UPDATE_ID = re.compile(r"^[0-9a-f]{32}$")

log = logging.getLogger(__name__)


def check_payload_spec(spec: PayloadSpec) -> None:
    """Refuse a payload description whose chunks cannot add up to its size."""
    expected = -(-spec.size // spec.chunk_size)
    if len(spec.chunks) != expected:
        raise InvalidInput(
            f"payload of {spec.size} bytes in {spec.chunk_size}-byte chunks needs {expected} "
            f"chunk hashes, the manifest lists {len(spec.chunks)}"
        )
    if not UPDATE_ID.match(spec.update_id):
        raise InvalidInput(f"payload sha256 {spec.sha256!r} is not lowercase hex")


class Download:
    def __init__(
        self, folder: Path, envelope: SignedManifest, manifest: UpdateManifest, have: set[int]
    ) -> None:
        self.folder = folder
        self.envelope = envelope
        self.manifest = manifest
        self._have = have
        # Chunks found rotten when this folder was (re)opened, for the updater's counters.
        self.rotted_on_open = 0

    @classmethod
    def create(cls, root: Path, envelope: SignedManifest, manifest: UpdateManifest) -> Download:
        """Start (or re-target) the folder for ``manifest``, keeping chunks that still fit."""
        folder = root / manifest.payload.update_id
        chunks = folder / CHUNKS_NAME
        try:
            chunks.mkdir(parents=True, exist_ok=True)
            fsync_dir(root)
            write_atomic(folder / MANIFEST_NAME, envelope.model_dump_json().encode())
        except OSError:
            # A full or failing disk: leave no half-made folder behind to hold space.
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return cls._with_chunks(folder, envelope, manifest)

    @classmethod
    def open(cls, folder: Path, public_key: Ed25519PublicKey) -> Download:
        """Reopen a folder left by an earlier run; raises if its manifest no longer verifies."""
        try:
            envelope = parse_envelope((folder / MANIFEST_NAME).read_bytes())
        except OSError as exc:
            raise IntegrityError(f"download {folder.name}: no readable manifest ({exc})") from exc
        # Expiry was checked when the update was offered; a download that outlives its
        # manifest's expiry (slow link, long power cut) may still finish.
        manifest = verify_signed_manifest(envelope, public_key, now=0.0)
        if manifest.payload.update_id != folder.name:
            raise IntegrityError(f"download {folder.name} holds the manifest of another update")
        chunks = folder / CHUNKS_NAME
        chunks.mkdir(exist_ok=True)
        return cls._with_chunks(folder, envelope, manifest)

    @classmethod
    def _with_chunks(
        cls, folder: Path, envelope: SignedManifest, manifest: UpdateManifest
    ) -> Download:
        have, rotted = _verified_chunks(folder / CHUNKS_NAME, manifest.payload)
        download = cls(folder, envelope, manifest, have)
        download.rotted_on_open = rotted
        return download

    @property
    def update_id(self) -> str:
        return self.manifest.payload.update_id

    @property
    def total(self) -> int:
        return len(self.manifest.payload.chunks)

    @property
    def received(self) -> int:
        return len(self._have)

    @property
    def complete(self) -> bool:
        return len(self._have) == self.total

    def accept(self, index: int, data: bytes) -> bool:
        """Store chunk ``index`` if its hash matches; True if it was new."""
        spec = self.manifest.payload
        if not 0 <= index < len(spec.chunks):
            raise IntegrityError(
                f"update {self.update_id}: chunk {index} is out of range 0..{len(spec.chunks) - 1}"
            )
        digest = hashlib.sha256(data).hexdigest()
        if digest != spec.chunks[index]:
            raise IntegrityError(
                f"update {self.update_id}: chunk {index} sha256 {digest[:12]}… does not match "
                f"the manifest's {spec.chunks[index][:12]}…"
            )
        if index in self._have:
            return False
        # Renamed into place but not fsynced: every chunk is hashed again when a download
        # is reopened after a crash, so one lost to a power cut is simply fetched again,
        # and an fsync per chunk would cost more than the chunk on SD/eMMC storage.
        path = self.folder / CHUNKS_NAME / str(index)
        tmp = path.with_name(path.name + TMP_SUFFIX)
        tmp.write_bytes(data)
        os.replace(tmp, path)
        self._have.add(index)
        return True

    def missing(self, limit: int) -> list[int]:
        wanted: list[int] = []
        for index in range(self.total):
            if len(wanted) >= limit:
                break
            if index not in self._have:
                wanted.append(index)
        return wanted

    def payload(self) -> bytes:
        """The whole payload, checked against its size and sha256."""
        spec = self.manifest.payload
        if not self.complete:
            raise IntegrityError(
                f"update {self.update_id}: {self.total - self.received} chunks missing"
            )
        folder = self.folder / CHUNKS_NAME
        chunks = [(folder / str(index)).read_bytes() for index in range(self.total)]
        # Each chunk against its own hash: one that rotted since it arrived is dropped and
        # fetched again, instead of failing the whole update on the payload's hash.
        rotten = [
            i for i, c in enumerate(chunks) if hashlib.sha256(c).hexdigest() != spec.chunks[i]
        ]
        if rotten:
            for index in rotten:
                (folder / str(index)).unlink(missing_ok=True)
                self._have.discard(index)
            raise ChunksRotted(self.update_id, rotten)
        data = b"".join(chunks)
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != spec.size or digest != spec.sha256:
            raise IntegrityError(
                f"update {self.update_id}: payload of {len(data)} bytes, sha256 {digest[:12]}… "
                f"does not match the manifest's {spec.size} bytes, {spec.sha256[:12]}…"
            )
        return data

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _verified_chunks(folder: Path, spec: PayloadSpec) -> tuple[set[int], int]:
    """Indices of chunk files whose bytes match ``spec``, and how many chunks did not
    (deleted, like any other stray file)."""
    have: set[int] = set()
    rotted = 0
    for path in folder.iterdir():
        index = int(path.name) if path.name.isdigit() else -1
        if path.name.endswith(TMP_SUFFIX) or not 0 <= index < len(spec.chunks):
            path.unlink(missing_ok=True)
        elif hashlib.sha256(path.read_bytes()).hexdigest() == spec.chunks[index]:
            have.add(index)
        else:
            log.warning("dropping a chunk that no longer verifies", extra={"chunk": index})
            path.unlink(missing_ok=True)
            rotted += 1
    return have, rotted
