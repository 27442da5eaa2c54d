"""The device renews its own certificate before it expires, over its MQTT session.

Once two thirds of the certificate's lifetime have passed (cert-manager's default), the
agent sends a certificate signing request on ``cert/request`` and keeps asking every
``retry_s`` until a certificate comes back on ``cert/issued``; every connect also reports
the certificate in use (so the fleet can show its expiry) and, when due, asks again — a
request or reply lost to a broker restart costs one reconnect.

The request is for the key the device already holds. Renewal re-uses it on purpose: the
only file that changes is the certificate, replaced atomically, so a power cut at any
instant leaves a matching key and certificate (a new key would mean two files that must
change together). A key suspected stolen is not renewed but revoked, and the device
enrolls again with a new key.

A certificate that comes back is checked before it is written — issued by the CA the
device trusts, for this device id, for this device's key, currently valid and newer than
the one in use — and the MQTT link presents it from the next connect on. Anything else
is refused, logged and counted like any other bad sync message.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_agent.metrics import SyncMetrics
from edgeserve.durable import write_atomic
from edgeserve.mqtt import BrokerAddress
from edgeserve.security.pki import EnrollmentError
from edgeserve.security.revocation import CertFacts, cert_facts, load_certificate
from edgeserve.wire import topics
from edgeserve.wire.errors import EdgeServeError
from edgeserve.wire.sync_messages import CertReply, CertRequest, decode

log = logging.getLogger(__name__)

RENEW_AT = 2 / 3
RETRY_S = 30.0
Publish = Callable[[str, bytes, bool], None]  # topic, payload, retain


class CertificateRefused(EnrollmentError):
    """A certificate sent to this device that it must not use."""


@dataclass
class CertRenewal:
    """Renewal state of one device's certificate (``cert``, ``key`` signed by ``ca``)."""

    device_id: str
    cert: Path
    key: Path
    ca: Path
    metrics: SyncMetrics
    on_renewed: Callable[[], None] = lambda: None
    renew_at: float = RENEW_AT
    retry_s: float = RETRY_S
    clock: Callable[[], float] = time.time
    _last_request: float = field(default=float("-inf"), init=False)

    def current(self) -> CertFacts:
        return cert_facts(load_certificate(self.cert.read_bytes()))

    def due(self, now: float | None = None) -> bool:
        """Whether ``renew_at`` of the current certificate's lifetime has passed."""
        facts = self.current()
        start, end = facts.not_before.timestamp(), facts.not_after.timestamp()
        return (self.clock() if now is None else now) >= start + self.renew_at * (end - start)

    def on_connect(self, publish: Publish) -> None:
        """Report the certificate in use, with a request if one is due."""
        self._last_request = float("-inf")
        self._send(publish, with_csr=self.due())

    def tick(self, publish: Publish) -> None:
        """Ask (again) while renewal is due and ``retry_s`` has passed since the last ask."""
        now = self.clock()
        if self.due(now) and now - self._last_request >= self.retry_s:
            self._send(publish, with_csr=True)

    def on_reply(self, payload: bytes, publish: Publish) -> bool:
        """Take the fleet's answer; True if a new certificate is now in use."""
        try:
            reply = decode(CertReply, payload)
            if reply.device_id != self.device_id:
                raise CertificateRefused(f"a reply for device {reply.device_id!r}")
            if reply.status != "issued":
                log.warning(
                    "certificate renewal not granted",
                    extra={"status": reply.status, "reason": reply.reason[:300]},
                )
                return False
            self._install(reply.certificate.encode())
        except EdgeServeError as exc:
            self.metrics.rejected.labels("certificate").inc()
            log.warning("renewed certificate refused", extra={"detail": exc.message[:300]})
            return False
        self.on_renewed()
        self._send(publish, with_csr=False)  # the fleet learns the new expiry
        return True

    def _install(self, pem: bytes) -> None:
        certificate = load_certificate(pem)
        self._check(certificate)
        write_atomic(self.cert, pem, 0o644)
        facts = cert_facts(certificate)
        log.info(
            "certificate renewed",
            extra={"serial": facts.serial_hex, "not_after": facts.not_after.isoformat()},
        )

    def _check(self, certificate: x509.Certificate) -> None:
        ca = x509.load_pem_x509_certificate(self.ca.read_bytes())
        try:
            certificate.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise CertificateRefused("not signed by the CA this device trusts") from exc
        facts = cert_facts(certificate)
        if facts.common_name != self.device_id:
            raise CertificateRefused(f"the certificate names {facts.common_name!r}")
        if certificate.public_key() != self._key().public_key():
            raise CertificateRefused("the certificate is not for this device's key")
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        if not facts.not_before <= now < facts.not_after:
            raise CertificateRefused("the certificate is not valid now")
        if facts.not_after <= self.current().not_after:
            raise CertificateRefused("the certificate is not newer than the one in use")

    def _send(self, publish: Publish, with_csr: bool) -> None:
        csr = self._csr() if with_csr else None
        request = CertRequest(
            device_id=self.device_id,
            certificate=self.cert.read_text(),
            csr=csr,
            ts=self.clock(),
        )
        publish(topics.cert_request(self.device_id), request.to_bytes(), False)
        if with_csr:
            self._last_request = self.clock()
            log.info("certificate renewal requested")

    def _csr(self) -> str:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.device_id)])
        builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
        csr = builder.sign(self._key(), hashes.SHA256())
        return csr.public_bytes(serialization.Encoding.PEM).decode()

    def _key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertificateRefused(f"{self.key} does not hold an EC key")
        return key


def renewal_for(
    address: BrokerAddress, device_id: str, metrics: SyncMetrics, on_renewed: Callable[[], None]
) -> CertRenewal | None:
    """Renewal for a device that connects with its own certificate; None for one without."""
    if address.cert is None or address.key is None or address.ca is None:
        return None
    return CertRenewal(device_id, address.cert, address.key, address.ca, metrics, on_renewed)
