"""Content-addressed storage of model artifacts and update payloads, by sha256.

Every file is named by the hash of its bytes, so a stored object never changes, is
written once however many devices or rollouts use it, and can be checked at any time.
Writes go to a temporary file in the same directory, are fsynced and renamed into place,
so a crash leaves either the whole object or nothing. Beside the bytes the store keeps
the small derived documents that belong to an object: the golden self-test of an
artifact, the payload spec of an update, and which payload a (base, new) pair produced.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from pydantic import BaseModel

from edgeserve.wire.errors import InvalidInput, ModelNotFound, PayloadTooLarge
from edgeserve.wire.manifest import PayloadEncoding, PayloadSpec, SelfTest

_SHA256_HEX = frozenset("0123456789abcdef")
D = TypeVar("D", bound=BaseModel)


class CachedPayload(BaseModel):
    """Which payload turned a base artifact into a new one (``base`` empty for a full one)."""

    encoding: PayloadEncoding
    sha256: str
    size: int


def check_sha256(sha: str) -> str:
    if len(sha) != 64 or not set(sha) <= _SHA256_HEX:
        raise InvalidInput(f"not a lowercase hex sha256: {sha[:80]!r}")
    return sha


class ArtifactStore:
    """Artifacts and payloads under ``root``, each at ``<kind>/<sha[:2]>/<sha>``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for kind in ("artifacts", "payloads", "selftests", "specs", "deltas", "tmp"):
            (root / kind).mkdir(parents=True, exist_ok=True)

    # -- bytes --------------------------------------------------------------------------

    def artifact_path(self, sha: str) -> Path:
        return self._path("artifacts", check_sha256(sha))

    def payload_path(self, sha: str) -> Path:
        return self._path("payloads", check_sha256(sha))

    def has_artifact(self, sha: str) -> bool:
        return self.artifact_path(sha).is_file()

    def read_artifact(self, sha: str) -> bytes:
        return _read(self.artifact_path(sha), "artifact")

    def read_payload(self, sha: str) -> bytes:
        return _read(self.payload_path(sha), "payload")

    def put_artifact(self, data: bytes) -> str:
        return self._put("artifacts", data)

    def put_payload(self, data: bytes) -> str:
        return self._put("payloads", data)

    async def put_artifact_stream(self, chunks: AsyncIterator[bytes], limit: int) -> str:
        """Store an upload as it arrives, never holding it in memory; its sha256."""
        digest = hashlib.sha256()
        size = 0
        with self._temporary() as (handle, tmp):
            async for block in chunks:
                size += len(block)
                if size > limit:
                    raise PayloadTooLarge(f"artifact is over the {limit}-byte upload limit")
                digest.update(block)
                handle.write(block)
            sha = digest.hexdigest()
            self._commit(handle, tmp, self.artifact_path(sha))
        return sha

    def read_chunk(self, sha: str, index: int, chunk_size: int) -> bytes:
        """Bytes ``[index * chunk_size, (index + 1) * chunk_size)`` of a payload."""
        return next(self.read_chunks(sha, [index], chunk_size))

    def read_chunks(self, sha: str, indices: list[int], chunk_size: int) -> Iterator[bytes]:
        """Several chunks of one payload through one open file, in the order asked."""
        path = self.payload_path(sha)
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            raise ModelNotFound(f"payload {sha[:12]} is not in the store") from None
        with handle:
            for index in indices:
                if index < 0:
                    raise InvalidInput(f"chunk index {index} is negative")
                handle.seek(index * chunk_size)
                data = handle.read(chunk_size)
                if not data:
                    raise InvalidInput(f"chunk {index} is past the end of payload {sha[:12]}")
                yield data

    # -- derived documents ----------------------------------------------------------------

    def save_self_test(self, artifact_sha: str, self_test: SelfTest) -> None:
        self._write_doc("selftests", check_sha256(artifact_sha), self_test)

    def self_test(self, artifact_sha: str) -> SelfTest | None:
        return self._read_doc("selftests", check_sha256(artifact_sha), SelfTest)

    def save_spec(self, spec: PayloadSpec) -> None:
        self._write_doc("specs", spec.update_id, spec)

    def spec(self, update_id: str) -> PayloadSpec | None:
        if not update_id or not set(update_id) <= _SHA256_HEX or len(update_id) > 64:
            return None
        return self._read_doc("specs", update_id, PayloadSpec)

    def remember_delta(
        self, base_sha: str | None, new_sha: str, payload: CachedPayload, tensor_format: int = 1
    ) -> None:
        self._write_doc("deltas", _delta_key(base_sha, new_sha, tensor_format), payload)

    def cached_delta(
        self, base_sha: str | None, new_sha: str, tensor_format: int = 1
    ) -> CachedPayload | None:
        """The payload built for this pair for agents that apply ``tensor_format``."""
        key = _delta_key(base_sha, new_sha, tensor_format)
        cached = self._read_doc("deltas", key, CachedPayload)
        if cached is None or not self.payload_path(cached.sha256).is_file():
            return None
        return cached

    # -- internals ------------------------------------------------------------------------

    def _path(self, kind: str, name: str) -> Path:
        return self.root / kind / name[:2] / name

    def _put(self, kind: str, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        target = self._path(kind, sha)
        if not target.is_file():
            with self._temporary() as (handle, tmp):
                handle.write(data)
                self._commit(handle, tmp, target)
        return sha

    def _write_doc(self, kind: str, name: str, document: BaseModel) -> None:
        with self._temporary() as (handle, tmp):
            handle.write(document.model_dump_json(by_alias=True).encode())
            self._commit(handle, tmp, self._path(kind, name + ".json"))

    def _read_doc(self, kind: str, name: str, model: type[D]) -> D | None:
        path = self._path(kind, name + ".json")
        if not path.is_file():
            return None
        return model.model_validate_json(path.read_bytes())

    def _temporary(self) -> _Temporary:
        return _Temporary(self.root / "tmp")

    @staticmethod
    def _commit(handle: BinaryIO, tmp: Path, target: Path) -> None:
        handle.flush()
        os.fsync(handle.fileno())
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)


class _Temporary:
    """A temporary file that is removed unless it was renamed into place."""

    def __init__(self, directory: Path) -> None:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".part-")
        self.path = Path(name)
        self.handle: BinaryIO = os.fdopen(fd, "wb")

    def __enter__(self) -> tuple[BinaryIO, Path]:
        return self.handle, self.path

    def __exit__(self, *exc: object) -> None:
        self.handle.close()
        self.path.unlink(missing_ok=True)


def _delta_key(base_sha: str | None, new_sha: str, tensor_format: int) -> str:
    """Format 1 keeps the key of the stores written before format 2 existed; a full
    payload is the same whatever the agent applies."""
    key = f"{check_sha256(base_sha) if base_sha else 'full'}-{check_sha256(new_sha)}"
    return key if base_sha is None or tensor_format == 1 else f"{key}-f{tensor_format}"


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ModelNotFound(f"{what} {path.name[:12]} is not in the store") from None
