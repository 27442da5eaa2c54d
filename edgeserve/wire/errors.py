"""The one exception tree of edgeserve, and the table that maps it onto each protocol.

::

    EdgeServeError                 base: carries an ErrorCode and a message
    ├── InvalidInput               400  malformed body, wrong shape/dtype, NaN/inf
    │   └── ClientDisconnected     400  the client left before sending the whole body
    ├── Unauthenticated            401  missing or bad credentials
    ├── PermissionDenied           403  credentials valid, action not allowed
    ├── ModelNotFound              404  unknown model or version
    ├── RouteNotFound              404  no such path (REST)
    ├── MethodNotAllowed           405  a known path asked with the wrong HTTP method
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

Messages quote what the client sent (a model name, a tensor name, a datatype) only through
``shown``, which cuts it to a readable length; and every message is capped at
``MAX_MESSAGE_CHARS``, because a gRPC status travels in metadata (8 KiB by default) and a
message over that limit reaches the client as RESOURCE_EXHAUSTED instead of its own code.
"""

from __future__ import annotations

from enum import Enum


class ErrorCode(Enum):
    """Protocol-neutral error kinds; value is (http status, gRPC status name)."""

    INVALID_INPUT = (400, "INVALID_ARGUMENT")
    UNAUTHENTICATED = (401, "UNAUTHENTICATED")
    PERMISSION_DENIED = (403, "PERMISSION_DENIED")
    NOT_FOUND = (404, "NOT_FOUND")
    METHOD_NOT_ALLOWED = (405, "UNIMPLEMENTED")
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


MAX_SHOWN_CHARS = 128
MAX_MESSAGE_CHARS = 1024


def shown(text: object, limit: int = MAX_SHOWN_CHARS) -> str:
    """Client-supplied ``text`` as a message may quote it: at most ``limit`` characters,
    then how many were cut. A ``str`` is quoted as it is, anything else as its repr."""
    value = text if isinstance(text, str) else repr(text)
    if len(value) <= limit:
        return value
    return f"{value[:limit]}... ({len(value) - limit} more characters)"


class EdgeServeError(Exception):
    """Base of every error edgeserve raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str) -> None:
        message = shown(message, MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.message = message


class InvalidInput(EdgeServeError):
    code = ErrorCode.INVALID_INPUT


class ClientDisconnected(InvalidInput):
    """The client went away mid-body: counted as a refusal, never logged as a failure."""


class Unauthenticated(EdgeServeError):
    code = ErrorCode.UNAUTHENTICATED


class PermissionDenied(EdgeServeError):
    code = ErrorCode.PERMISSION_DENIED


class ModelNotFound(EdgeServeError):
    code = ErrorCode.NOT_FOUND


class RouteNotFound(EdgeServeError):
    code = ErrorCode.NOT_FOUND


class MethodNotAllowed(EdgeServeError):
    code = ErrorCode.METHOD_NOT_ALLOWED


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
