"""Authentication: headers and device CNs become principals; revocation beats the cache."""

import asyncio
from pathlib import Path

import pytest

from cloud_gateway.scheduler import RateLimit
from cloud_gateway.tenancy import ApiKey, Authenticator, Principal, Tenant, TenantStore
from edgeserve.wire.errors import ErrorCode, PermissionDenied, Unauthenticated


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingStore(TenantStore):
    """A real store that counts key verifications (database lookups)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.verifications = 0

    def verify_key(self, plaintext: str, *, slow_ok: bool = True) -> Tenant:
        self.verifications += 1
        return super().verify_key(plaintext, slow_ok=slow_ok)


@pytest.fixture
def store(tmp_path: Path):
    with CountingStore(tmp_path / "tenants.db") as opened:
        yield opened


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def auth(store, clock) -> Authenticator:
    return Authenticator(store, cache_ttl_s=60, clock=clock)


@pytest.mark.parametrize("template", ["Bearer {}", "bearer {}", "  Bearer   {} ", "{}"])
def test_a_key_is_accepted_as_bearer_token_or_raw_x_api_key(store, auth, template):
    _, key = store.add_tenant("acme", ["digits"], weight=3, priority_tier=2)

    principal = auth.from_api_key(template.format(key))

    assert principal.tenant == "acme"
    assert principal.key_id == ApiKey.parse(key).key_id
    assert principal.device_id is None
    assert (principal.weight, principal.priority_tier, principal.kind) == (3, 2, "app")
    assert principal.identity == f"acme/key:{principal.key_id}"


@pytest.mark.parametrize("header", [None, "", "   ", "Bearer", "Bearer   "])
def test_missing_credentials_are_unauthenticated(auth, header):
    with pytest.raises(Unauthenticated, match="missing credentials") as caught:
        auth.from_api_key(header)
    assert caught.value.code.http_status == 401


def test_another_authorization_scheme_is_refused_without_echoing_its_secret(auth):
    with pytest.raises(Unauthenticated, match="unsupported authorization scheme 'Basic'") as e:
        auth.from_api_key("Basic dXNlcjpodW50ZXIy")
    assert "dXNlcjpodW50ZXIy" not in e.value.message


def test_malformed_unknown_and_revoked_keys_each_say_so(store, auth):
    _, old = store.add_tenant("acme", ["digits"])
    store.rotate_key("acme")

    with pytest.raises(Unauthenticated, match="malformed API key"):
        auth.from_api_key("Bearer es_nope")
    with pytest.raises(Unauthenticated, match="unknown API key"):
        auth.from_api_key(ApiKey.generate().plaintext)
    with pytest.raises(Unauthenticated, match="revoked"):
        auth.from_api_key(f"Bearer {old}")


def test_a_verified_key_is_served_from_the_cache_until_its_ttl(store, auth, clock):
    _, key = store.add_tenant("acme", ["digits"])

    first = auth.from_api_key(f"Bearer {key}")
    clock.now += 59
    assert auth.from_api_key(key) == first
    assert store.verifications == 1

    clock.now += 2
    assert auth.from_api_key(key) == first
    assert store.verifications == 2


def test_failed_keys_are_never_cached(store, auth):
    for _ in range(3):
        with pytest.raises(Unauthenticated):
            auth.from_api_key(ApiKey.generate().plaintext)
    assert store.verifications == 3


def test_rotation_through_the_store_revokes_a_cached_key_at_once(store, auth):
    _, old = store.add_tenant("acme", ["digits"])
    auth.from_api_key(old)

    new = store.rotate_key("acme")

    with pytest.raises(Unauthenticated, match="revoked"):
        auth.from_api_key(old)
    assert auth.from_api_key(new).tenant == "acme"


def test_removal_through_the_store_drops_a_cached_key_at_once(store, auth):
    _, key = store.add_tenant("acme", ["digits"])
    auth.from_api_key(key)

    store.remove_tenant("acme")

    with pytest.raises(Unauthenticated, match="unknown API key"):
        auth.from_api_key(key)


def test_an_update_through_the_store_refreshes_the_cached_allowance(store, auth):
    _, key = store.add_tenant("acme", ["digits"], rate_per_s=1)
    auth.from_api_key(key)

    store.update_tenant("acme", rate_per_s=100)

    assert auth.from_api_key(key).rate_per_s == 100


def test_rotation_by_another_process_is_seen_within_the_cache_ttl(store, auth, clock, tmp_path):
    _, old = store.add_tenant("acme", ["digits"])
    auth.from_api_key(old)

    with TenantStore(tmp_path / "tenants.db") as admin_cli:
        admin_cli.rotate_key("acme")

    assert auth.from_api_key(old).tenant == "acme"  # still cached: the documented bound
    clock.now += 60
    with pytest.raises(Unauthenticated, match="revoked"):
        auth.from_api_key(old)


def test_a_revocation_during_a_verification_does_not_recache_the_old_key(tmp_path, clock):
    class RotatingStore(CountingStore):
        def verify_key(self, plaintext: str, *, slow_ok: bool = True) -> Tenant:
            tenant = super().verify_key(plaintext, slow_ok=slow_ok)
            if self.verifications == 1:
                self.rotate_key(tenant.name)  # lands between the hash and the cache write
            return tenant

    with RotatingStore(tmp_path / "tenants.db") as store:
        _, old = store.add_tenant("acme", ["digits"])
        auth = Authenticator(store, clock=clock)
        auth.from_api_key(old)

        with pytest.raises(Unauthenticated, match="revoked"):
            auth.from_api_key(old)


def test_the_async_variant_hashes_misses_off_the_loop_and_hits_inline(store, auth):
    _, key = store.add_tenant("acme", ["digits"])

    async def twice() -> tuple[Principal, Principal]:
        return await auth.from_api_key_async(f"Bearer {key}"), await auth.from_api_key_async(key)

    first, second = asyncio.run(twice())

    assert first == second
    assert store.verifications == 1


def test_tenant_a_is_not_authorized_for_tenant_b_s_model(store, auth):
    _, key_a = store.add_tenant("a", ["model-a"])
    store.add_tenant("b", ["model-b"])
    principal = auth.from_api_key(key_a)

    auth.authorize(principal, "model-a")
    with pytest.raises(PermissionDenied, match="tenant 'a' may not use model 'model-b'") as e:
        auth.authorize(principal, "model-b")
    assert e.value.code is ErrorCode.PERMISSION_DENIED


def test_a_wildcard_tenant_may_use_every_model(store, auth):
    _, key = store.add_tenant("ops", ["*"])
    principal = auth.from_api_key(key)

    for model in ("digits-cloud", "anything"):
        auth.authorize(principal, model)


def test_a_registered_device_cn_becomes_its_tenant_s_principal(store, auth):
    store.add_tenant("fleet", ["digits-cloud"], kind="device", rate_per_s=4, burst=8)
    store.register_device("dev-1", "fleet")

    principal = auth.from_device_certificate("dev-1")

    assert (principal.tenant, principal.kind, principal.device_id) == ("fleet", "device", "dev-1")
    assert principal.key_id is None
    assert principal.identity == "fleet/device:dev-1"
    assert principal.rate_limit == RateLimit(4, 8, 16)
    auth.authorize(principal, "digits-cloud")


def test_an_unregistered_device_is_denied_and_no_certificate_is_unauthenticated(store, auth):
    store.add_tenant("fleet", ["*"], kind="device")

    with pytest.raises(PermissionDenied, match="device 'dev-9' is not registered"):
        auth.from_device_certificate("dev-9")
    for missing in (None, ""):
        with pytest.raises(Unauthenticated, match="client certificate"):
            auth.from_device_certificate(missing)


@pytest.mark.parametrize("ids", [{}, {"key_id": "k", "device_id": "d"}])
def test_a_principal_has_exactly_one_credential(ids):
    allowance = {
        "tenant": "acme",
        "kind": "app",
        "allowed_models": ("*",),
        "weight": 1.0,
        "priority_tier": 1,
        "rate_per_s": 1.0,
        "burst": 1.0,
        "max_in_flight": 1,
    }

    with pytest.raises(ValueError, match="exactly one of key_id and device_id"):
        Principal(**allowance, **ids)
