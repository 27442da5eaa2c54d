"""Load for ``edgeserve bench peers`` from generators written in C: wrk and h2load.

REST (JSON, and the binary tensor extension) goes through ``wrk`` with one thread and
keep-alive connections; a Lua script rendered here posts the same body on every request.
gRPC goes through ``h2load``, which posts a length-prefixed gRPC frame read from a file
(``-c N -m 1``: N HTTP/2 connections with one stream each, like wrk's N connections).
Both run closed loop: concurrency N means N requests in flight. One wrk thread answered
about 85k req/s (of cheap 404s) on the two-core development box, far above any contender
here, so the client's ceiling is not what the figures show.

What each tool can check differs. wrk counts non-2xx answers and socket errors; h2load
sees HTTP statuses but not the ``grpc-status`` trailer, so a gRPC error answered with
HTTP 200 would pass as ok — the harness therefore checks one real answer of every
payload before it times anything. Throughput counts only ok answers.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import struct
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeserve.bench.loadgen import percentile

PROTOCOLS = ("rest-json", "rest-binary", "grpc")
GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"
TOOLS = {"wrk": "wrk", "h2load": "nghttp2-client"}  # executable -> Debian package
TIMEOUT_S = 10
_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


# -- payloads (pure) ------------------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    """One request, byte for byte: path, headers and body (gRPC: the framed message)."""

    protocol: str
    path: str
    headers: dict[str, str]
    body: bytes


def json_body(row: npt.NDArray[np.float32]) -> bytes:
    """OIP v2 JSON: one FP32 ``input`` tensor of shape [1, features]."""
    tensor = {"name": "input", "shape": [1, row.size], "datatype": "FP32"}
    return json.dumps({"inputs": [{**tensor, "data": row.ravel().tolist()}]}).encode()


def binary_body(row: npt.NDArray[np.float32]) -> tuple[bytes, int]:
    """The OIP binary tensor extension, asking for binary ``logits``: (body, header length)."""
    raw = row.astype("<f4").tobytes()
    tensor = {"name": "input", "shape": [1, row.size], "datatype": "FP32"}
    header = {
        "inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
    }
    text = json.dumps(header).encode()
    return text + raw, len(text)


def grpc_message(model: str, row: npt.NDArray[np.float32]) -> bytes:
    """A serialized ``ModelInferRequest`` with the tensor in ``raw_input_contents``."""
    from edgeserve.wire.proto import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=[1, row.size])
    request.raw_input_contents.append(row.astype("<f4").tobytes())
    return bytes(request.SerializeToString())


def grpc_frame(message: bytes) -> bytes:
    """gRPC's length-prefixed message: not compressed, 4-byte big-endian length."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def payloads(model: str, row: npt.NDArray[np.float32], key: str) -> dict[str, Payload]:
    """The same digit in each protocol; every contender gets the key (peers ignore it)."""
    auth = {"Authorization": f"Bearer {key}"}
    path = f"/v2/models/{model}/infer"
    body, header_length = binary_body(row)
    binary_headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(header_length),
    }
    grpc_headers = {"content-type": "application/grpc", "te": "trailers"}
    return {
        "rest-json": Payload(
            "rest-json", path, {**auth, "Content-Type": "application/json"}, json_body(row)
        ),
        "rest-binary": Payload("rest-binary", path, {**auth, **binary_headers}, body),
        "grpc": Payload(
            "grpc",
            GRPC_PATH,
            {"authorization": auth["Authorization"], **grpc_headers},
            grpc_frame(grpc_message(model, row)),
        ),
    }


def lua_string(data: bytes) -> str:
    """``data`` as a double-quoted Lua literal; other than printable ASCII as ``\\ddd``."""
    printable = set(range(0x20, 0x7F)) - {ord('"'), ord("\\")}
    return '"' + "".join(chr(b) if b in printable else f"\\{b:03d}" for b in data) + '"'


def render_lua(payload: Payload) -> str:
    """A wrk script that posts ``payload`` on every request of every connection."""
    lines = ['wrk.method = "POST"', f"wrk.body = {lua_string(payload.body)}"]
    for name, value in payload.headers.items():
        lines.append(f"wrk.headers[{lua_string(name.encode())}] = {lua_string(value.encode())}")
    return "\n".join(lines) + "\n"


# -- results (pure) -------------------------------------------------------------------------


@dataclass
class LoadResult:
    """One timed run: ok answers per second and latency percentiles, plus what failed."""

    ok_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    requests: int
    duration_s: float
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return self.requests > 0 and not any(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _seconds(number: str, unit: str) -> float:
    return float(number) * _UNITS_S[unit]


def parse_wrk(text: str) -> LoadResult:
    """Read wrk's ``--latency`` report; raises ValueError when it is not one."""
    finished = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h),", text)
    if finished is None:
        raise ValueError(f"not a wrk report: {text[-300:]!r}")
    requests, duration = int(finished[1]), _seconds(finished[2], finished[3])
    quantiles = {
        int(m[1]): _seconds(m[2], m[3]) * 1e3
        for m in re.finditer(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.MULTILINE)
    }
    errors: dict[str, int] = {}
    if socket := re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        errors = {
            k: int(v)
            for k, v in zip(("connect", "read", "write", "timeout"), socket.groups(), strict=True)
        }
    if status := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        errors["non_2xx"] = int(status[1])
    ok = requests - errors.get("non_2xx", 0)
    has_latency = requests > 0 and 50 in quantiles and 99 in quantiles
    return LoadResult(
        ok_per_s=round(ok / duration, 2),
        p50_ms=round(quantiles[50], 3) if has_latency else None,
        p99_ms=round(quantiles[99], 3) if has_latency else None,
        requests=requests,
        duration_s=duration,
        errors={k: v for k, v in errors.items() if v},
    )


def parse_h2load(stdout: str, log: str, duration_s: float) -> LoadResult:
    """h2load's summary line for failures, its ``--log-file`` for per-request latency."""
    counts = re.search(r"(\d+) failed, (\d+) errored, (\d+) timeout", stdout)
    if counts is None:
        raise ValueError(f"not an h2load report: {stdout[-300:]!r}")
    rows = [line.split("\t") for line in log.splitlines() if line.strip()]
    latencies = [int(r[2]) / 1e3 for r in rows if r[1] == "200"]
    errors = dict(zip(("failed", "errored", "timeout"), map(int, counts.groups()), strict=True))
    errors["non_200"] = len(rows) - len(latencies)
    return LoadResult(
        ok_per_s=round(len(latencies) / duration_s, 2),
        p50_ms=round(percentile(latencies, 50), 3) if latencies else None,
        p99_ms=round(percentile(latencies, 99), 3) if latencies else None,
        requests=len(rows),
        duration_s=duration_s,
        errors={k: v for k, v in errors.items() if v},
    )


# -- running the tools ----------------------------------------------------------------------


def missing_tools() -> dict[str, str]:
    """Executables not on PATH, each with the Debian package that has it."""
    return {tool: package for tool, package in TOOLS.items() if shutil.which(tool) is None}


def run_load(
    payload: Payload, address: str, concurrency: int, seconds: int, work: Path
) -> LoadResult:
    """One closed-loop run of ``seconds`` at ``concurrency`` against ``host:port``."""
    if payload.protocol == "grpc":
        return _run_h2load(payload, address, concurrency, seconds, work)
    return _run_wrk(payload, address, concurrency, seconds, work)


def _run_wrk(
    payload: Payload, address: str, concurrency: int, seconds: int, work: Path
) -> LoadResult:
    script = work / f"{payload.protocol}.lua"
    script.write_text(render_lua(payload), encoding="latin-1")
    argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", f"--timeout={TIMEOUT_S}s"]
    argv += ["--latency", "-s", str(script), f"http://{address}{payload.path}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with {done.returncode}: {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def _run_h2load(
    payload: Payload, address: str, concurrency: int, seconds: int, work: Path
) -> LoadResult:
    frame, log = work / "grpc.bin", work / "h2load.log"
    frame.write_bytes(payload.body)
    log.unlink(missing_ok=True)
    argv = ["h2load", "-t1", f"-c{concurrency}", "-m1", f"-D{seconds}s", f"-d{frame}"]
    argv += [f"--log-file={log}", *(f"-H{k}: {v}" for k, v in payload.headers.items())]
    argv.append(f"http://{address}{payload.path}")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0 or not log.exists():
        raise RuntimeError(f"h2load exited with {done.returncode}: {done.stderr or done.stdout}")
    return parse_h2load(done.stdout, log.read_text(), float(seconds))


# -- checking one answer --------------------------------------------------------------------


def answer_logits(payload: Payload, address: str) -> npt.NDArray[np.float32]:
    """Send ``payload`` once from Python and decode the ``logits`` the server answers."""
    if payload.protocol == "grpc":
        return _grpc_logits(payload, address)
    connection = http.client.HTTPConnection(address, timeout=TIMEOUT_S)
    try:
        connection.request("POST", payload.path, payload.body, payload.headers)
        reply = connection.getresponse()
        body, length = reply.read(), reply.getheader("Inference-Header-Content-Length")
    finally:
        connection.close()
    if reply.status != 200:
        raise RuntimeError(f"{payload.protocol} answered {reply.status}: {body[:300]!r}")
    header = json.loads(body[: int(length)] if length else body)
    output = header["outputs"][0]
    if length:
        return np.frombuffer(body[int(length) :], "<f4").reshape(output["shape"])
    return np.asarray(output["data"], np.float32).reshape(output["shape"])


def _grpc_logits(payload: Payload, address: str) -> npt.NDArray[np.float32]:
    import grpc

    from edgeserve.wire.proto import grpc_service_pb2 as pb

    metadata = [(k, v) for k, v in payload.headers.items() if k == "authorization"]
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(
            GRPC_PATH, response_deserializer=pb.ModelInferResponse.FromString
        )
        reply = call(payload.body[5:], metadata=metadata, timeout=TIMEOUT_S)
    output = reply.outputs[0]
    if reply.raw_output_contents:
        return np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(list(output.shape))
    return np.asarray(output.contents.fp32_contents, np.float32).reshape(list(output.shape))
