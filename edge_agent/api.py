"""The agent's local REST API: the Open Inference Protocol v2 as a bare ASGI adapter.

A bare ASGI app, not a framework: on a device every request pays for the router, and a
framework's request/response objects cost more than the model itself (the int8 MLP runs
in ~15 µs). Handlers only convert between HTTP and ``wire`` types and call
``AgentCore``; every ``EdgeServeError`` becomes an OIP error body in ``_error_reply``,
the one place where errors meet HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from edge_agent.core import AgentCore
from edge_agent.router import Router
from edgeserve.logs import LogThrottle
from edgeserve.wire import oip_rest
from edgeserve.wire.errors import (
    EdgeServeError,
    InternalError,
    InvalidInput,
    MethodNotAllowed,
    ModelNotFound,
    shown,
)
from edgeserve.wire.http_body import read_asgi_body
from edgeserve.wire.model_card import RouterPolicy

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"
# A storm of bad requests logs one line per error code this often, with a count.
REFUSAL_LOG_INTERVAL_S = 10.0


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    content_type: bytes = JSON
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def _json(document: object, status: int = 200) -> Reply:
    return Reply(status, orjson.dumps(document))


@dataclass(slots=True)
class HttpRequest:
    """What a handler needs of an HTTP request; the body is read only by ``infer``."""

    method: str
    path: str
    headers: dict[bytes, bytes]
    receive: Receive
    model: str | None = None
    version: str | None = None


class AgentApp:
    """The ASGI callable over ``core`` and its ``router`` (which runs inference off the loop)."""

    def __init__(self, core: AgentCore, router: Router) -> None:
        self.core = core
        self.router = router
        self.refusals = LogThrottle(log, REFUSAL_LOG_INTERVAL_S)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = HttpRequest(scope["method"], scope["path"], dict(scope["headers"]), receive)
        try:
            reply = await self._route(request)
        except EdgeServeError as exc:
            reply = self._error_reply(request, exc)
        except Exception as exc:
            log.exception("unhandled error", extra={"path": request.path})
            reply = self._error_reply(request, InternalError(f"internal error: {exc}"))
        # With a length, uvicorn need not chunk the body.
        length = (b"content-length", b"%d" % len(reply.body))
        headers = [(b"content-type", reply.content_type), length, *reply.headers]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    def _error_reply(self, request: HttpRequest, exc: EdgeServeError) -> Reply:
        model = self.core.metric_label(request.model or "_none")
        self.core.metrics.errors.labels(exc.code.label).inc()
        self.core.metrics.requests.labels(model, exc.code.label).inc()
        self.refusals.log(
            logging.WARNING,
            exc.code,
            "request rejected",
            {"path": shown(request.path), "code": exc.code.label, "reason": exc.message},
        )
        status = exc.code.http_status
        return Reply(status, oip_rest.error_body(exc.message))

    async def _route(self, request: HttpRequest) -> Reply:
        parts = request.path.strip("/").split("/")
        if parts[0] == "metrics" and len(parts) == 1:
            _expect(request, "GET")
            return Reply(200, self.core.metrics.render(), b"text/plain; version=0.0.4")
        if parts[0] != "v2":
            raise ModelNotFound(f"no such path {shown(request.path)}")
        if len(parts) >= 3 and parts[1] == "models":
            return await self._model_route(request, parts[2:])
        return self._server_route(request, "/".join(parts[1:]))

    def _server_route(self, request: HttpRequest, rest: str) -> Reply:
        if rest == "":
            _expect(request, "GET")
            return _json(self.core.server_metadata())
        if rest == "health/live":
            _expect(request, "GET")
            return _json({"live": True})
        if rest == "health/ready":
            _expect(request, "GET")
            ready = self.core.ready
            return _json({"ready": ready}, 200 if ready else 503)
        if rest == "repository/index":
            _expect(request, "POST")
            return _json(self._repository_index())
        raise ModelNotFound(f"no such path {shown(request.path)}")

    async def _model_route(self, request: HttpRequest, parts: list[str]) -> Reply:
        request.model = parts[0]
        if len(parts) >= 3 and parts[1] == "versions":
            request.version, action = parts[2], parts[3:]
        else:
            action = parts[1:]
        if action == []:
            _expect(request, "GET")
            return _json(self.core.model_metadata(request.model, request.version))
        if action == ["ready"]:
            _expect(request, "GET")
            model = self.core.model(request.model, request.version)
            return _json({"name": request.model, "version": model.version, "ready": True})
        if action == ["router"]:
            return await self._router_policy(request)
        if action == ["infer"]:
            _expect(request, "POST")
            return await self._infer(request, request.model)
        raise ModelNotFound(f"no such path {shown(request.path)}")

    async def _router_policy(self, request: HttpRequest) -> Reply:
        """GET the model's routing policy; PUT a runtime override (DELETE restores the card's)."""
        assert request.model is not None
        model = self.core.model(request.model, request.version)
        if request.method == "PUT":
            body = await read_asgi_body(request.receive, request.headers, 64 << 10)
            try:
                override = RouterPolicy.model_validate_json(body)
            except ValueError as exc:
                raise InvalidInput(f"bad router policy: {exc}") from None
            self.router.override(model.card.name, override)
        elif request.method == "DELETE":
            self.router.override(model.card.name, None)
        else:
            _expect(request, "GET")
        policy = self.router.policy(model)
        return _json(policy.model_dump() if policy else None)

    def _repository_index(self) -> list[dict[str, str]]:
        return [
            {"name": name, "version": self.core.model(name).version, "state": "READY"}
            for name in self.core.model_names()
        ]

    async def _infer(self, request: HttpRequest, name: str) -> Reply:
        self.core.model(name, request.version)  # 404 before reading a body we would discard
        body = await read_asgi_body(
            request.receive, request.headers, self.core.config.max_body_bytes
        )
        header_length = oip_rest.header_length(request.headers)
        infer_request = oip_rest.decode_request(body, header_length, name, request.version)
        response = await self.router.infer(infer_request)
        self.core.metrics.requests.labels(name, "ok").inc()
        content, response_header_length = oip_rest.encode_response(response, infer_request)
        if response_header_length is None:
            return Reply(200, content)
        length_header = (b"inference-header-content-length", b"%d" % response_header_length)
        return Reply(200, content, b"application/octet-stream", [length_header])


def create_app(core: AgentCore, router: Router) -> AgentApp:
    return AgentApp(core, router)


def _expect(request: HttpRequest, method: str) -> None:
    if request.method != method and not (method == "GET" and request.method == "HEAD"):
        raise MethodNotAllowed(
            f"{shown(request.path)} accepts {method}, not {shown(request.method)}"
        )
