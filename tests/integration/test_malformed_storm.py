"""A seeded storm of malformed requests at every front door: none may get a 5xx, INTERNAL
or UNKNOWN, every refusal is counted, nothing is logged as a traceback or outside the
JSON log, and each server still answers a valid request afterwards.

The doors are real processes: the agent's REST API, and the gateway's REST and gRPC
listeners. Requests are raw HTTP over sockets and raw bytes over a generic gRPC call, so
no client library stands between the garbage and the server (``malformed`` makes them).
"""

from __future__ import annotations

import random
import re
import socket
import time
from collections import Counter
from pathlib import Path

import grpc
import httpx
import orjson
import pytest

from tests.integration import malformed
from tests.integration.malformed import GrpcCase, HttpCase

pytestmark = pytest.mark.integration

SEED = 20240617
PER_DOOR = 1200
AGENT_MODEL = "digits-edge"
CLOUD_MODEL = "digits-cloud"
INFER = "/inference.GRPCInferenceService/"


@pytest.fixture(scope="module")
def row():
    from edgeserve.artifacts import packaged_artifacts
    from models.data import load_split

    return load_split(packaged_artifacts(), "test")[0][0]


@pytest.fixture
def gateway(start_gateway):
    # Limits far above the storm, so every request reaches the codec instead of a 429; one
    # worker, because each worker process counts its own refusals.
    limits = {"rate_per_s": 1e6, "burst": 1e6, "max_in_flight": 1000}
    return start_gateway(tenants={"app": limits}, workers="1")


# -- raw HTTP ---------------------------------------------------------------------------


def _send(port: int, case: HttpCase, model: str, auth: dict[str, str]) -> int | None:
    """The status the server answered, or None when it closed without answering."""
    body = case.body
    length = len(body) if case.length is None else case.length
    headers = {
        "Host": "127.0.0.1",
        "Content-Type": "application/json",
        **auth,
        **case.headers,
        "Content-Length": str(length),
        "Connection": "close",
    }
    head = f"POST /v2/models/{case.model or model}/infer HTTP/1.1\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(head.encode() + body)
        if case.disconnects:
            sock.shutdown(socket.SHUT_WR)
        answer = _read_all(sock)
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", answer)
    return int(match[1]) if match else None


def _read_all(sock: socket.socket) -> bytes:
    parts = []
    try:
        while chunk := sock.recv(65536):
            parts.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(parts)


def _http_storm(port: int, model: str, auth: dict[str, str], row) -> tuple[Counter, int]:
    """Send the seeded REST cases; (statuses by case kind, refusals the server must count)."""
    rng = random.Random(SEED)
    statuses: Counter = Counter()
    refusals = 0
    for _ in range(PER_DOOR):
        case = rng.choice(malformed.HTTP_CASES)(rng, row)
        status = _send(port, case, model, auth)
        statuses[(case.kind, status)] += 1
        if case.disconnects:
            refusals += 1  # nobody hears the answer, but the server counts it
        elif status is not None and status >= 400:
            refusals += 1
    return statuses, refusals


# -- metrics and logs -------------------------------------------------------------------


def _errors(base_url: str, metric: str, protocol: str | None = None) -> int:
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(f"{metric}_total{{") and (
            protocol is None or f'protocol="{protocol}"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def _wait_for_errors(expected: int, read) -> int:
    """Refusals of disconnected clients are counted a moment after the socket closes."""
    deadline = time.monotonic() + 5
    while (seen := read()) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return seen


def _assert_clean_log(log_file: Path, refusal: str | None = None) -> None:
    """No traceback, nothing outside a JSON line (a raw numpy warning, say); and where
    ``refusal`` names the refusal line, the throttle kept the storm to a few of them."""
    refusals = 0
    for line in log_file.read_text(errors="replace").splitlines():
        assert "Traceback" not in line, line[:2000]
        assert line.startswith("{"), f"not a JSON log line: {line[:300]}"
        refusals += orjson.loads(line)["msg"] == refusal
    assert refusals <= 30, f"{refusals} '{refusal}' lines: the storm was not throttled"


def _assert_no_server_errors(statuses: Counter) -> None:
    failed = {key: n for key, n in statuses.items() if key[1] is not None and key[1] >= 500}
    assert not failed, failed


def _valid_json(row) -> bytes:
    tensor = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row.tolist()}
    return orjson.dumps({"inputs": [tensor]})


# -- the storms -------------------------------------------------------------------------


def test_agent_rest_storm(start_agent, row):
    agent = start_agent(models=[AGENT_MODEL])
    base = f"http://127.0.0.1:{agent.port}"
    before = _errors(base, "edgeserve_agent_errors")
    statuses, refusals = _http_storm(agent.port, AGENT_MODEL, {}, row)
    _assert_no_server_errors(statuses)
    read = lambda: _errors(base, "edgeserve_agent_errors") - before  # noqa: E731
    assert _wait_for_errors(refusals, read) == refusals, statuses
    reply = httpx.post(f"{base}/v2/models/{AGENT_MODEL}/infer", content=_valid_json(row))
    assert reply.status_code == 200, reply.text
    agent.stop()
    _assert_clean_log(agent.log_file, "request rejected")


def test_gateway_rest_storm(gateway, row):
    base = gateway.http
    port = gateway.process.ports["http"]
    before = _errors(base, "edgeserve_gateway_errors", "rest")
    statuses, refusals = _http_storm(port, CLOUD_MODEL, gateway.headers("app"), row)
    _assert_no_server_errors(statuses)
    read = lambda: _errors(base, "edgeserve_gateway_errors", "rest") - before  # noqa: E731
    assert _wait_for_errors(refusals, read) == refusals, statuses
    reply = httpx.post(
        f"{base}/v2/models/{CLOUD_MODEL}/infer",
        content=_valid_json(row),
        headers=gateway.headers("app"),
    )
    assert reply.status_code == 200, reply.text
    gateway.process.stop()
    _assert_clean_log(gateway.process.log_file)


def _grpc_call(channel: grpc.Channel, case: GrpcCase, auth) -> grpc.StatusCode:
    call = channel.unary_unary(INFER + case.method)  # no serializers: raw bytes both ways
    try:
        call(case.payload, metadata=auth, timeout=15)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_gateway_grpc_storm(gateway, row):
    auth = (("authorization", f"Bearer {gateway.keys['app']}"),)
    before = _errors(gateway.http, "edgeserve_gateway_errors", "grpc")
    rng = random.Random(SEED)
    codes: Counter = Counter()
    unexpected = []
    with grpc.insecure_channel(gateway.grpc) as channel:
        for _ in range(PER_DOOR):
            case = rng.choice(malformed.GRPC_CASES)(rng, CLOUD_MODEL, row)
            code = _grpc_call(channel, case, auth)
            codes[(case.kind, code.name)] += 1
            if case.expect is not None and code.name not in case.expect:
                unexpected.append((case.kind, code.name))
        valid = malformed.GrpcCase(
            "valid", malformed.infer_message(CLOUD_MODEL, row).SerializeToString()
        )
        assert _grpc_call(channel, valid, auth) == grpc.StatusCode.OK
    failed = {key: n for key, n in codes.items() if key[1] in ("INTERNAL", "UNKNOWN")}
    assert not failed, codes
    assert not unexpected, Counter(unexpected)
    refusals = sum(n for (_, code), n in codes.items() if code != "OK")
    assert _errors(gateway.http, "edgeserve_gateway_errors", "grpc") - before == refusals
    gateway.process.stop()
    _assert_clean_log(gateway.process.log_file, "rpc refused")
