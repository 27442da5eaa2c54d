"""``edgeserve bench grpc-doors``: which gRPC server the gateway's door should stand on.

The gateway's gRPC door is ``grpc.aio`` on the event loop that also runs the batchers.
The alternative is grpcio's synchronous server, whose handlers run on a thread pool:
cheaper per call in grpcio's own machinery, but every request must then cross from a
pool thread into the event loop (and back) to reach the batcher. This measures the two
servers alone, each answering ``ModelInfer`` for digits-cloud with the same conversions
(``oip_grpc``) and one ``session.run`` per call, no batching, no authentication, so that
only the door differs; h2load loads each in turn (interleaved rounds, medians), and the
``sync + loop hop`` contender adds the hop the gateway would need, measured, not assumed.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import statistics
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeserve.artifacts import packaged_artifacts
from edgeserve.bench.peers_load import answer_logits, payloads, run_load
from edgeserve.processes import ServiceProcess, free_port
from edgeserve.wire import oip_grpc
from edgeserve.wire.proto import grpc_service_pb2 as pb
from edgeserve.wire.tensors import InferResponse, InferTensor

DOORS = ("aio", "sync", "sync + loop hop")
MODEL = "digits-cloud"


def _session() -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    path = packaged_artifacts() / f"{MODEL}.onnx"
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _answer(session: Any, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    infer = oip_grpc.request_from_proto(request)
    logits = session.run(["logits"], {"input": infer.inputs[0].data})[0]
    outputs = [InferTensor.from_numpy("logits", logits)]
    response = InferResponse(MODEL, "1", outputs=outputs, id=infer.id)
    return oip_grpc.response_to_proto(response)


def _handlers(call: Callable[[Any, Any], Any]) -> Any:
    import grpc

    method = grpc.unary_unary_rpc_method_handler(
        call,
        request_deserializer=pb.ModelInferRequest.FromString,
        response_serializer=pb.ModelInferResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": method}
    )


async def _serve_aio(port: int, ready: Callable[[], None]) -> None:
    import grpc

    session, loop = _session(), asyncio.get_running_loop()
    pool = concurrent.futures.ThreadPoolExecutor(2)

    async def model_infer(request: pb.ModelInferRequest, context: Any) -> Any:
        return await loop.run_in_executor(pool, _answer, session, request)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handlers(model_infer),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    ready()
    await server.wait_for_termination()


def _serve_sync(port: int, ready: Callable[[], None], hop: bool) -> None:
    import grpc

    session = _session()
    loop = asyncio.new_event_loop()  # stands for the gateway's loop, where the batchers live
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def on_loop(request: pb.ModelInferRequest) -> Any:
        return _answer(session, request)

    def model_infer(request: pb.ModelInferRequest, context: Any) -> Any:
        if hop:  # what the gateway would pay: into its loop and back, per request
            return asyncio.run_coroutine_threadsafe(on_loop(request), loop).result()
        return _answer(session, request)

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(16))
    server.add_generic_rpc_handlers((_handlers(model_infer),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    ready()
    server.wait_for_termination()


def serve(door: str, port_file: Path) -> None:
    port = free_port()

    def ready() -> None:
        port_file.write_text(json.dumps({"grpc": port}))

    if door == "aio":
        asyncio.run(_serve_aio(port, ready))
    else:
        _serve_sync(port, ready, hop=door == "sync + loop hop")


def run_grpc_doors_benchmark(
    out: Path, seconds: int = 3, rounds: int = 3, concurrency: tuple[int, ...] = (1, 32, 64)
) -> dict[str, Any]:
    """Each door in its own process under h2load; prints a table, writes results.json."""
    from rich.console import Console
    from rich.table import Table

    from models.data import load_split

    console = Console(width=None if sys.stdout.isatty() else 140)
    row = np.asarray(load_split(packaged_artifacts(), "test")[0][:1], np.float32)
    payload = payloads(MODEL, row, "unused")["grpc"]
    samples: dict[tuple[str, int], list[Any]] = {}
    with tempfile.TemporaryDirectory(prefix="edgeserve-grpc-doors-") as tmp:
        work = Path(tmp)
        servers = {door: _start(door, work) for door in DOORS}
        try:
            # h2load cannot read gRPC's status trailer: check one real answer per door first.
            expected = _session().run(["logits"], {"input": row})[0]
            for door, server in servers.items():
                answer = answer_logits(payload, f"127.0.0.1:{server.ports['grpc']}")
                if not np.allclose(answer, expected, atol=1e-5):
                    raise RuntimeError(f"the {door} door answered wrong logits")
            for r in range(rounds):
                for c in concurrency:
                    for door in DOORS[r % 3 :] + DOORS[: r % 3]:
                        address = f"127.0.0.1:{servers[door].ports['grpc']}"
                        result = run_load(payload, address, c, seconds, work)
                        samples.setdefault((door, c), []).append(result)
        finally:
            for server in servers.values():
                server.stop()
    rows = {
        f"{door} c={c}": {
            "req_per_s": statistics.median(r.ok_per_s for r in runs),
            "p50_ms": statistics.median(r.p50_ms or 0.0 for r in runs),
            "p99_ms": statistics.median(r.p99_ms or 0.0 for r in runs),
            "errors": sum(sum(r.errors.values()) for r in runs),
        }
        for (door, c), runs in samples.items()
    }
    table = Table(title=f"gRPC doors, ModelInfer {MODEL}, h2load, medians of {rounds} rounds")
    for column in ("door, concurrency", "req/s", "p50 ms", "p99 ms", "errors"):
        table.add_column(column, justify="left" if column.startswith("door") else "right")
    for name, figures in sorted(rows.items(), key=lambda item: item[0]):
        table.add_row(name, f"{figures['req_per_s']:,.0f}", f"{figures['p50_ms']:.2f}",
                      f"{figures['p99_ms']:.2f}", str(figures["errors"]))  # fmt: skip
    console.print(table)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"seconds": seconds, "rounds": rounds, "results": rows}
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def _start(door: str, work: Path) -> ServiceProcess:
    port_file = work / f"{door.replace(' ', '-')}.port"
    argv = [sys.executable, "-m", "edgeserve.bench.grpc_doors", door, str(port_file)]
    process = ServiceProcess(argv, port_file, log_file=port_file.with_suffix(".log"))
    process.start(60)
    return process


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="serve one gRPC door for the benchmark")
    parser.add_argument("door", choices=DOORS)
    parser.add_argument("port_file", type=Path)
    arguments = parser.parse_args()
    serve(arguments.door, arguments.port_file)
