"""The one exception tree of edgeserve, and the table that maps it onto each protocol.

::

    EdgeServeError                 base: carries an ErrorCode and a message
    ├── InvalidInput               400  malformed body, wrong shape/dtype, NaN/inf
    ├── Unauthenticated            401  missing or bad credentials
    ├── PermissionDenied           403  credentials valid, action not allowed
    ├── ModelNotFound              404  unknown model or version
    ├── PayloadTooLarge            413  body over the configured limit
    ├── RateLimited                429  token bucket empty (carries retry_after_s)
    ├── Unavailable                503  not ready, overloaded, queue full
    ├── DeadlineExceeded           504  the request's deadline passed before it ran
    ├── IntegrityError             500  artifact bytes do not match their card/manifest
    │   └── SignatureError         500  a manifest whose Ed25519 signature does not verify
    ├── UpdateRefused              409  a verified update this device must not apply
    │                                   (older version, replay, expired, wrong base)
    └── InternalError              500  a bug or a runtime failure

Front doors never invent statuses: REST maps through ``ErrorCode.http_status`` and gRPC
through ``ErrorCode.grpc_status`` in exactly one handler each.
"""

from __future__ import annotations

from enum import Enum


class ErrorCode(Enum):
    """Protocol-neutral error kinds; value is (http status, gRPC status name)."""

    INVALID_INPUT = (400, "INVALID_ARGUMENT")
    UNAUTHENTICATED = (401, "UNAUTHENTICATED")
    PERMISSION_DENIED = (403, "PERMISSION_DENIED")
    NOT_FOUND = (404, "NOT_FOUND")
    PAYLOAD_TOO_LARGE = (413, "RESOURCE_EXHAUSTED")
    RATE_LIMITED = (429, "RESOURCE_EXHAUSTED")
    UNAVAILABLE = (503, "UNAVAILABLE")
    DEADLINE_EXCEEDED = (504, "DEADLINE_EXCEEDED")
    CONFLICT = (409, "FAILED_PRECONDITION")
    INTEGRITY = (500, "DATA_LOSS")
    INTERNAL = (500, "INTERNAL")

    @property
    def http_status(self) -> int:
        return self.value[0]

    @property
    def grpc_status(self) -> str:
        return self.value[1]

    @property
    def label(self) -> str:
        """Short lowercase name used as a metrics label."""
        return self.name.lower()


class EdgeServeError(Exception):
    """Base of every error edgeserve raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(EdgeServeError):
    code = ErrorCode.INVALID_INPUT


class Unauthenticated(EdgeServeError):
    code = ErrorCode.UNAUTHENTICATED


class PermissionDenied(EdgeServeError):
    code = ErrorCode.PERMISSION_DENIED


class ModelNotFound(EdgeServeError):
    code = ErrorCode.NOT_FOUND


class PayloadTooLarge(EdgeServeError):
    code = ErrorCode.PAYLOAD_TOO_LARGE


class RateLimited(EdgeServeError):
    code = ErrorCode.RATE_LIMITED

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(EdgeServeError):
    code = ErrorCode.UNAVAILABLE


class DeadlineExceeded(EdgeServeError):
    code = ErrorCode.DEADLINE_EXCEEDED


class IntegrityError(EdgeServeError):
    code = ErrorCode.INTEGRITY


class SignatureError(IntegrityError):
    pass


class UpdateRefused(EdgeServeError):
    code = ErrorCode.CONFLICT


class InternalError(EdgeServeError):
    code = ErrorCode.INTERNAL
