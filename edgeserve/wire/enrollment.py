"""The enrollment bundle: what an operator sends an enrolling device, and its checks.

The contract between the fleet side, which signs a device's request and writes the bundle
(``sync.enrollment``), and the device, which checks and installs it
(``edge_agent.enroll``). The bundle is 0600 JSON: it carries the device's broker
password, never a private key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeserve.durable import write_private
from edgeserve.security.pki import EnrollmentError

BUNDLE_FORMAT: Literal["edgeserve-enrollment/1"] = "edgeserve-enrollment/1"


class EnrollmentFileError(EnrollmentError):
    """A file enrollment needs is missing, unreadable or not what it should be."""


class CloudTarget(BaseModel):
    """The gateway the device escalates to, with the device's enrolled pair for mTLS."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target: str = Field(description="gRPC host:port of the gateway's mTLS port")
    server_name: str = Field("localhost", description="name in the gateway's certificate")
    ca: str | None = Field(None, description="PEM of the gateway's CA (default: the bundle's)")


class EnrollmentBundle(BaseModel):
    """What the operator sends an enrolling device (JSON, 0600: it holds a password)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["edgeserve-enrollment/1"] = BUNDLE_FORMAT
    device_id: str
    certificate: str = Field(description="the device's client certificate, PEM")
    ca: str = Field(description="the CA that signed it and the broker's certificate, PEM")
    broker_host: str
    broker_port: int = Field(ge=1, le=65535)
    mqtt_version: Literal[4, 5] = 5
    mqtt_password: str
    operator_public_key: str = Field(description="Ed25519 update-signing public key, PEM")
    cloud: CloudTarget | None = None

    def write(self, path: Path) -> None:
        write_private(path, self.model_dump_json(indent=2).encode() + b"\n")

    @classmethod
    def read(cls, path: Path) -> EnrollmentBundle:
        text = read_enrollment_file(path, "enrollment bundle")
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise EnrollmentFileError(f"{path} is not an enrollment bundle: {exc}") from exc


def read_enrollment_file(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except FileNotFoundError as exc:
        raise EnrollmentFileError(f"no {what} at {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise EnrollmentFileError(f"cannot read the {what} at {path}: {exc}") from exc


def check_operator_key(pem: bytes, source: Path) -> None:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise EnrollmentFileError(f"{source}: the operator key is not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise EnrollmentFileError(f"{source}: the operator key is not an Ed25519 public key")
