"""A development CA and the certificates mutual TLS needs: one server, one per device.

Keys are ECDSA P-256 and signatures SHA-256, which every TLS stack we meet accepts
(grpcio's BoringSSL, OpenSSL behind ``ssl`` and uvicorn, Mosquitto). A device's identity
is its client certificate's common name. Everything is generated at setup into a state
folder — private keys with mode 0600 — and never committed; ``ensure_dev_pki`` creates
only what is missing, expiring or no longer signed by the CA on disk.

Enrollment keeps a device's private key on the device: it sends a certificate signing
request whose CN is its id, and ``sign_device_csr`` checks the request's
self-signature and CN before the CA signs it. Errors::

    InvalidInput
    └── EnrollmentError          a request, certificate or bundle that must not be used
        ├── CsrInvalid           not a P-256 CSR, or its self-signature does not verify
        └── IdentityMismatch     it names another device than the one expected
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgeserve.durable import write_atomic
from edgeserve.wire.errors import InvalidInput

CA_VALIDITY = dt.timedelta(days=5 * 365)
LEAF_VALIDITY = dt.timedelta(days=365)
# Reissue a leaf that would expire within this margin rather than let a demo fail later.
RENEW_BEFORE = dt.timedelta(days=7)
_CLOCK_SKEW = dt.timedelta(minutes=5)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


class EnrollmentError(InvalidInput):
    """A request, certificate or bundle that must not be used (see the module docstring)."""


class CsrInvalid(EnrollmentError):
    """Not a certificate signing request we sign, or its self-signature does not verify."""


class IdentityMismatch(EnrollmentError):
    """The request, certificate or bundle names another device than the one expected."""


class CertPaths(NamedTuple):
    """A PEM certificate and its PEM (PKCS#8, unencrypted) private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class DevPki:
    """Where ``ensure_dev_pki`` put everything; ``devices`` maps device id to its pair."""

    ca: CertPaths
    server: CertPaths
    devices: Mapping[str, CertPaths]

    def device(self, device_id: str) -> CertPaths:
        return self.devices[device_id]


def create_dev_ca(directory: Path, common_name: str = "edgeserve dev CA") -> CertPaths:
    """A self-signed CA (``ca.pem``, ``ca.key``) valid five years; may sign leaves only."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    paths = CertPaths(directory / "ca.pem", directory / "ca.key")
    _write_pair(paths, builder.sign(key, hashes.SHA256()), key)
    return paths


def issue_server_cert(
    ca: CertPaths,
    directory: Path,
    name: str = "server",
    hostnames: Sequence[str] = ("localhost",),
    ips: Sequence[str] = ("127.0.0.1", "::1"),
) -> CertPaths:
    """``<name>.pem``/``<name>.key`` for a TLS server reachable at ``hostnames`` and ``ips``."""
    sans = _server_sans(hostnames, ips)
    if not sans:
        raise ValueError("a server certificate needs at least one hostname or IP address")
    subject = hostnames[0] if hostnames else ips[0]
    return _issue(ca, directory, name, subject, ExtendedKeyUsageOID.SERVER_AUTH, sans)


def issue_client_cert(
    ca: CertPaths, directory: Path, common_name: str, validity: dt.timedelta = LEAF_VALIDITY
) -> CertPaths:
    """``<common_name>.pem``/``.key`` for a device; its CN is the device id the gateway sees."""
    return _issue(
        ca, directory, common_name, common_name, ExtendedKeyUsageOID.CLIENT_AUTH, [], validity
    )


def sign_device_csr(
    ca: CertPaths, csr_pem: bytes, device_id: str, validity: dt.timedelta = LEAF_VALIDITY
) -> bytes:
    """A client certificate (PEM) for the key in ``csr_pem``, signed by ``ca``, once the
    request proves it holds that key and its CN is ``device_id``; it lives ``validity``."""
    _check_name(device_id)
    csr = load_device_csr(csr_pem)
    requested = csr_common_name(csr)
    if requested != device_id:
        raise IdentityMismatch(
            f"the request is for device {requested!r}, not {device_id!r}: refusing to sign"
        )
    public_key = csr.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)  # load_device_csr checked it
    ca_cert, ca_key = _load_cert(ca.cert), _load_key(ca.key)
    builder = _leaf_builder(
        ca_cert, device_id, public_key, ExtendedKeyUsageOID.CLIENT_AUTH, validity
    )
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def load_device_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    """Parse a device's request; ``CsrInvalid`` unless it is a P-256 key that signed it."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise CsrInvalid(f"not a PEM certificate signing request: {exc}") from exc
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise CsrInvalid("the request's key is not an EC P-256 key")
    if not csr.is_signature_valid:
        raise CsrInvalid("the request's self-signature does not verify (altered in transit?)")
    return csr


def csr_common_name(csr: x509.CertificateSigningRequest) -> str:
    """The one CN of a request's subject (``CsrInvalid`` for none or several)."""
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or len(csr.subject) != 1:
        raise CsrInvalid(
            f"the request's subject must be one CN, not {csr.subject.rfc4514_string()!r}"
        )
    return str(names[0].value)


def ensure_dev_pki(
    directory: Path,
    devices: Sequence[str],
    hostnames: Sequence[str] = ("localhost",),
    ips: Sequence[str] = ("127.0.0.1", "::1"),
) -> DevPki:
    """The CA, a server pair and one pair per device under ``directory``, made if missing."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = CertPaths(directory / "ca.pem", directory / "ca.key")
    if not _usable(ca, issuer=None, margin=RENEW_BEFORE):
        create_dev_ca(directory)
    ca_cert = _load_cert(ca.cert)
    server = CertPaths(directory / "server.pem", directory / "server.key")
    wanted = set(_server_sans(hostnames, ips))
    if not _usable(server, ca_cert, RENEW_BEFORE) or _sans_of(server.cert) != wanted:
        issue_server_cert(ca, directory, "server", hostnames, ips)
    pairs = {}
    for device_id in devices:
        _check_name(device_id)
        pair = CertPaths(
            directory / "devices" / f"{device_id}.pem", directory / "devices" / f"{device_id}.key"
        )
        if not _usable(pair, ca_cert, RENEW_BEFORE):
            issue_client_cert(ca, directory / "devices", device_id)
        pairs[device_id] = pair
    return DevPki(ca, server, pairs)


def server_ssl_context(pki: DevPki) -> ssl.SSLContext:
    """A server context that requires a client certificate signed by the dev CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki.ca.cert)
    context.load_cert_chain(pki.server.cert, pki.server.key)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_ssl_context(pki: DevPki, device_id: str | None = None) -> ssl.SSLContext:
    """A client context trusting the dev CA, presenting ``device_id``'s certificate if given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki.ca.cert)
    if device_id is not None:
        pair = pki.device(device_id)
        context.load_cert_chain(pair.cert, pair.key)
    return context


def peer_common_name(peer_cert: Mapping[str, object] | None) -> str | None:
    """The subject CN of ``SSLSocket.getpeercert()``'s dict, or None without a cert."""
    subject = (peer_cert or {}).get("subject", ())
    for rdn in subject if isinstance(subject, tuple) else ():
        for attribute, value in rdn:
            if attribute == "commonName":
                return str(value)
    return None


def _issue(
    ca: CertPaths,
    directory: Path,
    file_stem: str,
    common_name: str,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName],
    validity: dt.timedelta = LEAF_VALIDITY,
) -> CertPaths:
    _check_name(file_stem)
    ca_cert, ca_key = _load_cert(ca.cert), _load_key(ca.key)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _leaf_builder(ca_cert, common_name, key.public_key(), usage, validity)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    paths = CertPaths(directory / f"{file_stem}.pem", directory / f"{file_stem}.key")
    _write_pair(paths, builder.sign(ca_key, hashes.SHA256()), key)
    return paths


def _leaf_builder(
    ca_cert: x509.Certificate,
    common_name: str,
    public_key: ec.EllipticCurvePublicKey,
    usage: x509.ObjectIdentifier,
    validity: dt.timedelta = LEAF_VALIDITY,
) -> x509.CertificateBuilder:
    if validity <= dt.timedelta(0):
        raise ValueError(f"a certificate must live some time, not {validity}")
    now = _now()
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - min(_CLOCK_SKEW, validity))
        .not_valid_after(min(now + validity, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )


def _check_name(name: str) -> None:
    if not _SAFE_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a safe certificate name ({_SAFE_NAME.pattern})")


def _server_sans(hostnames: Sequence[str], ips: Sequence[str]) -> list[x509.GeneralName]:
    sans: list[x509.GeneralName] = [x509.DNSName(host) for host in hostnames]
    return sans + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]


def _sans_of(path: Path) -> set[x509.GeneralName]:
    try:
        extensions = _load_cert(path).extensions
        return set(extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return set()


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _usable(pair: CertPaths, issuer: x509.Certificate | None, margin: dt.timedelta) -> bool:
    """Both files load, the key matches, it is not about to expire, ``issuer`` signed it."""
    try:
        cert, key = _load_cert(pair.cert), _load_key(pair.key)
        if issuer is not None:
            cert.verify_directly_issued_by(issuer)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return False
    same_key = cert.public_key() == key.public_key()
    return same_key and cert.not_valid_after_utc - margin > _now()


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM: the file's 0600 mode protects it, as for ssh host keys."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_pair(paths: CertPaths, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    paths.key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(paths.key, private_key_pem(key), 0o600)
    write_atomic(paths.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{path} does not hold an EC private key")
    return key


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
