"""Turn a request's credentials into a ``Principal``, and say whether it may use a model.

API keys arrive as ``Authorization: Bearer <key>`` or as the raw value of ``x-api-key``;
devices arrive over mTLS, identified by their client certificate's common name, which the
TLS layer has already verified against the CA. There is no anonymous mode.

Verified keys are cached in memory by ``sha256(key)`` for ``cache_ttl_s``, so a known
caller costs a dict lookup, not a database query; an unknown key or a wrong secret costs
one indexed query and one SHA-256 (microseconds), inline. The store tells this cache about
rotations and removals made through it, which drops that tenant's entries at once; a
change made by another process (the admin CLI) is seen when the entry expires, so
``cache_ttl_s`` is the longest a revoked key can still be accepted by a running gateway.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from cloud_gateway.tenancy.keys import ApiKey
from cloud_gateway.tenancy.models import Principal
from cloud_gateway.tenancy.store import SlowCheckNeeded, TenantStore
from edgeserve.wire.errors import PermissionDenied, Unauthenticated, shown

MISSING_KEY = "missing credentials: send 'Authorization: Bearer <API key>' or 'x-api-key'"
MISSING_CERT = "missing client certificate: devices authenticate with mutual TLS"


class Authenticator:
    """Authenticates API keys (with a TTL cache) and mTLS devices against a ``TenantStore``."""

    def __init__(
        self,
        store: TenantStore,
        cache_ttl_s: float = 60.0,
        *,
        max_cached_keys: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._ttl = cache_ttl_s
        self._max = max_cached_keys
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()
        # Bumped by forget(): a verification that started before a revocation must not
        # put the revoked key back into the cache when it finishes.
        self._generation = 0
        store.on_change(self.forget)

    def from_api_key(self, header_value: str | None) -> Principal:
        """Authenticate a ``Bearer <key>`` Authorization value or a raw ``x-api-key`` value.

        A key row from before the SHA-256 upgrade blocks for the slow legacy hash; from an
        event loop use ``from_api_key_async``.
        """
        return self._verify(_key_from_header(header_value), slow_ok=True)

    async def from_api_key_async(self, header_value: str | None) -> Principal:
        """``from_api_key`` inline (a dict hit, or one query and one SHA-256), except a
        legacy (scrypt) row's check, which goes to a thread."""
        key = _key_from_header(header_value)
        try:
            return self._verify(key, slow_ok=False)
        except SlowCheckNeeded:
            return await asyncio.to_thread(self._verify, key, slow_ok=True)

    def _verify(self, key: str, *, slow_ok: bool) -> Principal:
        digest = hashlib.sha256(key.encode()).digest()
        cached = self._cached(digest)
        if cached is not None:
            return cached
        generation = self._generation
        tenant = self._store.verify_key(key, slow_ok=slow_ok)
        principal = Principal.for_key(tenant, ApiKey.parse(key).key_id)
        self._remember(digest, principal, generation)
        return principal

    def from_device_certificate(self, common_name: str | None) -> Principal:
        """The principal of a verified client certificate's CN (its device id)."""
        if not common_name:
            raise Unauthenticated(MISSING_CERT)
        tenant = self._store.tenant_for_device(common_name)
        if tenant is None:
            raise PermissionDenied(f"device {shown(common_name)!r} is not registered")
        return Principal.for_device(tenant, common_name)

    @staticmethod
    def authorize(principal: Principal, model: str) -> None:
        if not principal.can_use(model):
            raise PermissionDenied(
                f"tenant {shown(principal.tenant)!r} may not use model {shown(model)!r}"
            )

    def forget(self, tenant: str | None = None) -> None:
        """Drop the cached keys of ``tenant`` (all tenants when None)."""
        with self._lock:
            self._generation += 1
            stale = [d for d, (p, _) in self._cache.items() if tenant in (None, p.tenant)]
            for digest in stale:
                del self._cache[digest]

    def _cached(self, digest: bytes) -> Principal | None:
        with self._lock:
            entry = self._cache.get(digest)
            if entry is None:
                return None
            if entry[1] <= self._clock():
                del self._cache[digest]
                return None
            self._cache.move_to_end(digest)
            return entry[0]

    def _remember(self, digest: bytes, principal: Principal, generation: int) -> None:
        with self._lock:
            if self._ttl <= 0 or generation != self._generation:
                return
            self._cache[digest] = (principal, self._clock() + self._ttl)
            self._cache.move_to_end(digest)
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)


def _key_from_header(value: str | None) -> str:
    text = (value or "").strip()
    if not text:
        raise Unauthenticated(MISSING_KEY)
    scheme, _, rest = text.partition(" ")
    if not rest:
        if scheme.lower() == "bearer":
            raise Unauthenticated(MISSING_KEY)
        return text
    if scheme.lower() != "bearer":
        # Echo only a short scheme name: the rest may be somebody's secret.
        raise Unauthenticated(f"unsupported authorization scheme '{scheme[:16]}'; use Bearer")
    return rest.strip()
