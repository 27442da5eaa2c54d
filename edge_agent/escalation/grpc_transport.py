"""The real cloud transport: OIP v2 ``ModelInfer`` over a ``grpc.aio`` channel.

Devices reach the gateway's mTLS port with their client certificate (its CN is the
device id); app-style clients can instead send an API key as ``authorization: Bearer``.
``_translate`` is the one place where a gRPC status becomes an ``EdgeServeError``.

Channel options are chosen for flaky links where the agent, not grpc, decides what to
retry: no transparent retries, fail fast instead of waiting for a connection
(``wait_for_ready`` off), reconnect quickly once the link is back, and keepalive pings
only while a call is open, because the gateway's default ping policy answers pings on
an idle connection with GOAWAY ``too_many_pings``.
"""

from __future__ import annotations

from typing import Any

import grpc

from edge_agent.escalation.transport import TlsFiles
from edgeserve.wire import oip_grpc
from edgeserve.wire.errors import (
    DeadlineExceeded,
    EdgeServeError,
    InternalError,
    InvalidInput,
    ModelNotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from edgeserve.wire.grpc_stubs import inference_stub
from edgeserve.wire.tensors import InferRequest, InferResponse

__all__ = ["GrpcCloudTransport", "channel_options"]

_DEFAULT_RETRY_AFTER_S = 1.0
_SIMPLE_ERRORS: dict[Any, type[EdgeServeError]] = {
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.NOT_FOUND: ModelNotFound,
}


def channel_options(
    server_name_override: str | None = None, max_message_bytes: int = 16 << 20
) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.enable_retries", 0),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.min_reconnect_backoff_ms", 1_000),
        ("grpc.max_reconnect_backoff_ms", 5_000),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    if server_name_override is not None:
        options.append(("grpc.ssl_target_name_override", server_name_override))
    return options


class GrpcCloudTransport:
    """``ModelInfer`` calls to ``target`` ("host:port"), over mTLS when ``tls`` is given.

    The channel is opened on the first call, inside the running event loop, and kept
    while the certificate file stays the same; grpc reconnects it by itself after a
    broken link. A renewed certificate (``edge_agent.sync.renewal`` rewrote the file)
    opens a new channel for the next call, since a channel's credentials are fixed and
    its reconnects after the old certificate expired would be refused; the old channel
    finishes its calls and closes with the transport.
    """

    def __init__(
        self,
        target: str,
        tls: TlsFiles | None,
        api_key: str | None,
        server_name_override: str | None = None,
        max_message_bytes: int = 16 << 20,
    ) -> None:
        self.target = target
        self._tls = tls
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._options = channel_options(server_name_override, max_message_bytes)
        self._channel: Any = None
        self._stub: Any = None
        self._closed = False
        self._cert_stamp: int | None = None
        self._retired: list[Any] = []

    async def infer(self, request: InferRequest, timeout_s: float) -> InferResponse:
        message = oip_grpc.request_to_proto(request)
        stub = self._connect()
        try:
            reply = await stub.ModelInfer(
                message, timeout=timeout_s, metadata=self._metadata, wait_for_ready=False
            )
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from exc
        try:
            return oip_grpc.response_from_proto(reply)
        except InvalidInput as exc:
            raise InternalError(f"cloud sent a malformed response: {exc.message}") from exc

    async def close(self) -> None:
        self._closed = True
        channel, self._channel, self._stub = self._channel, None, None
        for old in [*self._retired, channel]:
            if old is not None:
                await old.close(grace=None)
        self._retired.clear()

    def _connect(self) -> Any:
        if self._closed:
            raise InternalError("transport is closed")
        if self._stub is not None and self._cert_renewed():
            self._retired.append(self._channel)
            self._channel = self._stub = None
        if self._stub is None:
            if self._tls is None:
                self._channel = grpc.aio.insecure_channel(self.target, options=self._options)
            else:
                self._cert_stamp = self._cert_mtime()
                ca, cert, key = self._tls.read()
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=ca, private_key=key, certificate_chain=cert
                )
                self._channel = grpc.aio.secure_channel(
                    self.target, credentials, options=self._options
                )
            self._stub = inference_stub(self._channel)
        return self._stub

    def _cert_renewed(self) -> bool:
        return self._tls is not None and self._cert_mtime() != self._cert_stamp

    def _cert_mtime(self) -> int | None:
        assert self._tls is not None
        try:
            return self._tls.cert.stat().st_mtime_ns
        except OSError:
            return self._cert_stamp  # unreadable now: keep the channel we have


def _translate(exc: grpc.aio.AioRpcError) -> EdgeServeError:
    """The one table from a gRPC status to our exception tree."""
    code = exc.code()
    details = exc.details() or code.name
    message = f"cloud {code.name}: {details}"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return RateLimited(message, _retry_after(exc))
    error_type = _SIMPLE_ERRORS.get(code, InternalError)
    return error_type(message)


def _retry_after(exc: grpc.aio.AioRpcError) -> float:
    for key, value in exc.trailing_metadata() or ():
        if key.lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except (TypeError, ValueError):
                break
    return _DEFAULT_RETRY_AFTER_S
