"""The gateway's REST front door: OIP v2 over HTTP, a thin adapter over ``GatewayCore``.

Two layers, chosen by measurement. ``infer`` and the health probes, which carry the
traffic, are a bare ASGI handler: a framework's routing, dependency solving, middleware
and thread hops cost more per request than the model (see docs/cloud-gateway.md for the
profile). Everything else (server and model metadata, the repository extension,
/metrics, the OpenAPI docs) is an ordinary FastAPI app in ``rest_api``, which the hot
handler passes any other path to.

On ``infer`` every refusal that needs no body (401, 403, 404, 429) happens before a byte
of the body is read, so a flood of refused requests costs its senders, not the compliant
tenants. ``refusal`` is the one place where an ``EdgeServeError`` becomes an HTTP answer
(an OIP ``{"error": ...}`` body, ``Retry-After`` on 429), for both layers.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from cloud_gateway.core import Credentials, GatewayCore, HeaderLookup
from cloud_gateway.rest_api import create_api_app
from edgeserve.logs import LogThrottle
from edgeserve.wire import oip_rest
from edgeserve.wire.errors import (
    EdgeServeError,
    InternalError,
    MethodNotAllowed,
    RateLimited,
    RouteNotFound,
    shown,
)
from edgeserve.wire.http_body import read_asgi_body

log = logging.getLogger(__name__)
access_log = logging.getLogger("edgeserve.gateway.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON = b"application/json"
BINARY = b"application/octet-stream"
_MODELS = "/v2/models/"
_LIVE = orjson.dumps({"live": True})
HEALTH_ROUTES = ("/v2/health/live", "/v2/health/ready")
REFUSAL_LOG_INTERVAL_S = 10.0


class GatewayHttp:
    """The ASGI app the gateway serves: the hot paths here, the rest through FastAPI."""

    def __init__(self, core: GatewayCore, max_body_bytes: int, *, access_log: bool = False) -> None:
        self.core = core
        self.max_body_bytes = max_body_bytes
        self.access_log = access_log
        self.api = create_api_app(core, self.refusal)
        # A storm of bad requests logs one line per code every REFUSAL_LOG_INTERVAL_S.
        self.refusals = LogThrottle(log, REFUSAL_LOG_INTERVAL_S)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        if self.access_log:
            send = _logged(scope, send)
        path: str = scope["path"]
        if path.startswith(_MODELS) and path.endswith("/infer"):
            await self._infer(scope, receive, send)
        elif path == "/v2/health/live" and scope["method"] in ("GET", "HEAD"):
            await _reply(send, 200, _LIVE, JSON, _echo_id(scope))
        elif path == "/v2/health/ready" and scope["method"] in ("GET", "HEAD"):
            ready = self.core.ready
            body = orjson.dumps({"ready": ready})
            await _reply(send, 200 if ready else 503, body, JSON, _echo_id(scope))
        else:
            await self.api(scope, receive, send)

    async def _infer(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: dict[bytes, bytes] = dict(scope["headers"])
        extra = _echo_id(scope)
        try:
            status, body, content_type, more = await self._answer(scope, headers, receive)
        except EdgeServeError as exc:
            status, more, body = self.refusal(exc, scope["path"])
            content_type = JSON
        except Exception as exc:
            log.exception("unhandled error", extra={"path": shown(scope["path"], 200)})
            status, more, body = self.refusal(InternalError(f"internal error: {exc}"), "")
            content_type = JSON
        await _reply(send, status, body, content_type, extra + more)

    async def _answer(
        self, scope: Scope, headers: dict[bytes, bytes], receive: Receive
    ) -> tuple[int, bytes, bytes, Headers]:
        started = time.perf_counter()
        name, version = _infer_target(scope["path"])
        if scope["method"] != "POST":
            raise MethodNotAllowed(f"infer accepts POST, not {shown(scope['method'], 16)}")
        key = headers.get(b"authorization") or headers.get(b"x-api-key")
        principal = await self.core.authenticate(
            Credentials(api_key=key.decode("latin-1") if key is not None else None)
        )
        admission = await self.core.admit(principal, name, started)
        try:
            body = await read_asgi_body(receive, headers, self.max_body_bytes)
            request = oip_rest.decode_request(body, oip_rest.header_length(headers), name, version)
            # Only an experiment reads headers past authentication (its sticky key).
            header = None if admission.experiment is None else _header_lookup(headers)
            response = await self.core.run(admission, request, header=header)
        finally:
            self.core.release(admission)
        content, length = oip_rest.encode_response(response, request)
        if length is None:
            return 200, content, JSON, []
        return 200, content, BINARY, [(b"inference-header-content-length", b"%d" % length)]

    def refusal(self, exc: EdgeServeError, path: str) -> tuple[int, Headers, bytes]:
        """Count, log and shape one refusal: (status, extra headers, OIP error body)."""
        self.core.metrics.errors.labels(exc.code.label, "rest").inc()
        # A flood of 429s (or of garbage) must not turn into a flood of log lines.
        self.refusals.log(
            logging.DEBUG if isinstance(exc, RateLimited) else logging.WARNING,
            exc.code,
            "request refused",
            {"path": shown(path, 200), "code": exc.code.label, "reason": exc.message},
        )
        headers: Headers = []
        if isinstance(exc, RateLimited):
            headers.append((b"retry-after", b"%d" % max(1, math.ceil(exc.retry_after_s))))
        return exc.code.http_status, headers, oip_rest.error_body(exc.message)


def create_rest_app(
    core: GatewayCore, max_body_bytes: int, *, access_log: bool = False
) -> GatewayHttp:
    return GatewayHttp(core, max_body_bytes, access_log=access_log)


def _infer_target(path: str) -> tuple[str, str | None]:
    """``/v2/models/{name}[/versions/{version}]/infer`` -> (name, version)."""
    parts = path[len(_MODELS) : -len("/infer")].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
        return parts[0], parts[2]
    raise RouteNotFound(f"no such path {shown(path, 200)!r}")


def _header_lookup(headers: dict[bytes, bytes]) -> HeaderLookup:
    def lookup(name: str) -> str | None:
        value = headers.get(name.lower().encode("latin-1"))
        return None if value is None else value.decode("latin-1")

    return lookup


def _echo_id(scope: Scope) -> Headers:
    """The caller's ``x-request-id``, echoed so it can match answers to requests."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            return [(b"x-request-id", value[:128])]
    return []


async def _reply(
    send: Send, status: int, body: bytes, content_type: bytes, headers: Headers
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            # With a length, uvicorn need not chunk the body.
            "headers": [
                (b"content-type", content_type),
                (b"content-length", b"%d" % len(body)),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _logged(scope: Scope, send: Send) -> Send:
    """``send`` that writes one access-log line when the response starts (opt-in: a line
    per request costs about as much as the model on a small one)."""
    started = time.perf_counter()

    async def logging_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = dict(scope["headers"])
            trace = headers.get(b"traceparent", b"").decode("latin-1")
            access_log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"][:200],
                    "status": message["status"],
                    "ms": round((time.perf_counter() - started) * 1e3, 3),
                    "request_id": headers.get(b"x-request-id", b"").decode("latin-1")[:128],
                    "trace_id": trace.split("-")[1] if trace.count("-") >= 3 else None,
                },
            )
        await send(message)

    return logging_send
