"""Transport security shared by the tiers: a development PKI for mutual TLS.

``ensure_dev_pki`` generates, at setup and into a state folder (never into the repo), an
ECDSA P-256 certificate authority, a server certificate for the cloud gateway and broker,
and one client certificate per device whose common name is the device id the gateway's
tenancy maps to a tenant; ``server_ssl_context``/``client_ssl_context`` build ``ssl``
contexts from it. Production deployments bring their own CA and only reuse the layout.
"""

from edgeserve.security.pki import (
    CertPaths,
    DevPki,
    client_ssl_context,
    create_dev_ca,
    ensure_dev_pki,
    issue_client_cert,
    issue_server_cert,
    peer_common_name,
    server_ssl_context,
)

__all__ = [
    "CertPaths",
    "DevPki",
    "client_ssl_context",
    "create_dev_ca",
    "ensure_dev_pki",
    "issue_client_cert",
    "issue_server_cert",
    "peer_common_name",
    "server_ssl_context",
]
