"""The gateway's gRPC front door: ``inference.GRPCInferenceService`` over ``GatewayCore``.

Two listeners share one servicer class: the plain one authenticates apps by API key in
the call metadata (``authorization: Bearer …`` or ``x-api-key``); the mTLS one
authenticates devices by the common name of their client certificate, which the TLS
handshake has already verified against our CA, once the certificate's serial is not on
the fleet CA's revocation list (``RevocationList`` re-reads it when it changes, so a
``fleet revoke`` reaches open connections at their next call without a restart).
``_mapped`` is the one place where ``EdgeServeError`` becomes a gRPC status; it also
parses each request from its raw bytes (see ``add_inference_servicer``), so a message
that is not protobuf is one more INVALID_ARGUMENT, counted and logged (throttled) like
the rest, not grpcio's UNKNOWN.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from cloud_gateway.core import Credentials, GatewayCore, HeaderLookup
from cloud_gateway.tenancy import Principal
from edgeserve.listen import cannot_listen
from edgeserve.logs import LogThrottle
from edgeserve.security.revocation import RevocationList
from edgeserve.wire import oip_grpc
from edgeserve.wire.errors import EdgeServeError, InternalError, RateLimited, Unauthenticated
from edgeserve.wire.grpc_stubs import add_inference_servicer
from edgeserve.wire.proto import grpc_service_pb2 as pb
from edgeserve.wire.proto import grpc_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
Request = TypeVar("Request", bound=oip_grpc.ProtoMessage)
Reply = TypeVar("Reply")
Method = Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Reply]]
RawMethod = Callable[[Any, bytes, grpc.aio.ServicerContext], Awaitable[Reply]]
# A storm of bad requests logs one line per RPC and code this often, with a count.
REFUSAL_LOG_INTERVAL_S = 10.0


def _mapped(
    request_type: type[Request],
) -> Callable[[Method[Request, Reply]], RawMethod[Reply]]:
    """The RPC as grpcio calls it: the raw request parsed as ``request_type``, and every
    error, an unparsable request included, counted, logged and sent as a gRPC status."""

    def wrap(method: Method[Request, Reply]) -> RawMethod[Reply]:
        @functools.wraps(method)
        async def guarded(self: Servicer, raw: bytes, context: grpc.aio.ServicerContext) -> Reply:
            try:
                request = oip_grpc.parse_message(request_type, raw)
                return await method(self, request, context)
            except EdgeServeError as exc:
                error = exc
            except Exception as exc:
                log.exception("unhandled error", extra={"rpc": method.__name__})
                error = InternalError(f"internal error: {exc}")
            self.core.metrics.errors.labels(error.code.label, "grpc").inc()
            # A flood of 429s must not turn into a flood of log lines, nor one of garbage.
            self.refusals.log(
                logging.DEBUG if isinstance(error, RateLimited) else logging.WARNING,
                (method.__name__, error.code),
                "rpc refused",
                {"rpc": method.__name__, "code": error.code.label, "reason": error.message},
            )
            if isinstance(error, RateLimited):
                retry = str(max(1, math.ceil(error.retry_after_s)))
                context.set_trailing_metadata((("retry-after", retry),))
            await context.abort(grpc.StatusCode[error.code.grpc_status], error.message)
            raise AssertionError("unreachable: abort raises")  # pragma: no cover

        return guarded

    return wrap


class Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self, core: GatewayCore, mtls: bool, revocations: RevocationList | None = None
    ) -> None:
        self.core = core
        self.mtls = mtls
        self.revocations = revocations
        self.refusals = LogThrottle(log, REFUSAL_LOG_INTERVAL_S)

    async def _principal(self, context: grpc.aio.ServicerContext) -> Principal:
        if self.mtls:
            self._check_not_revoked(context)
            names = context.auth_context().get("x509_common_name") or [b""]
            common_name = names[0].decode() or None
            return await self.core.authenticate(Credentials(device_common_name=common_name))
        metadata = dict(context.invocation_metadata() or ())
        key = metadata.get("authorization") or metadata.get("x-api-key")
        return await self.core.authenticate(Credentials(api_key=key))

    def _check_not_revoked(self, context: grpc.aio.ServicerContext) -> None:
        if self.revocations is None:
            return
        pems = context.auth_context().get("x509_pem_cert") or []
        if pems and self.revocations.is_revoked_pem(pems[0]):
            raise Unauthenticated("this device's certificate has been revoked")

    @_mapped(pb.ServerLiveRequest)
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_mapped(pb.ServerReadyRequest)
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.core.ready)

    @_mapped(pb.ServerMetadataRequest)
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return oip_grpc.server_metadata_to_proto(self.core.server_metadata())

    @_mapped(pb.ModelReadyRequest)
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        principal = await self._principal(context)
        ready = self.core.model_ready(principal, request.name, request.version or None)
        return pb.ModelReadyResponse(ready=ready)

    @_mapped(pb.ModelMetadataRequest)
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        principal = await self._principal(context)
        metadata = self.core.model_metadata(principal, request.name, request.version or None)
        return oip_grpc.model_metadata_to_proto(metadata)

    @_mapped(pb.ModelInferRequest)
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        started = time.perf_counter()
        principal = await self._principal(context)
        # Refusals that need no tensors (403, 404, 429) before any tensor is decoded.
        admission = await self.core.admit(principal, request.model_name, started)
        try:
            infer_request = oip_grpc.request_from_proto(request)
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            header = None if admission.experiment is None else _metadata_lookup(context)
            response = await self.core.run(admission, infer_request, deadline, header)
        finally:
            self.core.release(admission)
        return oip_grpc.response_to_proto(response)

    @_mapped(pb.RepositoryIndexRequest)
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        rows = self.core.repository_index(await self._principal(context))
        if request.ready:
            rows = [row for row in rows if row["state"] == "READY"]
        models = [pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows]
        return pb.RepositoryIndexResponse(models=models)

    @_mapped(pb.RepositoryModelLoadRequest)
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        await self.core.load(await self._principal(context), request.model_name)
        return pb.RepositoryModelLoadResponse()

    @_mapped(pb.RepositoryModelUnloadRequest)
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        await self.core.unload(await self._principal(context), request.model_name)
        return pb.RepositoryModelUnloadResponse()


def _metadata_lookup(context: grpc.aio.ServicerContext) -> HeaderLookup:
    """Call metadata by name, for an experiment's sticky key (read only when asked)."""

    def lookup(name: str) -> str | None:
        value = dict(context.invocation_metadata() or ()).get(name.lower())
        return value.decode("latin-1") if isinstance(value, bytes) else value

    return lookup


def create_grpc_server(
    core: GatewayCore,
    host: str,
    port: int,
    tls: tuple[bytes, bytes, bytes] | None = None,
    max_message_bytes: int = 16 << 20,
    crl: Path | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A gRPC server bound to ``host:port``; ``tls`` = (ca, cert, key) PEMs for mTLS, and
    ``crl`` the CA's revocation list that device certificates are checked against."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    server = grpc.aio.server(options=options)
    revocations = RevocationList(crl, tls[0]) if tls is not None and crl is not None else None
    servicer = Servicer(core, tls is not None, revocations)
    add_inference_servicer(servicer, server)
    address = f"{host}:{port}"
    try:
        if tls is None:
            bound = server.add_insecure_port(address)
        else:
            ca, cert, key = tls
            credentials = grpc.ssl_server_credentials(
                [(key, cert)], root_certificates=ca, require_client_auth=True
            )
            bound = server.add_secure_port(address, credentials)
    except RuntimeError:  # grpc says only "Failed to bind"
        raise cannot_listen("gRPC" if tls is None else "gRPC (mTLS)", address) from None
    return server, bound
