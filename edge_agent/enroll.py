"""Device enrollment: the device's key never leaves it; two offline steps and a bundle.

1. On the device, ``request_enrollment`` makes an EC P-256 key (``device.key``, 0600)
   and a certificate signing request whose CN is the device id (``device.csr``).
2. The operator signs the request with the broker's CA (``sync.enrollment.issue_bundle``,
   behind ``edgeserve fleet enroll``) and gets an ``EnrollmentBundle``: the certificate, the
   CA, the broker's address and the device's new password, the operator's update-signing
   public key and, optionally, the cloud gateway. The bundle (0600 JSON) carries a
   password, never a private key; it travels to the device by whatever the operator
   trusts.
3. On the device, ``accept_enrollment`` checks that the bundle names this device, that
   its certificate is for this device's key and signed by the bundle's CA, then writes
   the certificate, CA, password (0600), ``operator.pub`` and ``agent.toml``.

Errors are ``EnrollmentError``s (``edgeserve.security.pki``) with a message an operator
can act on: ``CsrInvalid``, ``IdentityMismatch``, ``CertificateMismatch`` and
``EnrollmentFileError`` (a file that is missing, unreadable or not what it should be).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgeserve.durable import write_atomic, write_private
from edgeserve.security.pki import (
    EnrollmentError,
    IdentityMismatch,
    csr_common_name,
    load_device_csr,
    private_key_pem,
)
from edgeserve.wire.enrollment import (
    EnrollmentBundle,
    EnrollmentFileError,
    check_operator_key,
    read_enrollment_file,
)
from edgeserve.wire.errors import InvalidInput
from edgeserve.wire.topics import check_device_id


class CertificateMismatch(EnrollmentError):
    """The certificate is not for this device's key, or the CA did not sign it."""


@dataclass(frozen=True, slots=True)
class DeviceFiles:
    """Where a device keeps its identity and config (``/etc/edgeserve`` in production)."""

    key: Path
    csr: Path
    cert: Path
    ca: Path
    password: Path
    operator_key: Path
    cloud_ca: Path
    config: Path

    @classmethod
    def under(cls, directory: Path) -> DeviceFiles:
        return cls(
            key=directory / "device.key",
            csr=directory / "device.csr",
            cert=directory / "device.pem",
            ca=directory / "ca.pem",
            password=directory / "broker.password",
            operator_key=directory / "operator.pub",
            cloud_ca=directory / "cloud-ca.pem",
            config=directory / "agent.toml",
        )


# -- step 1: the device asks ------------------------------------------------------------


def request_enrollment(directory: Path, device_id: str) -> Path:
    """Make (or keep) the device key and write a CSR for ``device_id``; the CSR's path.

    Re-running keeps the key, so an install can be repeated. A device already enrolled
    under another id refuses: its certificate would no longer match its name.
    """
    _check_device_id(device_id)
    files = DeviceFiles.under(directory.absolute())
    directory.mkdir(parents=True, exist_ok=True, mode=0o750)
    key = _ensure_key(files.key)
    if files.cert.exists():
        enrolled_as = _common_name(_load_cert(files.cert.read_bytes(), files.cert))
        if enrolled_as != device_id:
            raise IdentityMismatch(
                f"this device is enrolled as {enrolled_as!r}; remove {files.cert} and "
                f"{files.key} to enroll it as {device_id!r}"
            )
    write_atomic(files.csr, _csr_pem(key, device_id))
    if not files.config.exists():
        write_agent_config(files.config, {"device_id": device_id})
    return files.csr


def _ensure_key(path: Path) -> ec.EllipticCurvePrivateKey:
    if path.exists():
        return _load_key(path)
    key = ec.generate_private_key(ec.SECP256R1())
    write_private(path, private_key_pem(key))
    return key


def _csr_pem(key: ec.EllipticCurvePrivateKey, device_id: str) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


# -- step 3: the device accepts ---------------------------------------------------------


def accept_enrollment(directory: Path, bundle_path: Path) -> Path:
    """Check ``bundle_path`` against this device and install it; the config's path."""
    files = DeviceFiles.under(directory.absolute())
    bundle = EnrollmentBundle.read(bundle_path)
    key = _load_key(files.key)
    requested = csr_common_name(
        load_device_csr(read_enrollment_file(files.csr, "request").encode())
    )
    if bundle.device_id != requested:
        raise IdentityMismatch(
            f"the bundle is for device {bundle.device_id!r}, but this device asked to "
            f"enroll as {requested!r}"
        )
    certificate = _load_cert(bundle.certificate.encode(), bundle_path)
    ca = _load_cert(bundle.ca.encode(), bundle_path)
    check_certificate(certificate, ca, key, requested)
    check_operator_key(bundle.operator_public_key.encode(), bundle_path)
    _install(files, bundle)
    return files.config


def check_certificate(
    certificate: x509.Certificate,
    ca: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    device_id: str,
) -> None:
    """``certificate`` is ``device_id``'s, for ``key``, and ``ca`` signed it."""
    if certificate.public_key() != key.public_key():
        raise CertificateMismatch(
            "the bundle's certificate is not for this device's key (a bundle made from "
            "another request, or the key was replaced since): run enroll-request again"
        )
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CertificateMismatch(
            f"the bundle's certificate was not signed by the bundle's CA: {exc}"
        ) from exc
    if _common_name(certificate) != device_id:
        raise IdentityMismatch(f"the certificate names {_common_name(certificate)!r}")


def _install(files: DeviceFiles, bundle: EnrollmentBundle) -> None:
    write_atomic(files.cert, bundle.certificate.encode())
    write_atomic(files.ca, bundle.ca.encode())
    write_private(files.password, bundle.mqtt_password.encode() + b"\n")
    write_atomic(files.operator_key, bundle.operator_public_key.encode())
    if bundle.cloud is not None and bundle.cloud.ca is not None:
        write_atomic(files.cloud_ca, bundle.cloud.ca.encode())
    write_agent_config(files.config, enrollment_settings(files, bundle))


def enrollment_settings(files: DeviceFiles, bundle: EnrollmentBundle) -> dict[str, Any]:
    """The agent config keys an enrollment decides (the rest of ``agent.toml`` is kept)."""
    settings: dict[str, Any] = {
        "device_id": bundle.device_id,
        "sync_broker": f"{bundle.broker_host}:{bundle.broker_port}",
        "sync_password_file": str(files.password),
        "sync_ca": str(files.ca),
        "sync_cert": str(files.cert),
        "sync_key": str(files.key),
        "sync_mqtt_version": bundle.mqtt_version,
        "operator_public_key": str(files.operator_key),
    }
    if bundle.cloud is not None:
        settings |= {
            "cloud_target": bundle.cloud.target,
            "cloud_server_name": bundle.cloud.server_name,
            "cloud_ca": str(files.cloud_ca if bundle.cloud.ca else files.ca),
            # The same enrolled pair proves the device's identity to the gateway.
            "cloud_cert": str(files.cert),
            "cloud_key": str(files.key),
        }
    return settings


# -- agent.toml -------------------------------------------------------------------------


def write_agent_config(path: Path, settings: Mapping[str, Any]) -> None:
    """Merge ``settings`` into the TOML config at ``path``, keeping its other keys (not
    its comments). Mode 0640: secrets live in their own files, never here."""
    existing: dict[str, Any] = {}
    if path.exists():
        try:
            existing = tomllib.loads(read_enrollment_file(path, "agent config"))
        except tomllib.TOMLDecodeError as exc:
            raise EnrollmentFileError(f"{path} is not valid TOML: {exc}") from exc
    merged = {key: value for key, value in (existing | dict(settings)).items() if value is not None}
    header = "# edge agent config; enrollment rewrites the sync_*/cloud_* keys, keeps the rest.\n"
    body = "".join(f"{_toml_key(key)} = {_toml_value(value)}\n" for key, value in merged.items())
    write_atomic(path, (header + body).encode(), 0o640)


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    """TOML for the value types an agent config holds (str, bool, number, list, table)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        # JSON string escapes are TOML basic-string escapes, but for DEL.
        return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = (f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise InvalidInput(f"cannot write {type(value).__name__} to TOML")


# -- small readers with errors an operator can act on -----------------------------------


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    pem = read_enrollment_file(path, "device key (run enroll-request first)").encode()
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise EnrollmentFileError(f"{path} is not an unencrypted PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise EnrollmentFileError(f"{path} does not hold an EC private key")
    return key


def _load_cert(pem: bytes, source: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise EnrollmentFileError(f"{source} holds a certificate that is not PEM") from exc


def _common_name(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _check_device_id(device_id: str) -> None:
    try:
        check_device_id(device_id)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc
