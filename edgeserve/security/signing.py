"""The operator's Ed25519 update-signing key: generated at setup, pinned by every device.

The private key stays with the sync service (mode 0600, never in the repo); devices get
only the public key (``operator.pub``, raw PEM) in their config and refuse any manifest
it did not sign.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from edgeserve.durable import write_atomic, write_private
from edgeserve.wire.errors import InvalidInput
from edgeserve.wire.manifest import SignedManifest, UpdateManifest, key_id

PRIVATE_NAME = "operator.key"
PUBLIC_NAME = "operator.pub"


@dataclass(frozen=True, slots=True)
class OperatorKey:
    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    def sign(self, manifest: UpdateManifest) -> SignedManifest:
        body = manifest.canonical_bytes()
        return SignedManifest(
            manifest=base64.b64encode(body).decode(),
            signature=base64.b64encode(self.private.sign(body)).decode(),
            key_id=self.key_id,
        )


def ensure_operator_key(directory: Path) -> OperatorKey:
    """Load the key pair from ``directory``, generating it on first use."""
    private_path = directory / PRIVATE_NAME
    if private_path.is_file():
        return OperatorKey(load_private_key(private_path))
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    write_private(private_path, pem)
    public_pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    write_atomic(directory / PUBLIC_NAME, public_pem)
    return OperatorKey(key)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput(f"{path} is not an Ed25519 public key")
    return key
