"""The signed update manifest: what a device may install, checked before any byte is used.

A manifest names one model version by its card (sha256, size, format, tensor contract),
says how the bytes travel (full or a delta against the version the device runs, in
hashed chunks; a large payload also names the HTTPS address it may be fetched from with
Range requests — signed like the rest, and checked chunk by chunk the same way whatever
the transport), and carries golden inputs with the outputs the new model must reproduce.
It travels inside a ``SignedManifest`` envelope: the exact manifest bytes, base64, and
an Ed25519 signature over them. ``verify_signed_manifest`` checks the signature against
the operator's pinned public key *before* parsing the manifest, so nothing an attacker
wrote is ever interpreted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeserve.wire.errors import IntegrityError, InvalidInput, SignatureError, UpdateRefused
from edgeserve.wire.model_card import ModelCard

MANIFEST_SCHEMA = "edgeserve.manifest/1"
MAX_MANIFEST_BYTES = 256 << 10
# A reference bank travels inside the signed manifest, so it must leave room for the rest
# (golden vectors, chunk hashes) under MAX_MANIFEST_BYTES; larger banks are capped per
# class when they are built (the digits bank is 38 KB).
MAX_INLINE_BANK = 128 << 10
# Agents from this release take a manifest's inline bank; older ones refuse the field.
INLINE_BANK_SINCE = "0.2.0"

PayloadEncoding = Literal["zstd", "zstd-patch", "tensor-delta", "tensor-delta-2"]


def version_key(version: str) -> tuple[int, ...]:
    """Order versions numerically by dotted parts: ``"10" > "9"``, ``"1.10" > "1.9"``."""
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError as exc:
        raise InvalidInput(f"version {version!r} is not dotted integers") from exc


class PayloadSpec(BaseModel):
    """The bytes a device downloads and how they rebuild the artifact."""

    model_config = ConfigDict(frozen=True)

    encoding: PayloadEncoding
    base_version: str | None = Field(None, description="the version a delta applies to")
    base_sha256: str | None = Field(None, description="sha256 of the base artifact")
    sha256: str = Field(description="sha256 of the whole payload")
    size: int = Field(ge=0)
    chunk_size: int = Field(gt=0)
    chunks: list[str] = Field(description="sha256 of each chunk, in order")
    url: str | None = Field(
        None,
        description="where the payload's bytes may be fetched with HTTP Range requests "
        "(MQTT chunks otherwise, and whenever that host fails)",
        pattern=r"^https?://[^\s]+$",
        max_length=2048,
    )

    @property
    def update_id(self) -> str:
        """Names the transfer on the wire; the payload's content address."""
        return self.sha256[:32]


class GoldenTensor(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    datatype: str
    shape: list[int]
    data: list[float] | list[int]


class SelfTest(BaseModel):
    """Inputs the new model runs before it is switched in, and what it must answer."""

    inputs: list[GoldenTensor]
    expected: list[GoldenTensor]
    atol: float = Field(1e-3, ge=0)
    rtol: float = Field(1e-3, ge=0)


class UpdateManifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_id: Literal["edgeserve.manifest/1"] = Field("edgeserve.manifest/1", alias="schema")
    model: str
    version: str
    rollback: bool = Field(False, description="signed permission to move to an older version")
    issued_at: float
    expires_at: float
    card: ModelCard
    payload: PayloadSpec
    self_test: SelfTest
    bank: str | None = Field(
        None,
        description="base64 of the reference bank the card names, sent when the device may "
        "not hold it yet (a bank it holds, same sha256, is taken from its serving slot)",
        max_length=4 * MAX_INLINE_BANK // 3 + 4,
    )

    def bank_bytes(self) -> bytes | None:
        """The inline bank, checked against the card (IntegrityError if it is not the one)."""
        if self.bank is None:
            return None
        data = base64.b64decode(self.bank, validate=True)
        named = self.card.bank
        if named is None or hashlib.sha256(data).hexdigest() != named.sha256:
            raise IntegrityError(f"{self.model} v{self.version}: the inline bank is not the card's")
        return data

    def canonical_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


class SignedManifest(BaseModel):
    """The envelope on the wire: manifest bytes (base64) and their Ed25519 signature."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    manifest: str
    signature: str
    key_id: str


def key_id(public_key: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def verify_signed_manifest(
    envelope: SignedManifest, public_key: Ed25519PublicKey, now: float | None = None
) -> UpdateManifest:
    """The manifest inside ``envelope`` if its signature verifies and it has not expired."""
    try:
        body = base64.b64decode(envelope.manifest, validate=True)
        signature = base64.b64decode(envelope.signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"manifest envelope is not base64: {exc}") from exc
    if len(body) > MAX_MANIFEST_BYTES:
        raise SignatureError(f"manifest of {len(body)} bytes is over {MAX_MANIFEST_BYTES}")
    try:
        public_key.verify(signature, body)
    except InvalidSignature as exc:
        raise SignatureError(
            f"manifest signature does not verify with operator key {key_id(public_key)}"
        ) from exc
    try:
        manifest = UpdateManifest.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidInput(f"signed manifest does not match {MANIFEST_SCHEMA}: {exc}") from exc
    current = time.time() if now is None else now
    if manifest.expires_at < current:
        raise UpdateRefused(
            f"manifest for {manifest.model} v{manifest.version} expired "
            f"{current - manifest.expires_at:.0f} s ago"
        )
    if manifest.card.name != manifest.model or manifest.card.version != manifest.version:
        raise InvalidInput("manifest card does not name the manifest's model and version")
    return manifest


def parse_envelope(data: bytes) -> SignedManifest:
    """Parse the envelope only (the manifest inside stays opaque until verified)."""
    if len(data) > 2 * MAX_MANIFEST_BYTES:
        raise InvalidInput(f"manifest envelope of {len(data)} bytes is too large")
    try:
        return SignedManifest.model_validate_json(data)
    except ValidationError as exc:
        raise InvalidInput(f"not a signed manifest envelope: {exc}") from exc
