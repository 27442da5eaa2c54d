"""The gateway's documented REST routes on FastAPI: metadata, repository, metrics, docs.

These are where a framework earns its keep (path parameters, OpenAPI at ``/docs``) and
none of them carries inference traffic; ``infer`` and the health probes are served by
the bare ASGI handler in ``rest``, which hands every other path to this app. Errors go
through the same ``refusal`` as the hot path, so unknown routes and wrong methods answer
OIP's ``{"error": ...}`` (which stock clients read), and are counted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from cloud_gateway.core import Credentials, GatewayCore
from cloud_gateway.tenancy import Principal
from edgeserve.http_errors import route_errors
from edgeserve.wire.errors import EdgeServeError, InvalidInput

Refusal = Callable[[EdgeServeError, str], tuple[int, list[tuple[bytes, bytes]], bytes]]
DESCRIPTION = (
    "Open Inference Protocol v2. `POST /v2/models/{name}[/versions/{version}]/infer` (JSON "
    "or the binary tensor extension) and `/v2/health/*` are served by a lean handler in "
    "front of this app and are not listed below."
)


def _core(request: Request) -> GatewayCore:
    core: GatewayCore = request.app.state.core
    return core


async def _principal(request: Request) -> Principal:
    key = request.headers.get("authorization") or request.headers.get("x-api-key")
    return await _core(request).authenticate(Credentials(api_key=key))


Caller = Annotated[Principal, Depends(_principal)]
Core = Annotated[GatewayCore, Depends(_core)]
router = APIRouter()


def create_api_app(core: GatewayCore, refusal: Refusal) -> FastAPI:
    app = FastAPI(
        title="edgeserve gateway", version="v2", docs_url="/docs", description=DESCRIPTION
    )
    app.state.core = core
    app.include_router(router)

    async def respond(request: Request, exc: EdgeServeError) -> Response:
        status, headers, body = refusal(exc, request.url.path)
        return Response(
            body,
            status,
            headers={k.decode(): v.decode("latin-1") for k, v in headers},
            media_type="application/json",
        )

    route_errors(app, respond)
    return app


@router.get("/v2")
async def server_metadata(core: Core) -> JSONResponse:
    return JSONResponse(core.server_metadata())


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


@router.post("/v2/models/{name}/feedback")
async def feedback(name: str, request: Request, core: Core, caller: Caller) -> JSONResponse:
    """True labels for an earlier request to a model under an experiment:
    ``{"id": "<the response's id>", "labels": ["7", ...]}``, one label per row."""
    try:
        document = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"feedback body is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise InvalidInput('feedback body must be a JSON object {"id": ..., "labels": [...]}')
    known = await core.feedback(caller, name, document.get("id"), document.get("labels"))
    return JSONResponse({"id": document["id"], "accepted": True, "answers_known": known})
