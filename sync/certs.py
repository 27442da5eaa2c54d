"""Device certificates over their lifetime: renewal, operator approval, revocation, expiry.

A device renews before its certificate expires by sending a CSR for the key it already
holds over its authenticated MQTT session (``cert/request``); the answer comes back on
``cert/issued``. The sync service signs, with the fleet CA of the broker setup folder
(``fleet enroll`` uses the same CA): it is the one online service that already knows each
device's standing, and it already holds the operator's update-signing key, which can make
any device run any model — the CA key adds no new kind of secret to that host.

Policy, in order (``CertRefused`` reasons are metric labels):

- a revoked device is refused (``revoked``), and so is one whose reported certificate is
  not the fleet CA's, names another device, or is on the CRL (``bad_certificate``);
- the request must be for the *same key* as the certificate the device connects with
  (``new_key``): a new key means enrolling again, so a stolen broker password alone
  never buys a certificate for a thief's key;
- ``approval = "auto"`` signs at once for a device in good standing; ``"operator"``
  keeps the request pending until ``approve`` (``edgeserve fleet certs approve``).

A request for a key that already has a newer certificate issued here gets that one
again (the device lost the reply, e.g. across a broker restart). ``revoke`` puts every
certificate the fleet knows of the device on the CRL and removes its broker password
(``BrokerSetup.revoke``); the gateway reads the same CRL.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes as PublicKey
from prometheus_client import CollectorRegistry, Counter, Gauge

from edgeserve.broker.enrollment import BrokerSetup
from edgeserve.security.pki import load_device_csr
from edgeserve.security.revocation import CertFacts, cert_facts, load_certificate
from edgeserve.wire import topics
from edgeserve.wire.errors import EdgeServeError, InvalidInput, ModelNotFound, Unavailable
from edgeserve.wire.sync_messages import CertReply, CertRequest
from sync.cert_store import CertStatus, CertStore
from sync.config import SyncConfig
from sync.updates import Outgoing

log = logging.getLogger(__name__)
Approval = Literal["auto", "operator"]


class CertRefused(InvalidInput):
    """A certificate request refused; ``reason`` is its metrics label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class CertMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "edgeserve_sync_cert_requests",
            "Device certificate requests, by outcome (issued, reissued, pending, refused)",
            ["outcome"],
            registry=registry,
        )
        self.expiry = Gauge(
            "edgeserve_sync_device_cert_expiry_seconds",
            "Seconds until the soonest device certificate expires (revoked devices aside)",
            registry=registry,
        )
        self.expiring = Gauge(
            "edgeserve_sync_device_certs_expiring",
            "Devices whose certificate expires within the configured warning period",
            registry=registry,
        )
        self.revoked = Counter(
            "edgeserve_sync_devices_revoked", "Devices revoked", registry=registry
        )


class FleetCertificates:
    """The policy above over a ``CertStore``; signs and revokes through ``setup``."""

    def __init__(
        self,
        store: CertStore,
        ca_cert: Path,
        setup: BrokerSetup | None,
        metrics: CertMetrics,
        *,
        approval: Approval = "auto",
        validity: dt.timedelta = dt.timedelta(days=365),
        warn_within: dt.timedelta = dt.timedelta(days=30),
    ) -> None:
        self.store = store
        self._ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
        self.setup = setup
        self.metrics = metrics
        self.approval = approval
        self.validity = validity
        self.warn_within = warn_within

    # -- device messages ------------------------------------------------------------------

    def on_request(self, request: CertRequest) -> list[Outgoing]:
        """Record the device's certificate; answer its CSR, if it sent one."""
        device = request.device_id
        try:
            current, key = self._check_current(device, request.certificate)
            self.store.set_current(device, current)
            self.refresh_metrics()
            if request.csr is None:
                return []
            reply = self._answer(device, request.csr, current, key)
        except CertRefused as exc:
            self.metrics.requests.labels("refused").inc()
            log.warning(
                "certificate request refused",
                extra={"device": device, "reason": exc.reason, "detail": exc.message},
            )
            reply = CertReply(device_id=device, status="refused", reason=exc.message)
        return [Outgoing(topics.cert_issued(device), reply.to_bytes())]

    def _check_current(self, device: str, pem: str) -> tuple[CertFacts, PublicKey]:
        if self.store.is_revoked(device):
            raise CertRefused("revoked", f"device {device} is revoked; enroll it again")
        try:
            certificate = load_certificate(pem.encode())
            certificate.verify_directly_issued_by(self._ca)
        except (EdgeServeError, ValueError, TypeError, InvalidSignature) as exc:
            raise CertRefused("bad_certificate", "certificate not issued by the fleet CA") from exc
        facts = cert_facts(certificate)
        if facts.common_name != device:
            raise CertRefused("bad_certificate", f"certificate names {facts.common_name!r}")
        if self.setup is not None and facts.serial in self.setup.revoked_serials():
            raise CertRefused("revoked", f"certificate {facts.serial_hex} is revoked")
        return facts, certificate.public_key()

    def _answer(self, device: str, csr_pem: str, current: CertFacts, key: PublicKey) -> CertReply:
        csr = _load_csr(csr_pem)
        if csr.public_key() != key:
            raise CertRefused("new_key", "renewal keeps the device's key; a new key re-enrolls")
        again = self.store.latest_issued(device)
        if (
            again is not None
            and again[1] > current.not_after.timestamp()
            and load_certificate(again[0].encode()).public_key() == key
        ):
            self.metrics.requests.labels("reissued").inc()
            return CertReply(device_id=device, status="issued", certificate=again[0])
        if self.approval == "operator":
            self.store.set_pending(device, csr_pem)
            self.metrics.requests.labels("pending").inc()
            return CertReply(device_id=device, status="pending", reason="waiting for approval")
        return self._sign(device, csr_pem)

    def _sign(self, device: str, csr_pem: str) -> CertReply:
        if self.setup is None:
            raise CertRefused("no_ca", "this sync service holds no fleet CA (certs_broker_dir)")
        try:
            pem = self.setup.renew(device, csr_pem.encode(), self.validity).decode()
        except ModelNotFound as exc:
            raise CertRefused("not_enrolled", exc.message) from exc
        except InvalidInput as exc:
            raise CertRefused("bad_request", exc.message) from exc
        self.store.record(device, cert_facts(load_certificate(pem.encode())), pem, issued=True)
        self.store.clear_pending(device)
        self.metrics.requests.labels("issued").inc()
        log.info("device certificate renewed", extra={"device": device})
        return CertReply(device_id=device, status="issued", certificate=pem)

    # -- operator ---------------------------------------------------------------------------

    def approve(self, device: str) -> tuple[CertStatus, list[Outgoing]]:
        """Sign ``device``'s pending request; the reply to publish to it."""
        csr = self.store.pending(device)
        if csr is None:
            raise ModelNotFound(f"device {device} has no pending certificate request")
        if self.store.is_revoked(device):
            raise InvalidInput(f"device {device} is revoked")
        try:
            reply = self._sign(device, csr)
        except CertRefused as exc:
            self.metrics.requests.labels("refused").inc()
            raise InvalidInput(exc.message) from exc
        message = Outgoing(topics.cert_issued(device), reply.to_bytes())
        return self.status(device), [message]

    def revoke(self, device: str, reason: str) -> CertStatus:
        """Revoke every certificate of ``device`` the fleet knows and cut its broker login."""
        if self.setup is None:
            raise Unavailable("this sync service holds no broker setup (certs_broker_dir)")
        serials = set(self.store.serials(device)) | set(self.setup.certificate_serials(device))
        if not serials and device not in self.setup.users():
            raise ModelNotFound(f"device {device} has no certificate and no broker login")
        self.setup.revoke(device, serials)
        self.store.mark_revoked(device, reason)
        self.metrics.revoked.inc()
        self.refresh_metrics()
        log.warning("device revoked", extra={"device": device, "serials": len(serials)})
        return self.status(device)

    def status(self, device: str) -> CertStatus:
        rows = self.store.statuses([device])
        return rows[0] if rows else CertStatus(device, "", 0.0, None, None)

    def statuses(self, devices: Iterable[str] | None = None) -> list[CertStatus]:
        return self.store.statuses(devices)

    def refresh_metrics(self, now: float | None = None) -> None:
        expiries = self.store.expiries()
        clock = time.time() if now is None else now
        left = [expiry - clock for expiry in expiries]
        self.metrics.expiry.set(min(left) if left else float("nan"))
        warn = self.warn_within.total_seconds()
        self.metrics.expiring.set(sum(seconds <= warn for seconds in left))

    def close(self) -> None:
        self.store.close()


def fleet_certificates(config: SyncConfig, registry: CollectorRegistry) -> FleetCertificates | None:
    """The service's certificate authority, or None when it knows no fleet CA at all."""
    setup = BrokerSetup.load(config.certs_broker_dir) if config.certs_broker_dir else None
    ca_cert = setup.pki.ca.cert if setup is not None else config.broker_ca
    if ca_cert is None:
        return None
    return FleetCertificates(
        CertStore(config.state_dir / "certs.db"),
        ca_cert,
        setup,
        CertMetrics(registry),
        approval=config.cert_approval,
        validity=dt.timedelta(seconds=config.cert_validity_s),
        warn_within=dt.timedelta(seconds=config.cert_warn_s),
    )


def check_device(device_id: str) -> str:
    """A device id from an operator, checked like a topic level (``InvalidInput``)."""
    try:
        return topics.check_device_id(device_id)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc


def _load_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    try:
        return load_device_csr(csr_pem.encode())
    except InvalidInput as exc:
        raise CertRefused("bad_request", exc.message) from exc
