"""Certificate facts and the fleet CA's revocation list (CRL), shared by broker and gateway.

One CRL file, signed by the fleet CA, is the single statement of which device
certificates are dead: Mosquitto reads it (``crlfile``, re-read on SIGHUP — checked
against Mosquitto 2.0.11) and the cloud gateway reads it on every mTLS call through
``RevocationList``, which re-reads the file when it changes, so neither needs a restart.

OpenSSL refuses *every* client once a CRL's ``nextUpdate`` has passed, and nobody
fetches this CRL from a URL (it is pushed to the broker and gateway hosts), so it is
written to stay valid as long as the CA that signed it; every revocation rewrites it.
Errors::

    InvalidInput
    └── RevocationListInvalid   the file is not a CRL that the fleet CA signed
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgeserve.durable import write_atomic
from edgeserve.security.pki import CertPaths, EnrollmentError
from edgeserve.wire.errors import InvalidInput

_BACKDATE = dt.timedelta(minutes=5)
_MAX_CACHED = 4096


class RevocationListInvalid(InvalidInput):
    """The file is not a CRL signed by the fleet CA."""


@dataclass(frozen=True, slots=True)
class CertFacts:
    """What the fleet tracks of a device certificate."""

    common_name: str
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime

    def seconds_left(self, now: dt.datetime | None = None) -> float:
        return (self.not_after - (now or _now())).total_seconds()

    @property
    def serial_hex(self) -> str:
        return format(self.serial, "x")


def cert_facts(certificate: x509.Certificate) -> CertFacts:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return CertFacts(
        common_name=str(names[0].value) if names else "",
        serial=certificate.serial_number,
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
    )


def load_certificate(pem: bytes) -> x509.Certificate:
    """A PEM certificate, or ``EnrollmentError`` with the reason."""
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise EnrollmentError(f"not a PEM certificate: {exc}") from exc


def write_crl(ca: CertPaths, revoked: Iterable[tuple[int, dt.datetime]], path: Path) -> None:
    """Write (atomically) a CRL signed by ``ca`` listing ``(serial, revoked at)`` pairs."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{ca.key} does not hold an EC private key")
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - _BACKDATE)
        .next_update(max(ca_cert.not_valid_after_utc, now + dt.timedelta(days=1)))
    )
    for serial, when in sorted(set(revoked)):
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when)
        builder = builder.add_revoked_certificate(entry.build())
    crl = builder.sign(ca_key, hashes.SHA256())
    write_atomic(path, crl.public_bytes(serialization.Encoding.PEM), 0o644)


def crl_entries(path: Path) -> list[tuple[int, dt.datetime]]:
    """``(serial, revoked at)`` of each entry of the CRL at ``path`` (none if missing)."""
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except FileNotFoundError:
        return []
    except ValueError as exc:
        raise RevocationListInvalid(f"{path} is not a PEM CRL: {exc}") from exc
    return [(entry.serial_number, entry.revocation_date_utc) for entry in crl]


def revoked_serials(crl_pem: bytes, ca_cert: x509.Certificate) -> frozenset[int]:
    """The serials a CRL lists, once its signature verifies with ``ca_cert``."""
    try:
        crl = x509.load_pem_x509_crl(crl_pem)
    except ValueError as exc:
        raise RevocationListInvalid(f"not a PEM CRL: {exc}") from exc
    public_key = ca_cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(
        public_key
    ):
        raise RevocationListInvalid("the CRL is not signed by the fleet CA")
    return frozenset(entry.serial_number for entry in crl)


class RevocationList:
    """The serials revoked in a CRL file, re-read whenever the file changes.

    ``is_revoked`` costs a ``stat`` per call; a file that is missing or does not verify
    keeps the last good list (a half-copied CRL must not let a revoked device back in)
    and is counted in ``load_failures``.
    """

    def __init__(self, path: Path, ca_pem: bytes) -> None:
        self.path = path
        self._ca = x509.load_pem_x509_certificate(ca_pem)
        self._serial_of: dict[bytes, int] = {}
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._serials: frozenset[int] = frozenset()
        self.load_failures = 0
        self.refresh()

    def is_revoked(self, serial: int) -> bool:
        self.refresh()
        return serial in self._serials

    def is_revoked_pem(self, pem: bytes) -> bool:
        """``is_revoked`` for a peer certificate as TLS stacks hand it over (PEM)."""
        serial = self._serial_of.get(pem)
        if serial is None:
            serial = load_certificate(pem).serial_number
            if len(self._serial_of) >= _MAX_CACHED:  # a fleet, not an attacker, fills it
                self._serial_of.clear()
            self._serial_of[pem] = serial
        return self.is_revoked(serial)

    def refresh(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp == self._stamp:
                return
            try:
                self._serials = revoked_serials(self.path.read_bytes(), self._ca)
            except (OSError, RevocationListInvalid):
                self.load_failures += 1
                return
            self._stamp = stamp


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
