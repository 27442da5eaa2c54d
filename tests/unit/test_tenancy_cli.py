"""The tenant admin commands: a key is printed once, listings show key ids, never secrets."""

import io
import re
import sqlite3
from pathlib import Path

import pytest
from rich.console import Console

from cloud_gateway.tenancy import TenantStore
from cloud_gateway.tenancy.cli import (
    device_register,
    tenant_add,
    tenant_list,
    tenant_remove,
    tenant_rotate_key,
)

KEY = re.compile(r"es_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")


class Screen:
    def __init__(self) -> None:
        self.buffer = io.StringIO()
        self.console = Console(file=self.buffer, width=200, color_system=None)

    def take(self) -> str:
        text = self.buffer.getvalue()
        self.buffer.seek(0)
        self.buffer.truncate()
        return text


@pytest.fixture
def screen() -> Screen:
    return Screen()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "tenants.db"


def _add(db: Path, screen: Screen, name: str = "acme") -> int:
    return tenant_add(db, name, ["digits"], 5.0, 10.0, 4, 2.0, 1, console=screen.console)


def test_add_prints_the_key_once_with_a_warning_and_the_key_works(db, screen):
    assert _add(db, screen) == 0

    out = screen.take()
    keys = KEY.findall(out)
    assert len(keys) == 1
    assert "shown once" in out
    with TenantStore(db) as store:
        assert store.verify_key(keys[0]).name == "acme"


def test_list_shows_tenants_and_key_ids_but_no_secret_or_hash(db, screen):
    _add(db, screen)
    key = KEY.findall(screen.take())[0]
    with sqlite3.connect(db) as conn:
        (stored_hash,) = conn.execute("SELECT key_hash FROM api_keys").fetchone()
    conn.close()

    assert tenant_list(db, console=screen.console) == 0

    out = screen.take()
    assert "acme" in out and "digits" in out
    assert key.split("_")[1] in out  # the key id
    assert key.split("_", 2)[2] not in out
    assert "scrypt" not in out and stored_hash.split("$")[-1] not in out


def test_rotate_prints_a_new_key_and_revokes_the_old(db, screen):
    _add(db, screen)
    old = KEY.findall(screen.take())[0]

    assert tenant_rotate_key(db, "acme", console=screen.console) == 0

    out = screen.take()
    (new,) = KEY.findall(out)
    assert new != old and "revoked" in out and "shown once" in out
    with TenantStore(db) as store:
        assert store.verify_key(new).name == "acme"
        assert [k.revoked_at is None for k in store.list_keys("acme")] == [False, True]


def test_remove_and_device_registration(db, screen):
    _add(db, screen)

    assert device_register(db, "dev-1", "acme", console=screen.console) == 0
    assert tenant_remove(db, "acme", console=screen.console) == 0

    with TenantStore(db) as store:
        assert store.list_tenants() == []


def test_errors_are_printed_and_return_a_failing_exit_code(db, screen):
    _add(db, screen)
    screen.take()

    assert _add(db, screen) == 1
    assert "already exists" in screen.take()
    assert tenant_rotate_key(db, "nobody", console=screen.console) == 1
    assert "does not exist" in screen.take()
    assert tenant_remove(db, "nobody", console=screen.console) == 1
    assert tenant_add(db, "bad name", ["x"], 1, 1, 1, 1, 1, console=screen.console) == 1
    assert "invalid tenant" in screen.take()
