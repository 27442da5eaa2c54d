"""Device enrollment on real files, a real broker setup and a real broker.

The device's key stays in its folder; the operator signs its request with the broker's
CA; the device checks the bundle and the agent started from the written config logs in
to the broker with its new certificate and password.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from edge_agent.config import AgentConfig
from edge_agent.enroll import CertificateMismatch, accept_enrollment, request_enrollment
from edgeserve.broker import BrokerSetup, EmbeddedBroker, MosquittoProcess, start_broker
from edgeserve.broker.passwords import read_password_file, verify_password
from edgeserve.processes import ServiceProcess, free_port
from edgeserve.security.pki import CsrInvalid, IdentityMismatch, ensure_dev_pki
from edgeserve.security.signing import PUBLIC_NAME, ensure_operator_key
from edgeserve.settings import load_settings
from edgeserve.wire import topics
from edgeserve.wire.enrollment import EnrollmentBundle, EnrollmentFileError
from edgeserve.wire.errors import InvalidInput
from edgeserve.wire.sync_messages import DeviceStatus
from sync.enrollment import issue_bundle
from tests.sync.broker_client import BrokerClient

SYNC_USER = "edgeserve-sync"


@pytest.fixture
def setup(tmp_path: Path) -> BrokerSetup:
    """The operator's broker folder: a CA, a server certificate, the sync service user."""
    pki = ensure_dev_pki(tmp_path / "pki", devices=[])
    return BrokerSetup.create(tmp_path / "broker", pki, free_port(), [], [SYNC_USER])


@pytest.fixture
def operator_pub(tmp_path: Path) -> Path:
    ensure_operator_key(tmp_path / "operator")
    return tmp_path / "operator" / PUBLIC_NAME


def _edgeserve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeserve", *args], capture_output=True, text=True, timeout=60
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _signed(setup: BrokerSetup, device_dir: Path, device_id: str, operator_pub: Path) -> Path:
    """Steps 1 and 2 in process: the device's request, signed into a bundle file."""
    csr = request_enrollment(device_dir, device_id)
    bundle = issue_bundle(setup, csr.read_bytes(), operator_pub)
    path = device_dir.parent / f"{device_id}-{device_dir.name}.bundle.json"
    bundle.write(path)
    return path


# -- the round trip ---------------------------------------------------------------------


@pytest.fixture
def broker(setup: BrokerSetup) -> Iterator[MosquittoProcess | EmbeddedBroker]:
    broker = start_broker(setup)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.mark.integration
def test_an_enrolled_agent_logs_in_to_the_broker_with_its_new_identity(
    tmp_path: Path,
    setup: BrokerSetup,
    operator_pub: Path,
    broker: MosquittoProcess | EmbeddedBroker,
) -> None:
    device_dir, bundle = tmp_path / "etc-edgeserve", tmp_path / "dev-7.bundle.json"
    csr = _edgeserve("agent", "enroll-request", "--device-id", "dev-7", "--dir", str(device_dir))
    assert csr.returncode == 0, csr.stderr
    mqtt_version = "5" if broker.supports_mqtt5 else "4"
    signed = _edgeserve(
        "fleet", "enroll", "--broker-dir", str(setup.directory), "--csr", csr.stdout.strip(),
        "--out", str(bundle), "--device-id", "dev-7", "--operator-key", str(operator_pub),
        "--mqtt-version", mqtt_version,
    )  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    broker.reload()  # what `systemctl reload mosquitto` does
    accepted = _edgeserve(
        "agent", "enroll-accept", "--bundle", str(bundle), "--dir", str(device_dir)
    )
    assert accepted.returncode == 0, accepted.stderr

    fleet = BrokerClient(setup.address(SYNC_USER), mqtt5=broker.supports_mqtt5)
    agent = ServiceProcess.edgeserve(
        "agent", "run", "--config", accepted.stdout.strip(),
        port_file=tmp_path / "agent.port", log_file=tmp_path / "agent.log",
        env={"EDGESERVE_AGENT_PORT": "0", "EDGESERVE_AGENT_STATE_DIR": str(tmp_path / "state")},
    )  # fmt: skip
    try:
        assert fleet.connect()[0]
        fleet.subscribe(topics.status("dev-7"))
        agent.start()
        online = fleet.receive_until(topics.status("dev-7"), timeout=20)[-1]
        assert DeviceStatus.model_validate_json(online.payload).online
    finally:
        agent.stop()
        fleet.close()


def test_the_device_key_is_private_and_the_request_names_the_device(tmp_path: Path) -> None:
    csr_path = request_enrollment(tmp_path / "etc", "dev-1")
    key = tmp_path / "etc" / "device.key"
    assert _mode(key) == 0o600
    csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=dev-1"


def test_repeating_the_request_keeps_the_key(tmp_path: Path) -> None:
    request_enrollment(tmp_path / "etc", "dev-1")
    first = (tmp_path / "etc" / "device.key").read_bytes()
    request_enrollment(tmp_path / "etc", "dev-1")
    assert (tmp_path / "etc" / "device.key").read_bytes() == first


def test_a_device_id_that_is_not_one_topic_level_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="invalid device id"):
        request_enrollment(tmp_path / "etc", "dev/1")


def test_accepting_writes_private_secrets_and_a_config_that_loads(
    tmp_path: Path, setup: BrokerSetup, operator_pub: Path
) -> None:
    device_dir = tmp_path / "etc"
    request_enrollment(device_dir, "dev-1")
    (device_dir / "agent.toml").write_text('device_id = "dev-1"\nmodels = ["digits-edge"]\n')
    config_path = accept_enrollment(device_dir, _signed(setup, device_dir, "dev-1", operator_pub))

    config = load_settings(AgentConfig, config_path)
    assert (config.device_id, config.models) == ("dev-1", ["digits-edge"])
    assert config.sync_broker == f"127.0.0.1:{setup.port}"
    assert config.sync_cert == device_dir / "device.pem"
    assert config.sync_key == device_dir / "device.key"
    assert _mode(device_dir / "broker.password") == 0o600
    assert _mode(config_path) == 0o640
    stored = read_password_file(setup.password_file)["dev-1"]
    assert verify_password(config.sync_secret() or "", stored)


def test_a_relative_device_folder_gives_a_config_that_loads_from_anywhere(
    tmp_path: Path, setup: BrokerSetup, operator_pub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    bundle = _signed(setup, Path("etc"), "dev-1", operator_pub)
    config_path = accept_enrollment(Path("etc"), bundle)
    monkeypatch.chdir("/")

    config = load_settings(AgentConfig, tmp_path / "etc" / "agent.toml")

    assert config_path.is_absolute() and config.sync_cert == tmp_path / "etc" / "device.pem"


def test_the_operator_keeps_only_the_password_hash(
    tmp_path: Path, setup: BrokerSetup, operator_pub: Path
) -> None:
    bundle = EnrollmentBundle.read(_signed(setup, tmp_path / "etc", "dev-1", operator_pub))
    assert _mode(tmp_path / "dev-1-etc.bundle.json") == 0o600
    assert not list(setup.credentials_dir.glob("dev-1*"))
    assert bundle.mqtt_password not in setup.password_file.read_text()


def test_a_gateway_target_reuses_the_enrolled_pair_for_mtls(
    tmp_path: Path, setup: BrokerSetup, operator_pub: Path
) -> None:
    from edgeserve.wire.enrollment import CloudTarget

    device_dir = tmp_path / "etc"
    csr = request_enrollment(device_dir, "dev-1")
    cloud = CloudTarget(target="gw.example:8443", server_name="gw.example")
    issue_bundle(setup, csr.read_bytes(), operator_pub, cloud=cloud).write(tmp_path / "b.json")
    config = load_settings(AgentConfig, accept_enrollment(device_dir, tmp_path / "b.json"))
    assert config.cloud_target == "gw.example:8443"
    assert (config.cloud_cert, config.cloud_key) == (config.sync_cert, config.sync_key)
    assert config.cloud_ca == config.sync_ca


# -- what must be refused ----------------------------------------------------------------


def test_the_operator_refuses_a_request_for_another_device(
    tmp_path: Path, setup: BrokerSetup, operator_pub: Path
) -> None:
    csr = request_enrollment(tmp_path / "etc", "dev-2")
    result = _edgeserve(
        "fleet", "enroll", "--broker-dir", str(setup.directory), "--csr", str(csr),
        "--out", str(tmp_path / "b.json"), "--device-id", "dev-1",
        "--operator-key", str(operator_pub),
    )  # fmt: skip
    assert result.returncode == 1
    assert "the request is for device 'dev-2', not 'dev-1'" in result.stderr
    assert not (tmp_path / "b.json").exists()
    assert "dev-2" not in read_password_file(setup.password_file)


def test_a_tampered_request_is_refused(
    tmp_path: Path, setup: BrokerSetup, operator_pub: Path
) -> None:
    csr = request_enrollment(tmp_path / "etc", "dev-1")
    der = x509.load_pem_x509_csr(csr.read_bytes()).public_bytes(Encoding.DER)
    tampered = der.replace(b"dev-1", b"dev-9")  # same length: still parses, no longer verifies
    pem = x509.load_der_x509_csr(tampered).public_bytes(Encoding.PEM)
    with pytest.raises(CsrInvalid, match="self-signature does not verify"):
        issue_bundle(setup, pem, operator_pub)
    assert "dev-9" not in read_password_file(setup.password_file)


def test_garbage_is_not_a_request(setup: BrokerSetup, operator_pub: Path) -> None:
    with pytest.raises(CsrInvalid, match="not a PEM certificate signing request"):
        issue_bundle(setup, b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", operator_pub)


def test_a_bundle_for_another_key_is_refused(
    tmp_path: Path, setup: BrokerSetup, operator_pub: Path
) -> None:
    request_enrollment(tmp_path / "etc", "dev-1")
    other_key_bundle = _signed(setup, tmp_path / "impostor", "dev-1", operator_pub)
    with pytest.raises(CertificateMismatch, match="not for this device's key"):
        accept_enrollment(tmp_path / "etc", other_key_bundle)
    assert not (tmp_path / "etc" / "device.pem").exists()


def test_a_bundle_for_another_device_is_refused(
    tmp_path: Path, setup: BrokerSetup, operator_pub: Path
) -> None:
    request_enrollment(tmp_path / "etc", "dev-1")
    bundle = _signed(setup, tmp_path / "other", "dev-2", operator_pub)
    with pytest.raises(IdentityMismatch, match="bundle is for device 'dev-2'"):
        accept_enrollment(tmp_path / "etc", bundle)


def test_a_certificate_the_bundles_ca_did_not_sign_is_refused(
    tmp_path: Path, setup: BrokerSetup, operator_pub: Path
) -> None:
    device_dir = tmp_path / "etc"
    bundle_path = _signed(setup, device_dir, "dev-1", operator_pub)
    foreign_ca = ensure_dev_pki(tmp_path / "foreign", devices=[]).ca.cert.read_text()
    document = json.loads(bundle_path.read_text()) | {"ca": foreign_ca}
    bundle_path.write_text(json.dumps(document))
    with pytest.raises(CertificateMismatch, match="not signed by the bundle's CA"):
        accept_enrollment(device_dir, bundle_path)


def test_accepting_before_requesting_says_what_is_missing(
    tmp_path: Path, setup: BrokerSetup, operator_pub: Path
) -> None:
    bundle = _signed(setup, tmp_path / "elsewhere", "dev-1", operator_pub)
    with pytest.raises(EnrollmentFileError, match="run enroll-request first"):
        accept_enrollment(tmp_path / "etc", bundle)


def test_an_unreadable_bundle_is_reported_as_such(tmp_path: Path) -> None:
    request_enrollment(tmp_path / "etc", "dev-1")
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(EnrollmentFileError, match="is not an enrollment bundle"):
        accept_enrollment(tmp_path / "etc", tmp_path / "b.json")


def test_an_enrolled_device_will_not_request_under_another_id(
    tmp_path: Path, setup: BrokerSetup, operator_pub: Path
) -> None:
    accept_enrollment(tmp_path / "etc", _signed(setup, tmp_path / "etc", "dev-1", operator_pub))
    with pytest.raises(IdentityMismatch, match="enrolled as 'dev-1'"):
        request_enrollment(tmp_path / "etc", "dev-2")


def test_a_private_operator_key_is_never_put_in_a_bundle(
    tmp_path: Path, setup: BrokerSetup, operator_pub: Path
) -> None:
    csr = request_enrollment(tmp_path / "etc", "dev-1")
    private = operator_pub.with_name("operator.key")
    with pytest.raises(EnrollmentFileError, match="not a PEM public key"):
        issue_bundle(setup, csr.read_bytes(), private)
