"""API keys: their format, their generation and the slow salted hash that is all we store.

A key reads ``es_<key id>_<secret>``. The key id (12 hex digits) is a public handle, like a
user name: it finds the row without scanning every hash. The secret (32 random bytes,
urlsafe base64) is what proves possession; only ``scrypt(key, salt)`` is stored, with its
parameters, so raising the cost later still verifies keys hashed under the old one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field

from edgeserve.wire.errors import InternalError, Unauthenticated

KEY_PREFIX = "es"
_KEY_ID_BYTES = 6
_SECRET_BYTES = 32
_KEY = re.compile(r"^es_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_SALT_BYTES = 16
_HASH_BYTES = 32
# Production cost: about 16 MiB and tens of milliseconds per verification.
DEFAULT_SCRYPT_N = 2**14
MALFORMED = "malformed API key: expected 'es_<key id>_<secret>'"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A parsed key; ``repr`` never shows the secret."""

    key_id: str
    secret: str = field(repr=False)

    @classmethod
    def generate(cls) -> ApiKey:
        return cls(secrets.token_hex(_KEY_ID_BYTES), secrets.token_urlsafe(_SECRET_BYTES))

    @classmethod
    def parse(cls, text: str) -> ApiKey:
        match = _KEY.fullmatch(text)
        if match is None:
            raise Unauthenticated(MALFORMED)
        return cls(match[1], match[2])

    @property
    def plaintext(self) -> str:
        return f"{KEY_PREFIX}_{self.key_id}_{self.secret}"


class KeyHasher:
    """scrypt with a random salt; the encoded hash reads ``scrypt$n$r$p$salt$digest``."""

    def __init__(self, n: int = DEFAULT_SCRYPT_N, r: int = 8, p: int = 1) -> None:
        if n < 2 or n & (n - 1):
            raise ValueError(f"scrypt n must be a power of two > 1, got {n}")
        self.n, self.r, self.p = n, r, p

    def hash(self, key: ApiKey) -> str:
        salt = secrets.token_bytes(_SALT_BYTES)
        digest = _scrypt(key.plaintext, salt, self.n, self.r, self.p)
        return "$".join(("scrypt", str(self.n), str(self.r), str(self.p), _b64(salt), _b64(digest)))

    @staticmethod
    def verify(key: ApiKey, encoded: str) -> bool:
        try:
            scheme, n, r, p, salt, digest = encoded.split("$")
            if scheme != "scrypt":
                raise ValueError(scheme)
            expected = base64.urlsafe_b64decode(digest)
            actual = _scrypt(key.plaintext, base64.urlsafe_b64decode(salt), int(n), int(r), int(p))
        except ValueError as exc:
            raise InternalError("a stored API key hash is corrupt or of an unknown kind") from exc
        return hmac.compare_digest(actual, expected)


def _scrypt(text: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # maxmem must exceed 128 * r * n; the default (32 MiB) is too tight for n = 2**15.
    maxmem = 256 * r * n + 1024 * 1024
    return hashlib.scrypt(text.encode(), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=_HASH_BYTES)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii")
