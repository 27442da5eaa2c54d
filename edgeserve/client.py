"""A small synchronous OIP v2 REST client for our CLI, demo, benchmarks and tests.

Stock clients (tritonclient, the KServe SDK) work against our servers too; this one
exists so the project's own tools need nothing beyond ``httpx`` and the ``wire`` codec.
"""

from __future__ import annotations

import re
import socket
from types import TracebackType
from typing import Any

import httpx
import numpy.typing as npt

from edgeserve.wire import oip_rest
from edgeserve.wire.tensors import InferRequest, InferResponse, InferTensor, RequestedOutput

NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class OipError(Exception):
    """An error answer from an OIP server: the HTTP status and the server's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class OipHttpClient:
    def __init__(
        self,
        base_url: str,
        timeout: float = 10.0,
        headers: dict[str, str] | None = None,
        unix_socket: str | None = None,
    ) -> None:
        """``unix_socket``: talk to an agent over its unix socket (``base_url`` then only
        names the host in requests) — it answers there whatever the network does."""
        if unix_socket is not None:
            transport = httpx.HTTPTransport(uds=unix_socket)
        else:
            # httpx writes headers and body separately; without TCP_NODELAY, Nagle's
            # algorithm meets the server's delayed ACK and every request waits ~40 ms.
            transport = httpx.HTTPTransport(socket_options=[NODELAY])
        self._http = httpx.Client(
            base_url=base_url, timeout=timeout, transport=transport, headers=headers
        )

    def __enter__(self) -> OipHttpClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def live(self) -> bool:
        return self._http.get("/v2/health/live").status_code == 200

    def ready(self) -> bool:
        return self._http.get("/v2/health/ready").status_code == 200

    def metrics(self) -> str:
        """The server's Prometheus exposition text."""
        return self._http.get("/metrics").text

    def metric(self, sample: str) -> float:
        """One sample of ``/metrics`` by its exposition name with labels, e.g.
        ``edgeserve_agent_breaker_open`` or ``foo_total{code="x"}``; 0 when absent."""
        return metric_value(self.metrics(), sample)

    def router_policy(self, model: str) -> dict[str, Any] | None:
        """The agent's routing policy for ``model`` (an edgeserve extension)."""
        reply = self._http.get(f"/v2/models/{model}/router")
        if reply.status_code != 200:
            raise OipError(reply.status_code, _error_message(reply))
        policy: dict[str, Any] | None = reply.json()
        return policy

    def set_router_policy(self, model: str, policy: dict[str, Any] | None) -> None:
        """Override the routing policy at run time; ``None`` restores the card's."""
        path = f"/v2/models/{model}/router"
        reply = self._http.delete(path) if policy is None else self._http.put(path, json=policy)
        if reply.status_code != 200:
            raise OipError(reply.status_code, _error_message(reply))

    def model_metadata(self, model: str) -> dict[str, Any]:
        return self._json(self._http.get(f"/v2/models/{model}"))

    def infer(
        self,
        model: str,
        inputs: dict[str, npt.NDArray[Any]],
        *,
        version: str | None = None,
        binary: bool = True,
        parameters: dict[str, Any] | None = None,
    ) -> InferResponse:
        request = InferRequest(
            model_name=model,
            inputs=[InferTensor.from_numpy(name, array) for name, array in inputs.items()],
            parameters=dict(parameters or {}),
        )
        if binary:
            request.parameters["binary_data_output"] = True
        body, header_length = oip_rest.encode_request(request, binary=binary)
        headers = {"Content-Type": "application/octet-stream" if binary else "application/json"}
        if header_length is not None:
            headers["Inference-Header-Content-Length"] = str(header_length)
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        reply = self._http.post(path, content=body, headers=headers)
        if reply.status_code != 200:
            raise OipError(reply.status_code, _error_message(reply))
        length = reply.headers.get("Inference-Header-Content-Length")
        return oip_rest.decode_response(reply.content, int(length) if length else None)

    def _json(self, reply: httpx.Response) -> dict[str, Any]:
        if reply.status_code != 200:
            raise OipError(reply.status_code, _error_message(reply))
        document: dict[str, Any] = reply.json()
        return document


def metric_value(exposition: str, sample: str) -> float:
    """The value of ``sample`` in Prometheus exposition text, or 0 when it is absent."""
    match = re.search(rf"^{re.escape(sample)} ([0-9.e+-]+)$", exposition, re.M)
    return float(match.group(1)) if match else 0.0


def _error_message(reply: httpx.Response) -> str:
    try:
        return str(reply.json().get("error", reply.text))
    except ValueError:
        return reply.text


__all__ = ["OipError", "OipHttpClient", "RequestedOutput", "metric_value"]
