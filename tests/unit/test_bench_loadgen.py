"""The load generator's pure summaries, and one short run against a tiny local HTTP server."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pytest

from edgeserve.bench import loadgen
from edgeserve.bench.loadgen import Record


def test_percentile_matches_numpy_linear_interpolation() -> None:
    values = list(np.random.default_rng(0).random(101) * 10)
    for q in (0, 1, 50, 90, 99, 100):
        assert loadgen.percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert loadgen.percentile([3.0], 99) == 3.0
    assert math.isnan(loadgen.percentile([], 50))
    with pytest.raises(ValueError):
        loadgen.percentile([1.0], 101)


def test_outcome_counts_most_frequent_first() -> None:
    counts = loadgen.outcome_counts(["ok", "http_429", "ok", "grpc_UNAVAILABLE", "http_429", "ok"])
    assert list(counts.items()) == [("ok", 3), ("http_429", 2), ("grpc_UNAVAILABLE", 1)]


def test_summarise_uses_only_ok_latencies_and_the_window() -> None:
    records = [Record(0.0, 0.010, "ok"), Record(0.1, 0.020, "ok"), Record(0.2, 5.0, "http_429")]
    summary = loadgen.summarise(records, window_s=2.0, open_loop=False)
    assert summary["throughput_ok_per_s"] == 1.0
    assert summary["offered_per_s"] == 1.5
    assert summary["latency_ms"]["p50"] == pytest.approx(15.0)
    assert summary["latency_ms"]["max"] == pytest.approx(20.0)
    assert summary["outcomes"] == {"ok": 2, "http_429": 1}
    assert "send_lag_ms" not in summary


def test_summarise_with_no_ok_requests_gives_nulls() -> None:
    summary = loadgen.summarise([Record(0.0, 0.1, "timeout", lag_s=0.5)], 1.0, open_loop=True)
    assert summary["latency_ms"]["p99"] is None
    assert summary["latency_ms"]["n"] == 0
    assert summary["send_lag_ms"]["max"] == 500.0


def test_parse_response_head() -> None:
    head = b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 17\r\nConnection: close\r\n\r\n"
    assert loadgen.parse_response_head(head) == (429, 17, True)
    with pytest.raises(ValueError):
        loadgen.parse_response_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")


def test_command_round_trips_through_the_parser() -> None:
    argv = loadgen.command("grpc", "h:1", "m", "k", Path("o.json"), rate=5)
    args = loadgen.parse_args(argv[3:])
    assert (args.target, args.address, args.rate, args.concurrency) == ("grpc", "h:1", 5.0, 1)


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every other request 429, the rest 200, on one keep-alive connection."""
    served = 0
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            status = b"200 OK" if served % 2 == 0 else b"429 Too Many Requests"
            writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 2\r\n\r\n{}")
            served += 1
    except asyncio.IncompleteReadError:
        pass
    finally:
        writer.close()


@pytest.mark.parametrize("rate", [None, 200.0])
def test_run_against_a_local_server(rate: float | None) -> None:
    async def main() -> dict[str, object]:
        server = await asyncio.start_server(_serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        argv = ["--target", "rest-binary", "--address", f"127.0.0.1:{port}", "--model", "m"]
        argv += ["--key", "k", "--concurrency", "2", "--duration", "0.3", "--warmup", "0.05"]
        argv += [] if rate is None else ["--rate", str(rate)]
        async with server:
            return await loadgen.run(loadgen.parse_args(argv))

    result = asyncio.run(main())
    outcomes = result["outcomes"]
    assert isinstance(outcomes, dict)
    assert set(outcomes) == {"ok", "http_429"}
    assert abs(outcomes["ok"] - outcomes["http_429"]) <= 2
    if rate is not None:
        assert result["offered_per_s"] == pytest.approx(rate, rel=0.1)
