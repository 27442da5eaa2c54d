"""``edgeserve bench peers``: reading real wrk/h2load reports, the payloads, the Lua script.

The reports below were printed by wrk 4.1.0 and h2load 1.52.0 on the development box
(against PyTriton, a 404 route, and a server that closes every connection).
"""

from __future__ import annotations

import json
import shutil
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeserve.bench import peers_load
from edgeserve.bench.peers_report import goal
from edgeserve.wire.proto import grpc_service_pb2 as pb

WRK_PYTRITON = """\
Running 2s test @ http://127.0.0.1:18000/v2/models/digits-cloud/infer
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    21.90ms    5.43ms  50.75ms   71.50%
    Req/Sec     2.91k   450.92     3.63k    70.00%
  Latency Distribution
     50%   21.55ms
     75%   25.14ms
     90%   29.37ms
     99%   34.91ms
  5806 requests in 2.01s, 2.15MB read
Requests/sec:   2895.57
Transfer/sec:      1.07MB
"""

WRK_NOT_FOUND = """\
Running 2s test @ http://127.0.0.1:18000/v2/models/nope/infer
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   510.64us  318.35us   4.25ms   75.92%
    Req/Sec    85.80k     6.42k   93.44k    65.00%
  Latency Distribution
     50%  474.00us
     75%  656.00us
     90%    0.86ms
     99%    1.55ms
  170572 requests in 2.00s, 21.15MB read
  Non-2xx or 3xx responses: 170572
Requests/sec:  85244.27
Transfer/sec:     10.57MB
"""

WRK_CLOSED = """\
Running 1s test @ http://127.0.0.1:18111/
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.00us    0.00us   0.00us    -nan%
    Req/Sec     0.00      0.00     0.00      -nan%
  Latency Distribution
     50%    0.00us
     75%    0.00us
     90%    0.00us
     99%    0.00us
  0 requests in 1.10s, 0.00B read
  Socket errors: connect 0, read 13993, write 0, timeout 0
Requests/sec:      0.00
Transfer/sec:       0.00B
"""

H2LOAD_STDOUT = """\
finished in 2.50s, 2284.50 req/s, 287.94KB/s
requests: 4569 total, 4569 started, 4569 done, 4569 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 4569 2xx, 0 3xx, 0 4xx, 0 5xx
"""
H2LOAD_LOG = (
    "1796396396546747\t200\t26188\n1796396396546833\t200\t26840\n"
    "1796396396546892\t200\t26848\n1796396396546930\t200\t26959\n"
)


def test_parse_wrk_report() -> None:
    result = peers_load.parse_wrk(WRK_PYTRITON)
    assert (result.requests, result.duration_s) == (5806, 2.01)
    assert result.ok_per_s == pytest.approx(5806 / 2.01, abs=0.01)
    assert (result.p50_ms, result.p99_ms) == (21.55, 34.91)
    assert result.errors == {} and result.clean


def test_parse_wrk_counts_non_2xx_out_of_throughput() -> None:
    result = peers_load.parse_wrk(WRK_NOT_FOUND)
    assert result.ok_per_s == 0
    assert result.errors == {"non_2xx": 170572}
    assert result.p50_ms == pytest.approx(0.474)  # microseconds read as such
    assert not result.clean


def test_parse_wrk_socket_errors_and_no_answers() -> None:
    result = peers_load.parse_wrk(WRK_CLOSED)
    assert (result.requests, result.duration_s, result.p99_ms) == (0, 1.1, None)
    assert result.errors == {"read": 13993}
    with pytest.raises(ValueError):
        peers_load.parse_wrk("unable to connect to 127.0.0.1:18009 Connection refused")


def test_parse_h2load_latency_from_its_log() -> None:
    result = peers_load.parse_h2load(H2LOAD_STDOUT, H2LOAD_LOG, duration_s=2.0)
    assert (result.requests, result.ok_per_s) == (4, 2.0)
    assert result.p50_ms == pytest.approx(26.844)
    assert result.errors == {}
    with pytest.raises(ValueError):
        peers_load.parse_h2load("", H2LOAD_LOG, 2.0)


def test_payloads_carry_the_same_row_in_every_protocol() -> None:
    row = (np.arange(64).reshape(1, 64) / 16).astype(np.float32)
    found = peers_load.payloads("heavy", row, "secret")
    document = json.loads(found["rest-json"].body)
    assert document["inputs"][0]["data"] == row.ravel().tolist()
    binary = found["rest-binary"]
    length = int(binary.headers["Inference-Header-Content-Length"])
    assert binary.body[length:] == row.tobytes()
    assert json.loads(binary.body[:length])["outputs"][0]["parameters"]["binary_data"]
    frame = found["grpc"].body
    assert frame[0] == 0 and struct.unpack(">I", frame[1:5])[0] == len(frame) - 5
    message = pb.ModelInferRequest.FromString(frame[5:])
    assert message.model_name == "heavy" and message.raw_input_contents[0] == row.tobytes()
    assert found["grpc"].headers["authorization"] == "Bearer secret"


def test_lua_string_escapes_everything_but_printable_ascii() -> None:
    assert peers_load.lua_string(b'a"\\\x00\n9') == '"a\\034\\092\\000\\0109"'
    script = peers_load.render_lua(peers_load.Payload("rest-json", "/p", {"X-K": "v"}, b"{}"))
    assert script == 'wrk.method = "POST"\nwrk.body = "{}"\nwrk.headers["X-K"] = "v"\n'


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as wrk expects
    seen: list[tuple[dict[str, str], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if not self.seen:
            self.seen.append((dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    seen: list[tuple[dict[str, str], bytes]] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (apt-get install wrk)")
def test_wrk_posts_the_binary_payload_byte_for_byte(
    recorder: tuple[str, list[tuple[dict[str, str], bytes]]], tmp_path: Path
) -> None:
    address, seen = recorder
    row = np.random.default_rng(0).random((1, 64), dtype=np.float32)
    payload = peers_load.payloads("digits-cloud", row, "k")["rest-binary"]
    result = peers_load.run_load(payload, address, concurrency=1, seconds=1, work=tmp_path)
    assert result.clean and result.ok_per_s > 0
    headers, body = seen[0]
    assert body == payload.body
    assert (
        headers["Inference-Header-Content-Length"]
        == payload.headers["Inference-Header-Content-Length"]
    )
    assert headers["Authorization"] == "Bearer k"


def _cell(
    contender: str, protocol: str, c: int, rate: float, p50: float, p99: float
) -> dict[str, Any]:
    return {"contender": contender, "model": "m", "protocol": protocol, "concurrency": c,
            "ok_per_s": rate, "p50_ms": p50, "p99_ms": p99, "errors": {}}  # fmt: skip


def test_goal_needs_every_check_and_both_peers() -> None:
    cells = [
        _cell("gateway", "rest-json", 1, 900, 0.5, 1.0),
        _cell("naive", "rest-json", 1, 800, 0.6, 1.2),
        _cell("gateway", "rest-json", 64, 3000, 10, 20),
        _cell("pytriton", "rest-json", 64, 2000, 15, 25),
    ]
    assert goal(cells, "m", (1, 64))["met"] is True
    slower = [*cells[:3], _cell("pytriton", "rest-json", 64, 2000, 15, 19)]
    assert goal(slower, "m", (1, 64))["met"] is False  # p99 worse than PyTriton's
    assert goal(cells[:3], "m", (1, 64))["met"] is None  # no PyTriton figures: not judged
