"""The agent's local REST API: the Open Inference Protocol v2, as a thin Starlette adapter.

Handlers only convert between HTTP and ``wire`` types and call ``AgentCore``; every
``EdgeServeError`` becomes an OIP error body in ``_error_response``, the one place where
errors meet HTTP.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Awaitable, Callable

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edgeserve.edge_agent.core import AgentCore
from edgeserve.edge_agent.executor import BoundedExecutor
from edgeserve.wire import oip_rest
from edgeserve.wire.errors import EdgeServeError, InternalError, InvalidInput, PayloadTooLarge

log = logging.getLogger(__name__)
Handler = Callable[[Request], Awaitable[Response]]


def create_app(core: AgentCore, executor: BoundedExecutor) -> Starlette:
    """The ASGI app over ``core``; inference runs on ``executor``, never on the loop."""
    api = _AgentApi(core, executor)
    model = "/v2/models/{name}"
    version = "/v2/models/{name}/versions/{version}"
    routes = [
        Route("/v2", api.guarded(api.server_metadata)),
        Route("/v2/health/live", api.guarded(api.live)),
        Route("/v2/health/ready", api.guarded(api.ready)),
        Route("/v2/repository/index", api.guarded(api.repository_index), methods=["POST"]),
        Route("/metrics", api.guarded(api.metrics)),
    ]
    for prefix in (model, version):
        routes += [
            Route(prefix, api.guarded(api.model_metadata)),
            Route(f"{prefix}/ready", api.guarded(api.model_ready)),
            Route(f"{prefix}/infer", api.guarded(api.infer), methods=["POST"]),
        ]
    return Starlette(routes=routes)


def _json(document: object, status: int = 200) -> Response:
    return Response(orjson.dumps(document), status, media_type="application/json")


class _AgentApi:
    def __init__(self, core: AgentCore, executor: BoundedExecutor) -> None:
        self.core = core
        self.executor = executor

    def guarded(self, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except EdgeServeError as exc:
                return self._error_response(request, exc)
            except Exception as exc:
                log.exception("unhandled error", extra={"path": request.url.path})
                return self._error_response(request, InternalError(f"internal error: {exc}"))

        return endpoint

    def _error_response(self, request: Request, exc: EdgeServeError) -> Response:
        model = self.core.metric_label(request.path_params.get("name", "_none"))
        self.core.metrics.errors.labels(exc.code.label).inc()
        self.core.metrics.requests.labels(model, exc.code.label).inc()
        log.warning(
            "request rejected",
            extra={"path": request.url.path, "code": exc.code.label, "reason": exc.message},
        )
        return Response(
            oip_rest.error_body(exc.message), exc.code.http_status, media_type="application/json"
        )

    async def server_metadata(self, request: Request) -> Response:
        return _json(self.core.server_metadata())

    async def live(self, request: Request) -> Response:
        return _json({"live": True})

    async def ready(self, request: Request) -> Response:
        ready = self.core.ready
        return _json({"ready": ready}, 200 if ready else 503)

    async def repository_index(self, request: Request) -> Response:
        index = [
            {"name": name, "version": self.core.model(name).version, "state": "READY"}
            for name in self.core.model_names()
        ]
        return _json(index)

    async def metrics(self, request: Request) -> Response:
        return Response(self.core.metrics.render(), media_type="text/plain; version=0.0.4")

    async def model_metadata(self, request: Request) -> Response:
        name, version = _model_ref(request)
        return _json(self.core.model_metadata(name, version))

    async def model_ready(self, request: Request) -> Response:
        name, version = _model_ref(request)
        model = self.core.model(name, version)
        return _json({"name": name, "version": model.version, "ready": True})

    async def infer(self, request: Request) -> Response:
        name, version = _model_ref(request)
        self.core.model(name, version)  # 404 before reading a body we would discard
        body = await _read_body(request, self.core.config.max_body_bytes)
        header_length = _header_length(request)
        infer_request = oip_rest.decode_request(body, header_length, name, version)
        response = await self.executor.run(self.core.infer, infer_request)
        self.core.metrics.requests.labels(name, "ok").inc()
        content, response_header_length = oip_rest.encode_response(response, infer_request)
        if response_header_length is None:
            return Response(content, media_type="application/json")
        return Response(
            content,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(response_header_length)},
        )


def _model_ref(request: Request) -> tuple[str, str | None]:
    return request.path_params["name"], request.path_params.get("version")


def _header_length(request: Request) -> int | None:
    raw = request.headers.get(oip_rest.HEADER_LENGTH)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"Inference-Header-Content-Length '{raw}' is not an integer") from None


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it (or its decompressed form) passes ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {limit}")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding in ("gzip", "deflate"):
        return _decompress(body, encoding, limit)
    if encoding != "identity":
        raise InvalidInput(f"unsupported Content-Encoding '{encoding}'")
    return body


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    decompressor = zlib.decompressobj(wbits)
    try:
        plain = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"body is not valid {encoding}: {exc}") from None
    if len(plain) > limit:
        raise PayloadTooLarge(f"decompressed body exceeds the limit of {limit} bytes")
    return plain
