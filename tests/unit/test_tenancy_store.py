"""The tenant store: keys are shown once and stored hashed, revocation sticks, files persist."""

import sqlite3
import threading
from pathlib import Path

import pytest

from cloud_gateway.tenancy import (
    SCHEMA_VERSION,
    ApiKey,
    LegacyGate,
    TenantExists,
    TenantNotFound,
    TenantStore,
)
from cloud_gateway.tenancy.keys import legacy_scrypt_hash
from cloud_gateway.tenancy.store import SlowCheckNeeded
from edgeserve.wire.errors import (
    ErrorCode,
    InternalError,
    InvalidInput,
    RateLimited,
    Unauthenticated,
)

FAST = 2**8  # scrypt cost of the legacy rows these tests write


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "tenants.db"


@pytest.fixture
def store(db: Path):
    with TenantStore(db) as opened:
        yield opened


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _file_bytes(db: Path) -> bytes:
    return b"".join(path.read_bytes() for path in db.parent.glob(db.name + "*"))


def test_the_plaintext_key_is_returned_once_and_only_its_digest_is_stored(db):
    with TenantStore(db) as store:
        _, key = store.add_tenant("acme", ["digits"])
        rotated = store.rotate_key("acme")

    raw = _file_bytes(db)
    for plaintext in (key, rotated):
        assert plaintext.encode() not in raw
        assert ApiKey.parse(plaintext).secret.encode() not in raw
    with sqlite3.connect(db) as conn:
        hashes = [row[0] for row in conn.execute("SELECT key_hash FROM api_keys")]
    conn.close()
    assert len(hashes) == 2
    assert all(h.startswith("sha256$") for h in hashes)
    assert hashes[0] != hashes[1]


def test_keys_have_the_documented_format(store):
    _, key = store.add_tenant("acme", ["*"])

    prefix, key_id, secret = key.split("_", 2)
    assert (prefix, len(key_id), len(secret)) == ("es", 12, 43)
    assert ApiKey.parse(key).plaintext == key
    assert secret not in repr(ApiKey.parse(key))


def test_a_good_key_verifies_to_its_tenant(store):
    tenant, key = store.add_tenant("acme", ["digits"], rate_per_s=5, burst=7, weight=2)

    assert store.verify_key(key) == tenant
    assert (tenant.rate_per_s, tenant.burst, tenant.weight) == (5, 7, 2)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "nope",
        "es_0123456789ab",
        "es_0123456789ab_short",
        "xx_0123456789ab_" + "a" * 43,
        "es_0123456789AB_" + "a" * 43,
        "es_0123456789ab_" + "a" * 43 + "!",
    ],
)
def test_a_malformed_key_is_unauthenticated(store, key):
    with pytest.raises(Unauthenticated, match="malformed API key") as caught:
        store.verify_key(key)
    assert caught.value.code is ErrorCode.UNAUTHENTICATED


def test_an_unknown_key_is_unauthenticated(store):
    store.add_tenant("acme", ["digits"])

    with pytest.raises(Unauthenticated, match=r"^unknown API key$"):
        store.verify_key(ApiKey.generate().plaintext)


def test_a_known_key_id_with_a_wrong_secret_reads_as_unknown(store):
    _, key = store.add_tenant("acme", ["digits"])
    forged = ApiKey(ApiKey.parse(key).key_id, ApiKey.generate().secret).plaintext

    with pytest.raises(Unauthenticated, match=r"^unknown API key$"):
        store.verify_key(forged)


def test_rotation_revokes_every_old_key_and_the_new_one_works(store):
    tenant, first = store.add_tenant("acme", ["digits"])
    second = store.rotate_key("acme")
    third = store.rotate_key("acme")

    for old in (first, second):
        with pytest.raises(Unauthenticated, match=r"^API key was revoked$"):
            store.verify_key(old)
    assert store.verify_key(third) == tenant
    live = [info for info in store.list_keys("acme") if info.revoked_at is None]
    assert [info.key_id for info in live] == [ApiKey.parse(third).key_id]


def test_authentication_errors_never_name_a_tenant(store):
    _, key = store.add_tenant("secret-customer", ["digits"])
    store.rotate_key("secret-customer")
    attempts = [key, "garbage", ApiKey.generate().plaintext]

    for attempt in attempts:
        with pytest.raises(Unauthenticated) as caught:
            store.verify_key(attempt)
        assert "secret-customer" not in caught.value.message


def test_removing_a_tenant_makes_its_keys_and_devices_unknown(store):
    _, key = store.add_tenant("acme", ["digits"], kind="device")
    store.register_device("dev-1", "acme")

    store.remove_tenant("acme")

    with pytest.raises(Unauthenticated, match="unknown API key"):
        store.verify_key(key)
    assert store.tenant_for_device("dev-1") is None
    assert store.list_tenants() == []
    with pytest.raises(TenantNotFound) as caught:
        store.remove_tenant("acme")
    assert caught.value.code is ErrorCode.NOT_FOUND


def test_tenants_are_listed_by_name_and_fetched_by_name(store):
    store.add_tenant("zeta", ["a"])
    acme, _ = store.add_tenant("acme", ["b", "a", "b"])

    assert [t.name for t in store.list_tenants()] == ["acme", "zeta"]
    assert store.get_tenant("acme") == acme
    assert acme.allowed_models == ["a", "b"]
    with pytest.raises(TenantNotFound, match="tenant 'nobody' does not exist"):
        store.get_tenant("nobody")


def test_a_tenant_name_is_taken_once(store):
    store.add_tenant("acme", ["digits"])

    with pytest.raises(TenantExists, match="already exists"):
        store.add_tenant("acme", ["*"])


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "bad name"},
        {"allowed_models": []},
        {"allowed_models": [" "]},
        {"rate_per_s": 0},
        {"burst": float("inf")},
        {"max_in_flight": 0},
        {"weight": -1},
        {"priority_tier": 0},
        {"kind": "robot"},
    ],
)
def test_invalid_tenant_fields_are_invalid_input(store, fields):
    arguments = {"name": "acme", "allowed_models": ["digits"], **fields}

    with pytest.raises(InvalidInput, match="invalid tenant"):
        store.add_tenant(**arguments)
    assert store.list_tenants() == []


def test_update_changes_the_allowance_but_not_the_name_or_the_key(store):
    _, key = store.add_tenant("acme", ["digits"])

    updated = store.update_tenant("acme", rate_per_s=50.0, allowed_models=["*"], priority_tier=2)

    assert store.get_tenant("acme") == updated
    assert (updated.rate_per_s, updated.allowed_models, updated.priority_tier) == (50, ["*"], 2)
    assert store.verify_key(key) == updated
    with pytest.raises(InvalidInput, match="renamed"):
        store.update_tenant("acme", name="other")
    with pytest.raises(InvalidInput, match="invalid tenant"):
        store.update_tenant("acme", colour="blue")
    with pytest.raises(TenantNotFound):
        store.update_tenant("nobody", weight=2.0)


def test_devices_map_to_one_tenant(store):
    fleet, _ = store.add_tenant("fleet", ["digits-cloud"], kind="device")
    store.add_tenant("other", ["*"])

    store.register_device("dev-1", "fleet")
    store.register_device("dev-1", "fleet")  # idempotent

    assert store.tenant_for_device("dev-1") == fleet
    assert store.tenant_for_device("dev-2") is None
    assert store.list_devices("fleet") == ["dev-1"]
    with pytest.raises(InvalidInput, match="belongs to tenant 'fleet'"):
        store.register_device("dev-1", "other")
    with pytest.raises(InvalidInput, match="device id"):
        store.register_device("../etc/passwd", "fleet")
    with pytest.raises(TenantNotFound):
        store.register_device("dev-3", "nobody")
    store.unregister_device("dev-1")
    assert store.tenant_for_device("dev-1") is None


def test_reopening_the_store_keeps_tenants_keys_and_devices(db):
    with TenantStore(db) as store:
        tenant, key = store.add_tenant("acme", ["digits"], max_in_flight=3)
        store.register_device("dev-1", "acme")

    with TenantStore(db) as reopened:
        assert reopened.verify_key(key) == tenant
        assert reopened.tenant_for_device("dev-1") == tenant


def _store_legacy_row(db: Path, key: str) -> None:
    """Rewrite a key's row as an edgeserve from before the SHA-256 upgrade stored it."""
    legacy = legacy_scrypt_hash(ApiKey.parse(key), n=FAST)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE api_keys SET key_hash = ? WHERE key_id = ?",
                     (legacy, ApiKey.parse(key).key_id))  # fmt: skip
    conn.close()


def _stored_hash(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        (stored,) = conn.execute("SELECT key_hash FROM api_keys").fetchone()
    conn.close()
    return str(stored)


def test_a_key_stored_as_scrypt_still_verifies_and_is_rehashed_to_sha256(db):
    with TenantStore(db) as store:
        tenant, key = store.add_tenant("acme", ["digits"])
    _store_legacy_row(db, key)
    assert _stored_hash(db).startswith(f"scrypt${FAST}$8$1$")

    with TenantStore(db) as upgraded:
        assert upgraded.verify_key(key) == tenant
    assert _stored_hash(db).startswith("sha256$")
    with TenantStore(db) as again:
        assert again.verify_key(key) == tenant
        assert again.verify_key(key, slow_ok=False) == tenant  # no slow check any more


def test_a_wrong_secret_for_a_scrypt_row_is_refused_and_leaves_the_row_alone(db):
    with TenantStore(db) as store:
        _, key = store.add_tenant("acme", ["digits"])
    _store_legacy_row(db, key)
    wrong = ApiKey(ApiKey.parse(key).key_id, ApiKey.generate().secret).plaintext

    with TenantStore(db) as store:
        with pytest.raises(SlowCheckNeeded):  # an event loop must not run scrypt inline
            store.verify_key(wrong, slow_ok=False)
        with pytest.raises(Unauthenticated, match="unknown API key"):
            store.verify_key(wrong)
    assert _stored_hash(db).startswith("scrypt$")


def test_a_flood_of_checks_against_a_scrypt_row_is_paced_not_hashed(db):
    clock = FakeClock()
    with TenantStore(db, legacy_gate=LegacyGate(per_s=10, clock=clock)) as store:
        _, key = store.add_tenant("acme", ["digits"])
        _store_legacy_row(db, key)
        wrong = ApiKey(ApiKey.parse(key).key_id, ApiKey.generate().secret).plaintext
        with pytest.raises(Unauthenticated):
            store.verify_key(wrong)  # the first check in this tenth of a second runs
        for _ in range(100):
            with pytest.raises(RateLimited, match="retry"):
                store.verify_key(wrong)
        assert store.legacy_gate.refused == 100
        clock.now += 0.1  # the owner's next try gets through and upgrades the row
        assert store.verify_key(key).name == "acme"
        assert store.verify_key(key, slow_ok=False).name == "acme"


def test_new_keys_are_stored_as_sha256_not_a_password_hash(db):
    with TenantStore(db) as store:
        _, key = store.add_tenant("acme", ["digits"])
        assert store.verify_key(key).name == "acme"
    assert _stored_hash(db).startswith("sha256$")


def test_the_schema_version_is_recorded_and_the_file_is_in_wal_mode(db):
    with TenantStore(db) as store:
        assert store.schema_version == SCHEMA_VERSION

    with sqlite3.connect(db) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_version")]
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    conn.close()
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    assert mode == "wal"


def test_reopening_does_not_reapply_migrations(db):
    TenantStore(db).close()
    TenantStore(db).close()

    with sqlite3.connect(db) as conn:
        (count,) = conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()
    conn.close()
    assert count == SCHEMA_VERSION


def test_a_file_from_a_newer_edgeserve_is_refused(db):
    TenantStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO schema_version VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    conn.close()

    with pytest.raises(InternalError, match="upgrade edgeserve"):
        TenantStore(db)


def test_a_second_connection_sees_the_writers_changes(db):
    with TenantStore(db) as writer, TenantStore(db) as reader:
        _, key = writer.add_tenant("acme", ["digits"])
        assert reader.verify_key(key).name == "acme"
        writer.rotate_key("acme")
        with pytest.raises(Unauthenticated, match="revoked"):
            reader.verify_key(key)


def test_threads_can_share_one_store(store):
    _, key = store.add_tenant("acme", ["digits"])
    names: list[str] = []

    def verify() -> None:
        names.append(store.verify_key(key).name)

    threads = [threading.Thread(target=verify) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert names == ["acme"] * 8
