"""Who may call the cloud gateway: tenants, their API keys and their devices, in SQLite.

``TenantStore`` keeps tenants (allowed models, rate, burst, in-flight cap, fair-queue
weight and priority tier), their API keys as SHA-256 digests only (see ``keys`` for why
not a password hash), and the device ids (mTLS certificate common names) that belong to
them. ``Authenticator`` turns a request's ``Authorization``/``x-api-key`` header or
verified client-certificate CN into a ``Principal`` — raising ``Unauthenticated`` (401) or
``PermissionDenied`` (403) — and checks it against a model; it caches verified keys
briefly to skip the database. ``cli`` holds the admin commands' bodies. Nothing here
imports a web framework.
"""

from cloud_gateway.tenancy.auth import Authenticator
from cloud_gateway.tenancy.keys import ApiKey, LegacyGate
from cloud_gateway.tenancy.models import ALL_MODELS, Principal, Tenant, TenantKind
from cloud_gateway.tenancy.schema import SCHEMA_VERSION
from cloud_gateway.tenancy.store import KeyInfo, TenantExists, TenantNotFound, TenantStore

__all__ = [
    "ALL_MODELS",
    "SCHEMA_VERSION",
    "ApiKey",
    "Authenticator",
    "KeyInfo",
    "LegacyGate",
    "Principal",
    "Tenant",
    "TenantExists",
    "TenantKind",
    "TenantNotFound",
    "TenantStore",
]
