"""The sync service's certificate policy, fed messages directly (no broker, no network):
real CA files, a real broker setup folder and a real SQLite store."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry

from edgeserve.broker import BrokerSetup, passwords
from edgeserve.security.pki import ensure_dev_pki, issue_client_cert
from edgeserve.security.revocation import cert_facts, crl_entries, load_certificate
from edgeserve.wire import topics
from edgeserve.wire.errors import ModelNotFound
from edgeserve.wire.sync_messages import CertReply, CertRequest
from sync.cert_store import CertStore
from sync.certs import CertMetrics, FleetCertificates

DEVICE = "pump-1"


def csr_for(key_path: Path, name: str = DEVICE) -> str:
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return csr_with(key, name)


def csr_with(key: ec.EllipticCurvePrivateKey, name: str = DEVICE) -> str:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


class Fleet:
    def __init__(self, root: Path, approval: str = "auto") -> None:
        pki = ensure_dev_pki(root / "pki", devices=[])
        self.setup = BrokerSetup.create(root / "broker", pki, 1883, [DEVICE])
        self.device = issue_client_cert(pki.ca, root / "device", DEVICE, dt.timedelta(hours=1))
        self.registry = CollectorRegistry()
        self.certs = FleetCertificates(
            CertStore(root / "certs.db"),
            pki.ca.cert,
            self.setup,
            CertMetrics(self.registry),
            approval="operator" if approval == "operator" else "auto",
            validity=dt.timedelta(days=2),
            warn_within=dt.timedelta(days=1),
        )

    def request(self, csr: str | None, certificate: str | None = None) -> CertReply | None:
        message = CertRequest(
            device_id=DEVICE,
            certificate=certificate or self.device.cert.read_text(),
            csr=csr,
        )
        out = self.certs.on_request(message)
        if not out:
            return None
        assert out[0].topic == topics.cert_issued(DEVICE)
        return CertReply.model_validate_json(out[0].payload)

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(tmp_path)


def test_a_device_in_good_standing_gets_a_certificate_for_its_own_key(fleet: Fleet) -> None:
    reply = fleet.request(csr_for(fleet.device.key))
    assert reply is not None and reply.status == "issued"
    issued = load_certificate(reply.certificate.encode())
    issued.verify_directly_issued_by(load_certificate(fleet.setup.pki.ca.cert.read_bytes()))
    old = load_certificate(fleet.device.cert.read_bytes())
    assert issued.public_key() == old.public_key()
    lifetime = issued.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=1.9) < lifetime <= dt.timedelta(days=2)
    assert fleet.metric("edgeserve_sync_cert_requests_total", outcome="issued") == 1


def test_a_report_without_a_request_records_the_expiry_and_answers_nothing(fleet: Fleet) -> None:
    assert fleet.request(None) is None
    (status,) = fleet.certs.statuses()
    expected = cert_facts(load_certificate(fleet.device.cert.read_bytes()))
    assert (status.serial, status.not_after) == (
        expected.serial_hex,
        expected.not_after.timestamp(),
    )
    assert 3000 < fleet.metric("edgeserve_sync_device_cert_expiry_seconds") <= 3600
    assert fleet.metric("edgeserve_sync_device_certs_expiring") == 1  # within the day


def test_a_request_for_a_new_key_is_refused(fleet: Fleet) -> None:
    reply = fleet.request(csr_with(ec.generate_private_key(ec.SECP256R1())))
    assert reply is not None and reply.status == "refused"
    assert "key" in reply.reason
    assert fleet.metric("edgeserve_sync_cert_requests_total", outcome="refused") == 1


def test_a_certificate_from_another_ca_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    stranger = ensure_dev_pki(tmp_path / "other", devices=[DEVICE]).device(DEVICE)
    reply = fleet.request(csr_for(stranger.key), certificate=stranger.cert.read_text())
    assert reply is not None and reply.status == "refused"
    assert "fleet CA" in reply.reason


def test_a_lost_reply_is_answered_with_the_same_certificate(fleet: Fleet) -> None:
    first = fleet.request(csr_for(fleet.device.key))
    again = fleet.request(csr_for(fleet.device.key))
    assert first is not None and again is not None
    assert again.certificate == first.certificate
    assert fleet.metric("edgeserve_sync_cert_requests_total", outcome="reissued") == 1


def test_operator_approval_keeps_the_request_until_approved(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, approval="operator")
    reply = fleet.request(csr_for(fleet.device.key))
    assert reply is not None and reply.status == "pending"
    assert fleet.certs.status(DEVICE).pending_since is not None
    status, out = fleet.certs.approve(DEVICE)
    issued = CertReply.model_validate_json(out[0].payload)
    assert issued.status == "issued" and status.pending_since is None
    with pytest.raises(ModelNotFound):
        fleet.certs.approve(DEVICE)


def test_revoking_lists_every_known_serial_and_removes_the_password(fleet: Fleet) -> None:
    reply = fleet.request(csr_for(fleet.device.key))
    assert reply is not None
    renewed = load_certificate(reply.certificate.encode()).serial_number
    reported = load_certificate(fleet.device.cert.read_bytes()).serial_number
    fleet.certs.revoke(DEVICE, "stolen")
    revoked = {serial for serial, _ in crl_entries(fleet.setup.crl_file)}
    assert {renewed, reported} <= revoked
    assert DEVICE not in passwords.read_password_file(fleet.setup.password_file)
    assert fleet.certs.status(DEVICE).revoked_at is not None
    after = fleet.request(csr_for(fleet.device.key))
    assert after is not None and after.status == "refused" and "revoked" in after.reason
