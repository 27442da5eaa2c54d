"""The agent's side of renewal (sans-IO: what it publishes, what it writes) and the CRL
that the broker and the gateway read."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from edge_agent.metrics import SyncMetrics
from edge_agent.sync.renewal import CertRenewal
from edgeserve.security.pki import (
    CertPaths,
    ensure_dev_pki,
    issue_client_cert,
    load_device_csr,
    sign_device_csr,
)
from edgeserve.security.revocation import (
    RevocationList,
    cert_facts,
    load_certificate,
    write_crl,
)
from edgeserve.wire import topics
from edgeserve.wire.sync_messages import CertReply, CertRequest

DEVICE = "pump-1"
Sent = list[tuple[str, bytes, bool]]


class Device:
    def __init__(self, root: Path, validity: dt.timedelta = dt.timedelta(hours=3)) -> None:
        self.pki = ensure_dev_pki(root / "pki", devices=[])
        self.pair = issue_client_cert(self.pki.ca, root / "device", DEVICE, validity)
        self.renewed = 0
        self.sent: Sent = []
        self.registry = CollectorRegistry()
        self.renewal = CertRenewal(
            DEVICE,
            self.pair.cert,
            self.pair.key,
            self.pki.ca.cert,
            SyncMetrics(self.registry),
            on_renewed=self._count,
        )

    def _count(self) -> None:
        self.renewed += 1

    def publish(self, topic: str, payload: bytes, retain: bool) -> None:
        self.sent.append((topic, payload, retain))

    def requests(self) -> list[CertRequest]:
        return [CertRequest.model_validate_json(p) for t, p, _ in self.sent]

    def reply(self, certificate: bytes) -> bool:
        reply = CertReply(device_id=DEVICE, status="issued", certificate=certificate.decode())
        return self.renewal.on_reply(reply.to_bytes(), self.publish)

    def signed(self, ca: CertPaths | None = None, name: str = DEVICE) -> bytes:
        csr = self.renewal._csr().encode()
        return sign_device_csr(ca or self.pki.ca, csr, name, dt.timedelta(days=1))


def test_renewal_is_due_at_two_thirds_of_the_lifetime(tmp_path: Path) -> None:
    device = Device(tmp_path)
    facts = cert_facts(load_certificate(device.pair.cert.read_bytes()))
    start, end = facts.not_before.timestamp(), facts.not_after.timestamp()
    assert not device.renewal.due(now=start + 0.66 * (end - start))
    assert device.renewal.due(now=start + 0.67 * (end - start))


def test_a_connect_reports_the_certificate_and_asks_only_when_due(tmp_path: Path) -> None:
    device = Device(tmp_path)
    device.renewal.on_connect(device.publish)
    (report,) = device.requests()
    assert device.sent[0][0] == topics.cert_request(DEVICE)
    assert report.certificate == device.pair.cert.read_text() and report.csr is None

    device.renewal.renew_at = 0.0  # now due
    device.renewal.on_connect(device.publish)
    request = device.requests()[-1]
    assert request.csr is not None
    csr = load_device_csr(request.csr.encode())
    assert csr.public_key() == load_certificate(device.pair.cert.read_bytes()).public_key()


def test_a_due_renewal_is_asked_again_only_after_the_retry_interval(tmp_path: Path) -> None:
    device = Device(tmp_path)
    device.renewal.renew_at = 0.0
    now = [time.time()]
    device.renewal.clock = lambda: now[0]
    device.renewal.tick(device.publish)
    device.renewal.tick(device.publish)
    assert len(device.sent) == 1
    now[0] += device.renewal.retry_s
    device.renewal.tick(device.publish)
    assert len(device.sent) == 2


def test_a_valid_renewed_certificate_is_written_and_reported(tmp_path: Path) -> None:
    device = Device(tmp_path)
    certificate = device.signed()
    assert device.reply(certificate)
    assert device.pair.cert.read_bytes() == certificate
    assert device.renewed == 1
    assert device.requests()[-1].certificate == certificate.decode()


@pytest.mark.parametrize("wrong", ["other ca", "other device", "older"])
def test_a_certificate_the_device_must_not_use_is_refused(tmp_path: Path, wrong: str) -> None:
    device = Device(tmp_path)
    before = device.pair.cert.read_bytes()
    if wrong == "other ca":
        certificate = device.signed(ensure_dev_pki(tmp_path / "other", devices=[]).ca)
    elif wrong == "other device":
        certificate = issue_client_cert(device.pki.ca, tmp_path / "x", "pump-2").cert.read_bytes()
    else:
        csr = device.renewal._csr().encode()
        certificate = sign_device_csr(device.pki.ca, csr, DEVICE, dt.timedelta(minutes=1))
    assert not device.reply(certificate)
    assert device.pair.cert.read_bytes() == before and device.renewed == 0
    rejected = device.registry.get_sample_value(
        "edgeserve_agent_sync_rejected_total", {"reason": "certificate"}
    )
    assert rejected == 1


def test_a_certificate_for_another_key_is_refused(tmp_path: Path) -> None:
    device = Device(tmp_path)
    other_key = issue_client_cert(device.pki.ca, tmp_path / "y", DEVICE).cert.read_bytes()
    assert not device.reply(other_key)
    assert device.renewed == 0


def test_the_revocation_list_is_reread_when_the_file_changes(tmp_path: Path) -> None:
    pki = ensure_dev_pki(tmp_path / "pki", devices=["a", "b"])
    crl = tmp_path / "crl.pem"
    write_crl(pki.ca, [], crl)
    revocations = RevocationList(crl, pki.ca.cert.read_bytes())
    pem_a = pki.device("a").cert.read_bytes()
    assert not revocations.is_revoked_pem(pem_a)
    serial_a = load_certificate(pem_a).serial_number
    write_crl(pki.ca, [(serial_a, dt.datetime.now(dt.UTC))], crl)
    assert revocations.is_revoked_pem(pem_a)
    assert not revocations.is_revoked_pem(pki.device("b").cert.read_bytes())


def test_a_revocation_list_not_signed_by_the_ca_keeps_the_last_good_one(tmp_path: Path) -> None:
    pki = ensure_dev_pki(tmp_path / "pki", devices=["a"])
    serial = load_certificate(pki.device("a").cert.read_bytes()).serial_number
    crl = tmp_path / "crl.pem"
    write_crl(pki.ca, [(serial, dt.datetime.now(dt.UTC))], crl)
    revocations = RevocationList(crl, pki.ca.cert.read_bytes())
    forger = ensure_dev_pki(tmp_path / "forger", devices=[])
    write_crl(forger.ca, [], crl)
    assert revocations.is_revoked(serial)
    assert revocations.load_failures == 1


def test_a_certificate_lives_as_long_as_asked(tmp_path: Path) -> None:
    pki = ensure_dev_pki(tmp_path / "pki", devices=[])
    pair = issue_client_cert(pki.ca, tmp_path, DEVICE, dt.timedelta(seconds=5))
    facts = cert_facts(load_certificate(pair.cert.read_bytes()))
    assert facts.not_after - dt.datetime.now(dt.UTC) <= dt.timedelta(seconds=5)
    with pytest.raises(ValueError, match="live"):
        issue_client_cert(pki.ca, tmp_path, DEVICE, dt.timedelta(0))
