"""The agent's link to the cloud as a one-method interface, and its in-memory twin.

A ``CloudTransport`` sends one ``InferRequest`` and returns the cloud's ``InferResponse``,
or raises an ``EdgeServeError`` (never a third-party exception): ``DeadlineExceeded``,
``Unavailable``, ``Unauthenticated``, ``PermissionDenied``, ``InvalidInput``,
``RateLimited`` or ``InternalError``. The real one speaks gRPC and lives in
``grpc_transport`` so that importing this module does not import grpc, which the
edge install leaves out unless escalation is configured.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edgeserve.wire.errors import EdgeServeError, InternalError
from edgeserve.wire.tensors import InferRequest, InferResponse

__all__ = ["CloudTransport", "InMemoryCloudTransport", "TlsFiles"]


class CloudTransport(Protocol):
    async def infer(self, request: InferRequest, timeout_s: float) -> InferResponse:
        """The cloud's answer within ``timeout_s``, or an ``EdgeServeError``."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files for mutual TLS: the CA that signed the gateway, our device cert and key."""

    ca: Path
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(ca, cert, key) bytes; read at connect time so a renewed cert is picked up."""
        return self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()


Handler = Callable[[InferRequest], Awaitable[InferResponse]]


class InMemoryCloudTransport:
    """A transport that calls ``handler`` in-process: for unit tests and demos.

    The handler may raise any ``EdgeServeError`` to play a failing cloud, or sleep to
    play a slow one; ``timeout_s`` is not enforced here (the client guards it), so a
    test sees exactly what a stalled connection would do. Anything else it raises
    becomes ``InternalError``, as the gRPC transport would report it.
    """

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.calls = 0
        self.closed = False
        self.timeouts: list[float] = []

    async def infer(self, request: InferRequest, timeout_s: float) -> InferResponse:
        if self.closed:
            raise InternalError("transport is closed")
        self.calls += 1
        self.timeouts.append(timeout_s)
        try:
            return await self._handler(request)
        except EdgeServeError:
            raise
        except Exception as exc:
            raise InternalError(f"cloud handler failed: {exc!r}") from exc

    async def close(self) -> None:
        self.closed = True
