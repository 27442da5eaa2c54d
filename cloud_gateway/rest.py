"""The gateway's REST front door: OIP v2 over FastAPI, a thin adapter over ``GatewayCore``.

Documented routes (health, metadata, repository) are ordinary FastAPI routes; ``infer``
reads the raw body itself because OIP bodies are JSON *or* the binary extension, and a
pydantic body model would parse twice. Every ``EdgeServeError`` is mapped to an OIP error
(with ``Retry-After`` on 429) in ``_error_response`` and nowhere else.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from cloud_gateway.core import Credentials, GatewayCore
from cloud_gateway.tenancy import Principal
from edgeserve.http_errors import route_errors
from edgeserve.wire import oip_rest
from edgeserve.wire.errors import (
    EdgeServeError,
    InvalidInput,
    RateLimited,
)
from edgeserve.wire.http_body import read_limited_body

log = logging.getLogger(__name__)
access_log = logging.getLogger("edgeserve.gateway.access")


def _core(request: Request) -> GatewayCore:
    core: GatewayCore = request.app.state.core
    return core


async def _principal(request: Request) -> Principal:
    key = request.headers.get("authorization") or request.headers.get("x-api-key")
    return await _core(request).authenticate(Credentials(api_key=key))


Caller = Annotated[Principal, Depends(_principal)]
Core = Annotated[GatewayCore, Depends(_core)]
router = APIRouter()


def create_rest_app(core: GatewayCore, max_body_bytes: int) -> FastAPI:
    app = FastAPI(title="edgeserve gateway", version="v2", docs_url="/docs")
    app.state.core = core
    app.state.max_body_bytes = max_body_bytes
    app.include_router(router)

    async def _error_response(request: Request, exc: EdgeServeError) -> Response:
        core.metrics.errors.labels(exc.code.label, "rest").inc()
        # A flood of 429s must not turn into a flood of log lines.
        log.log(
            logging.DEBUG if isinstance(exc, RateLimited) else logging.WARNING,
            "request refused",
            extra={
                "path": request.url.path,
                "code": exc.code.label,
                "reason": exc.message,
                "request_id": request.state.request_id,
            },
        )
        headers = {}
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        return Response(
            oip_rest.error_body(exc.message),
            exc.code.http_status,
            headers=headers,
            media_type="application/json",
        )

    route_errors(app, _error_response)

    @app.middleware("http")
    async def _access_log(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        request.state.request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        trace = request.headers.get("traceparent", "")
        started = time.perf_counter()
        response = await call_next(request)
        response.headers["x-request-id"] = request.state.request_id
        access_log.info(
            "request",
            extra={
                "method": request.method,
                "path": request.url.path,
                "status": response.status_code,
                "ms": round((time.perf_counter() - started) * 1e3, 3),
                "request_id": request.state.request_id,
                "trace_id": trace.split("-")[1] if trace.count("-") >= 3 else None,
            },
        )
        return response

    return app


@router.get("/v2")
async def server_metadata(core: Core) -> JSONResponse:
    return JSONResponse(core.server_metadata())


@router.get("/v2/health/live")
async def live() -> JSONResponse:
    return JSONResponse({"live": True})


@router.get("/v2/health/ready")
async def ready(core: Core) -> JSONResponse:
    return JSONResponse({"ready": core.ready}, 200 if core.ready else 503)


@router.get("/metrics")
async def metrics(core: Core) -> Response:
    return Response(core.metrics.render(), media_type="text/plain; version=0.0.4")


@router.post("/v2/repository/index")
async def repository_index(core: Core, caller: Caller) -> JSONResponse:
    return JSONResponse(core.repository_index(caller))


@router.post("/v2/repository/models/{name}/load")
async def load(name: str, core: Core, caller: Caller) -> JSONResponse:
    await core.load(caller, name)
    return JSONResponse({})


@router.post("/v2/repository/models/{name}/unload")
async def unload(name: str, core: Core, caller: Caller) -> JSONResponse:
    await core.unload(caller, name)
    return JSONResponse({})


@router.get("/v2/models/{name}")
@router.get("/v2/models/{name}/versions/{version}")
async def model_metadata(
    name: str, core: Core, caller: Caller, version: str | None = None
) -> JSONResponse:
    return JSONResponse(core.model_metadata(caller, name, version))


@router.get("/v2/models/{name}/ready")
@router.get("/v2/models/{name}/versions/{version}/ready")
async def model_ready(
    name: str, core: Core, caller: Caller, version: str | None = None
) -> Response:
    ready = core.model_ready(caller, name, version)
    return JSONResponse({"name": name, "ready": ready}, 200 if ready else 400)


@router.post("/v2/models/{name}/infer")
@router.post("/v2/models/{name}/versions/{version}/infer")
async def infer(
    request: Request, name: str, core: Core, caller: Caller, version: str | None = None
) -> Response:
    body = await _read_body(request, request.app.state.max_body_bytes)
    header_length = _header_length(request)
    infer_request = oip_rest.decode_request(body, header_length, name, version)
    response = await core.infer(caller, infer_request)
    content, length = oip_rest.encode_response(response, infer_request)
    if length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(length)},
    )


def _header_length(request: Request) -> int | None:
    raw = request.headers.get(oip_rest.HEADER_LENGTH)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"Inference-Header-Content-Length '{raw}' is not an integer") from None


async def _read_body(request: Request, limit: int) -> bytes:
    headers = request.headers
    return await read_limited_body(
        request.stream(), headers.get("content-length"), headers.get("content-encoding"), limit
    )
