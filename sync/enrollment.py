"""The operator's half of enrollment: sign a device's request and write its bundle.

The device made its key and request itself (``edgeserve agent enroll-request``); here the
broker's CA signs the request, the broker learns the device's password (stored hashed),
and the bundle carries what the device needs to join the fleet.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from edgeserve.security.pki import IdentityMismatch, csr_common_name, load_device_csr
from edgeserve.wire.enrollment import (
    CloudTarget,
    EnrollmentBundle,
    check_operator_key,
    read_enrollment_file,
)

if TYPE_CHECKING:
    from edgeserve.broker.enrollment import BrokerSetup


def issue_bundle(
    setup: BrokerSetup,
    csr_pem: bytes,
    operator_public_key: Path,
    *,
    device_id: str | None = None,
    broker_host: str | None = None,
    broker_port: int | None = None,
    mqtt_version: Literal[4, 5] = 5,
    cloud: CloudTarget | None = None,
) -> EnrollmentBundle:
    """Sign a device's request with ``setup``'s CA and enroll it with the broker.

    ``device_id``, when given, must be the request's CN (the operator expects that
    device); the broker address defaults to the setup's own.
    """
    requested = csr_common_name(load_device_csr(csr_pem))
    if device_id is not None and requested != device_id:
        raise IdentityMismatch(
            f"the request is for device {requested!r}, not {device_id!r}: refusing to sign"
        )
    operator_pem = read_enrollment_file(operator_public_key, "operator public key")
    check_operator_key(operator_pem.encode(), operator_public_key)
    enrollment = setup.enroll(requested, csr_pem)
    return EnrollmentBundle(
        device_id=requested,
        certificate=enrollment.certificate_pem.decode(),
        ca=enrollment.ca_pem.decode(),
        broker_host=broker_host or setup.host,
        broker_port=broker_port or setup.port,
        mqtt_version=mqtt_version,
        mqtt_password=enrollment.credentials.password,
        operator_public_key=operator_pem,
        cloud=cloud,
    )
