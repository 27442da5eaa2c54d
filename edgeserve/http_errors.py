"""One error path for the FastAPI front doors (the gateway's REST API, the sync admin API).

Each front door maps ``EdgeServeError`` to its protocol in one ``respond`` function;
``route_errors(app, respond)`` installs it and sends what FastAPI or the code raises
otherwise through the same function: a request that fails validation as
``InvalidInput`` (400), a path no route matches as ``RouteNotFound`` (404), a wrong
method as ``MethodNotAllowed`` (405), anything unexpected as ``InternalError`` (500,
logged with its traceback), so every refusal is counted and shaped alike.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from edgeserve.wire.errors import (
    EdgeServeError,
    InternalError,
    InvalidInput,
    MethodNotAllowed,
    RouteNotFound,
)

log = logging.getLogger(__name__)

Respond = Callable[[Request, EdgeServeError], Awaitable[Response]]


def route_errors(app: FastAPI, respond: Respond) -> None:
    async def refused(request: Request, exc: Any) -> Response:
        return await respond(request, exc)

    async def bad_request(request: Request, exc: Any) -> Response:
        return await respond(request, InvalidInput(f"bad request: {exc.errors()}"))

    async def http_error(request: Request, exc: Any) -> Response:
        path = request.url.path[:200]
        if exc.status_code == 404:
            error: EdgeServeError = RouteNotFound(f"no such path {path!r}")
        elif exc.status_code == 405:
            error = MethodNotAllowed(f"{path!r} does not accept {request.method[:16]}")
        else:
            error = InvalidInput(f"bad request: {str(exc.detail)[:200]}")
        return await respond(request, error)

    async def internal(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", extra={"path": request.url.path})
        return await respond(request, InternalError(f"internal error: {exc}"))

    app.add_exception_handler(EdgeServeError, refused)
    app.add_exception_handler(RequestValidationError, bad_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, internal)
