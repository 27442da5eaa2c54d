"""API keys: their format, their generation, and the digest that is all we store.

A key reads ``es_<key id>_<secret>``. The key id (12 hex digits) is a public handle, like a
user name: it finds the row without scanning every digest. The secret (32 random bytes,
urlsafe base64) is what proves possession.

Why a plain SHA-256 and not a password hash: a password hash (scrypt, argon2) exists to
make guessing a *low-entropy* secret expensive. These secrets carry 256 random bits, so
guessing is out of reach at any hash speed, while a slow hash on the request path turns
every unknown or wrong key into tens of milliseconds of CPU for whoever sends it. A server
secret (pepper) would add a value to distribute to every replica and to the CLI without
making the search any less hopeless. So the stored form is ``sha256$<digest>`` of the key
under a domain tag, compared in constant time: about a microsecond.

Rows written before this change hold ``scrypt$n$r$p$salt$digest``. They still verify, once:
a key that passes is re-hashed to SHA-256 by the store. Until then each check costs a full
scrypt, so those checks go through :class:`LegacyGate`, which runs one at a time and at a
bounded rate: a flood of wrong secrets for an old key id is refused (429, retry) instead of
eating the gateway's CPU.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edgeserve.wire.errors import InternalError, RateLimited, Unauthenticated

KEY_PREFIX = "es"
_KEY_ID_BYTES = 6
_SECRET_BYTES = 32
_KEY = re.compile(r"^es_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_DOMAIN = b"edgeserve-api-key/v1\0"
SCHEME = "sha256"
LEGACY_SCHEME = "scrypt"
MALFORMED = "malformed API key: expected 'es_<key id>_<secret>'"
_LEGACY_BUSY = "this API key is checked slowly until its first use after the hash upgrade; retry"


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


def key_digest(key: ApiKey) -> bytes:
    return hashlib.sha256(_DOMAIN + key.plaintext.encode()).digest()


def hash_key(key: ApiKey) -> str:
    """The stored form of a new key: ``sha256$<urlsafe base64 digest>``."""
    return f"{SCHEME}${_b64(key_digest(key))}"


def is_legacy(encoded: str) -> bool:
    return encoded.startswith(LEGACY_SCHEME + "$")


def verify_key_hash(key: ApiKey, encoded: str) -> bool:
    """Whether ``key`` matches the stored ``encoded`` form (either scheme)."""
    scheme, _, rest = encoded.partition("$")
    try:
        if scheme == SCHEME:
            return hmac.compare_digest(key_digest(key), base64.urlsafe_b64decode(rest))
        if scheme == LEGACY_SCHEME:
            n, r, p, salt, digest = rest.split("$")
            actual = _scrypt(key.plaintext, base64.urlsafe_b64decode(salt), int(n), int(r), int(p))
            return hmac.compare_digest(actual, base64.urlsafe_b64decode(digest))
    except ValueError as exc:
        raise InternalError("a stored API key hash is corrupt") from exc
    raise InternalError(f"a stored API key hash is of an unknown kind ({scheme[:16]!r})")


def legacy_scrypt_hash(key: ApiKey, n: int = 2**14, r: int = 8, p: int = 1) -> str:
    """The pre-SHA-256 stored form; kept so tests and migrations can write such rows."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(key.plaintext, salt, n, r, p)
    return "$".join((LEGACY_SCHEME, str(n), str(r), str(p), _b64(salt), _b64(digest)))


class LegacyGate:
    """Admits slow legacy (scrypt) verifications one at a time, at most ``per_s`` a second.

    A check that finds the gate busy or its budget spent is refused at once with
    ``RateLimited`` (429 with Retry-After): the owner of a real key gets through on a later try,
    and nobody can make the gateway spend more than one core-second per ``per_s`` checks.
    """

    def __init__(self, per_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = 1.0 / per_s
        self._clock = clock
        self._lock = threading.Lock()
        self._next = 0.0
        self.refused = 0

    def check(self, key: ApiKey, encoded: str) -> bool:
        if not self._lock.acquire(blocking=False):
            self.refused += 1
            raise RateLimited(_LEGACY_BUSY, self._interval)
        try:
            now = self._clock()
            if now < self._next:
                self.refused += 1
                raise RateLimited(_LEGACY_BUSY, self._next - now)
            self._next = now + self._interval
            return verify_key_hash(key, encoded)
        finally:
            self._lock.release()


def _scrypt(text: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # maxmem must exceed 128 * r * n; the default (32 MiB) is too tight for n = 2**15.
    maxmem = 256 * r * n + 1024 * 1024
    return hashlib.scrypt(text.encode(), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=32)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii")
