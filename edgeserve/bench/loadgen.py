"""A load generator that runs as its own process: ``python -m edgeserve.bench.loadgen``.

It drives one gateway model over gRPC (``grpc.aio`` with our stub), REST JSON or REST
binary (a minimal asyncio HTTP/1.1 keep-alive client sending pre-built request bytes),
and writes a JSON summary: ok throughput, latency percentiles of ok requests, and counts
by outcome (``ok``, ``http_<status>``, ``grpc_<CODE>``, ``timeout``, ``error_<kind>``).

Closed loop (no ``--rate``): ``--concurrency`` workers each send back to back. Open loop
(``--rate R``): request *k* is due at ``start + k/R``; the next free worker takes the
next due slot, sleeps until it is due and sends it, so a slow server makes requests wait
for a worker instead of thinning the schedule. Open-loop latency is measured from the
*due* time (no coordinated omission), and how late sends were is reported as
``send_lag_ms``. Each worker owns one connection (gRPC: one channel each, up to
``--connections``, with a private subchannel pool so they really are separate TCP
connections). The run stops sending at ``--duration``; requests still running after a
grace period are cancelled and counted as ``unfinished``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

TARGETS = ("grpc", "rest-json", "rest-binary")
GRACE_S = 3.0


# -- summarising (pure) -------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation, like numpy's default.

    An empty sequence gives NaN, which ``summarise`` turns into ``None`` in the JSON.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def outcome_counts(outcomes: Iterable[str]) -> dict[str, int]:
    """Counts by outcome, most frequent first (ties by name)."""
    counts = Counter(outcomes)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _ms(seconds: float) -> float | None:
    return None if seconds != seconds else round(seconds * 1e3, 3)  # NaN -> None


def latency_summary(seconds: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p99/mean/max in milliseconds (``None`` when there are no samples)."""
    mean = sum(seconds) / len(seconds) if seconds else float("nan")
    return {
        "p50": _ms(percentile(seconds, 50)),
        "p90": _ms(percentile(seconds, 90)),
        "p99": _ms(percentile(seconds, 99)),
        "mean": _ms(mean),
        "max": _ms(max(seconds) if seconds else float("nan")),
        "n": len(seconds),
    }


@dataclass
class Record:
    """One request: when it was due or sent, how long it took, what came back."""

    sent_at: float
    latency_s: float
    outcome: str
    lag_s: float = 0.0


def summarise(records: Sequence[Record], window_s: float, open_loop: bool) -> dict[str, Any]:
    """Throughput (ok per second of the window), latency of ok requests, outcome counts."""
    if window_s <= 0:
        raise ValueError(f"window must be positive, got {window_s}")
    ok = [r.latency_s for r in records if r.outcome == "ok"]
    summary: dict[str, Any] = {
        "requests": len(records),
        "throughput_ok_per_s": round(len(ok) / window_s, 2),
        "offered_per_s": round(len(records) / window_s, 2),
        "latency_ms": latency_summary(ok),
        "outcomes": outcome_counts(r.outcome for r in records),
    }
    if open_loop:
        lags = [r.lag_s for r in records]
        summary["send_lag_ms"] = {
            "p50": _ms(percentile(lags, 50)),
            "p99": _ms(percentile(lags, 99)),
            "max": _ms(max(lags) if lags else float("nan")),
        }
    return summary


# -- senders --------------------------------------------------------------------------------


class Sender(Protocol):
    async def send(self, connection: int, index: int) -> str: ...

    async def close(self) -> None: ...


def _request(args: argparse.Namespace, seed: int) -> Any:
    from edgeserve.wire.tensors import InferRequest, InferTensor

    rng = np.random.default_rng(seed)
    row = rng.random((args.rows, args.features), dtype=np.float32)
    tensor = InferTensor(args.input_name, "FP32", [args.rows, args.features], row)
    return InferRequest(args.model, [tensor])


class GrpcSender:
    def __init__(self, args: argparse.Namespace, connections: int) -> None:
        import grpc

        from edgeserve.wire import oip_grpc
        from edgeserve.wire.grpc_stubs import inference_stub

        self._grpc = grpc
        options = [("grpc.use_local_subchannel_pool", 1)]
        self._channels = [
            grpc.aio.insecure_channel(args.address, options=options) for _ in range(connections)
        ]
        self._stubs = [inference_stub(c) for c in self._channels]
        self._messages = [oip_grpc.request_to_proto(_request(args, s)) for s in range(16)]
        self._metadata = (("authorization", f"Bearer {args.key}"),)
        self._timeout = args.timeout

    async def send(self, connection: int, index: int) -> str:
        stub = self._stubs[connection % len(self._stubs)]
        message = self._messages[index % len(self._messages)]
        try:
            await stub.ModelInfer(message, metadata=self._metadata, timeout=self._timeout)
        except self._grpc.aio.AioRpcError as exc:
            code = exc.code()
            return (
                "timeout"
                if code == self._grpc.StatusCode.DEADLINE_EXCEEDED
                else f"grpc_{code.name}"
            )
        return "ok"

    async def close(self) -> None:
        await asyncio.gather(*(channel.close() for channel in self._channels))


class HttpConnection:
    """One HTTP/1.1 keep-alive connection that sends pre-built requests; reconnects on close."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, payload: bytes) -> int:
        if self._writer is None or self._reader is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        reader, writer = self._reader, self._writer
        writer.write(payload)
        head = await reader.readuntil(b"\r\n\r\n")
        status, length, close = parse_response_head(head)
        await reader.readexactly(length)
        if close:
            await self.close()
        return status

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def parse_response_head(head: bytes) -> tuple[int, int, bool]:
    """(status, content length, server closes) from an HTTP/1.1 response head."""
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length: int | None = None
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"connection":
            close = value.strip().lower() == b"close"
        elif name == b"transfer-encoding":
            raise ValueError("chunked responses are not supported by this client")
    if length is None:
        raise ValueError("response has no Content-Length")
    return status, length, close


def build_http_request(
    host: str, path: str, key: str, body: bytes, header_length: int | None
) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        f"Authorization: Bearer {key}",
        f"Content-Length: {len(body)}",
        "Content-Type: "
        + ("application/json" if header_length is None else "application/octet-stream"),
    ]
    if header_length is not None:
        lines.append(f"Inference-Header-Content-Length: {header_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class RestSender:
    def __init__(self, args: argparse.Namespace, connections: int) -> None:
        from edgeserve.wire import oip_rest

        host, _, port = args.address.rpartition(":")
        binary = args.target == "rest-binary"
        self._payloads = []
        for seed in range(16):
            request = _request(args, seed)
            if binary:
                request.parameters["binary_data_output"] = True
            body, length = oip_rest.encode_request(request, binary=binary)
            path = f"/v2/models/{args.model}/infer"
            self._payloads.append(build_http_request(args.address, path, args.key, body, length))
        self._connections = [HttpConnection(host, int(port)) for _ in range(connections)]
        self._timeout = args.timeout

    async def send(self, connection: int, index: int) -> str:
        http = self._connections[connection % len(self._connections)]
        try:
            async with asyncio.timeout(self._timeout):
                status = await http.request(self._payloads[index % len(self._payloads)])
        except TimeoutError:
            await http.close()
            return "timeout"
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            await http.close()
            return f"error_{type(exc).__name__}"
        return "ok" if status == 200 else f"http_{status}"

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._connections))


# -- the run --------------------------------------------------------------------------------


@dataclass
class Schedule:
    start: float
    end: float
    rate: float | None
    next_slot: int = 0
    records: list[Record] = field(default_factory=list)


async def _worker(sender: Sender, connection: int, schedule: Schedule) -> None:
    loop = asyncio.get_running_loop()
    while True:
        index = schedule.next_slot
        schedule.next_slot += 1
        if schedule.rate is None:
            due = loop.time()
        else:
            due = schedule.start + index / schedule.rate
            if due - loop.time() > 0:
                await asyncio.sleep(due - loop.time())
        if due >= schedule.end:
            return
        sent = loop.time()
        outcome = await sender.send(connection, index)
        schedule.records.append(Record(due, loop.time() - due, outcome, sent - due))


def _sender(args: argparse.Namespace) -> Sender:
    connections = args.connections or args.concurrency
    if args.target == "grpc":
        return GrpcSender(args, connections)
    return RestSender(args, connections)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the load described by the parsed command line; the JSON summary."""
    sender = _sender(args)
    loop = asyncio.get_running_loop()
    start = loop.time()
    measured_from = start + args.warmup
    schedule = Schedule(start, measured_from + args.duration, args.rate)
    cpu_before = _cpu_seconds()
    workers = [asyncio.create_task(_worker(sender, w, schedule)) for w in range(args.concurrency)]
    done, pending = await asyncio.wait(workers, timeout=args.warmup + args.duration + GRACE_S)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await sender.close()
    for task in done:
        task.result()  # a bug in a worker must not pass silently
    records = [r for r in schedule.records if r.sent_at >= measured_from]
    records += [Record(schedule.end, 0.0, "unfinished")] * len(pending)
    summary = summarise(records, args.duration, open_loop=args.rate is not None)
    summary["client_cpu_s"] = round(_cpu_seconds() - cpu_before, 3)
    return {**_settings(args), **summary}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("target", "model", "concurrency", "connections", "rate", "rows", "duration", "warmup")
    settings = {k: getattr(args, k) for k in keys}
    settings["connections"] = args.connections or args.concurrency
    return settings


def command(
    target: str, address: str, model: str, key: str, out: Path, **options: float | int
) -> list[str]:
    """The argv that runs this load generator as a child process of this interpreter."""
    argv = [sys.executable, "-m", "edgeserve.bench.loadgen", "--target", target]
    argv += ["--address", address, "--model", model, "--key", key, "--out", str(out)]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m edgeserve.bench.loadgen", description=__doc__)
    parser.add_argument("--target", choices=TARGETS, required=True)
    parser.add_argument("--address", required=True, help="host:port of the front door")
    parser.add_argument("--model", required=True)
    parser.add_argument("--key", required=True, help="API key (sent as Bearer)")
    parser.add_argument("--concurrency", type=int, default=1, help="workers (closed loop)")
    parser.add_argument("--connections", type=int, default=0, help="default: one per worker")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=0.5, help="unrecorded seconds first")
    parser.add_argument("--rate", type=float, default=None, help="open loop: requests/s")
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--input-name", default="input")
    parser.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    parser.add_argument("--out", type=Path, default=None, help="JSON summary (default stdout)")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.duration <= 0 or (args.rate is not None and args.rate <= 0):
        parser.error("concurrency >= 1, duration > 0 and rate > 0 are required")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
