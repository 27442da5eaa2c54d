"""Broker setup without a running broker: password hashes, ACL rules, generated files."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from edgeserve.broker import BrokerSetup, hash_password, may_publish, may_subscribe, render_acl
from edgeserve.broker.config import production_config, render_mosquitto_conf
from edgeserve.broker.passwords import read_password_file, verify_password
from edgeserve.wire import topics
from edgeserve.wire.errors import InvalidInput

REPO = Path(__file__).resolve().parents[2]
SERVICES = ["edgeserve-sync"]


def test_password_hash_has_mosquitto_2_format() -> None:
    stored = hash_password("correct horse")

    assert re.fullmatch(r"\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==", stored)
    assert verify_password("correct horse", stored)
    assert not verify_password("wrong horse", stored)


def test_verify_accepts_a_hash_made_by_mosquitto_passwd(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed (apt-get install mosquitto)")
    path = tmp_path / "passwd"
    subprocess.run([tool, "-b", "-c", str(path), "alice", "s3cret"], check=True)

    stored = read_password_file(path)["alice"]

    assert verify_password("s3cret", stored)
    assert not verify_password("s3cret!", stored)


@pytest.mark.parametrize(
    "stored", ["", "$6$rounds$salt$hash", "$7$101$!!$??", "$7$99999999$YWJj$YWJj", "$7$x$a$b"]
)
def test_verify_rejects_malformed_hashes(stored: str) -> None:
    assert not verify_password("anything", stored)


def test_setup_keeps_hashes_only_and_plaintext_in_private_files(
    broker_setup: BrokerSetup,
) -> None:
    entries = read_password_file(broker_setup.password_file)
    secret = broker_setup.credentials("dev-0").password

    assert set(entries) >= {"edgeserve-sync", *(f"dev-{i}" for i in range(6))}
    assert secret not in broker_setup.password_file.read_text()
    assert verify_password(secret, entries["dev-0"])
    for path in (broker_setup.password_file, *broker_setup.credentials_dir.iterdir()):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


@pytest.mark.parametrize("device_id", ["dev/1", "dev+", "#", "", "a b", "x" * 65, "dev-1\n"])
def test_device_ids_that_are_not_one_topic_level_are_refused(
    broker_setup: BrokerSetup, device_id: str
) -> None:
    with pytest.raises(InvalidInput):
        broker_setup.add_device(device_id)


def test_adding_a_device_again_rotates_its_password(tmp_path: Path) -> None:
    from edgeserve.security.pki import ensure_dev_pki

    setup = BrokerSetup.create(tmp_path / "b", ensure_dev_pki(tmp_path / "pki", []), 1, [])
    first = setup.add_device("dev-x")
    second = setup.add_device("dev-x")
    stored = read_password_file(setup.password_file)["dev-x"]

    assert first.password != second.password
    assert verify_password(second.password, stored)
    assert BrokerSetup.load(tmp_path / "b").credentials("dev-x") == second


def test_device_may_write_only_its_own_reports() -> None:
    mine = [
        topics.status("d1"),
        topics.reported("d1"),
        topics.update_request("d1", "ab12cd34"),
        topics.update_result("d1"),
        topics.telemetry("d1"),
    ]
    not_mine = [
        topics.status("d2"),
        topics.desired("d1"),
        topics.telemetry_ack("d1"),
        topics.chunk("d1", "ab12cd34", 0),
        f"{topics.ROOT}/groups/g/desired",
    ]

    assert all(may_publish("d1", topic, SERVICES) for topic in mine)
    assert not any(may_publish("d1", topic, SERVICES) for topic in not_mine)


def test_device_may_subscribe_only_to_its_own_inbound_topics() -> None:
    assert all(may_subscribe("d1", f, SERVICES) for f in topics.device_subscriptions("d1"))
    for topic_filter in [
        topics.desired("d2"),
        f"{topics.ROOT}/devices/+/desired",
        "#",
        f"{topics.ROOT}/devices/d1/#",
        topics.status("d1"),
    ]:
        assert not may_subscribe("d1", topic_filter, SERVICES), topic_filter


def test_service_user_may_use_the_whole_tree_and_nothing_outside() -> None:
    assert all(may_subscribe("edgeserve-sync", f, SERVICES) for f in topics.FLEET_SUBSCRIPTIONS)
    assert may_publish("edgeserve-sync", topics.chunk("d1", "ab12cd34", 3), SERVICES)
    assert not may_publish("edgeserve-sync", "other/app", SERVICES)


def test_usernames_with_wildcards_get_nothing() -> None:
    assert not may_subscribe("+", f"{topics.ROOT}/devices/+/desired", SERVICES)
    assert not may_publish("#", f"{topics.ROOT}/devices/#/status", SERVICES)


def test_deploy_folder_matches_the_code() -> None:
    deploy = REPO / "deploy" / "mosquitto"

    assert (deploy / "mosquitto.conf").read_text() == render_mosquitto_conf(production_config())
    assert (deploy / "acl").read_text() == render_acl()


def test_creating_the_setup_again_keeps_existing_passwords(broker_setup: BrokerSetup) -> None:
    before = broker_setup.credentials("dev-1")

    again = BrokerSetup.create(
        broker_setup.directory, broker_setup.pki, broker_setup.port, ["dev-1"]
    )

    assert again.credentials("dev-1") == before
    assert verify_password(before.password, read_password_file(again.password_file)["dev-1"])
