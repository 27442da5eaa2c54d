"""``edgeserve bench edge``: what the agent adds over the bare runtime, and what int8 buys.

Five comparisons, each interleaved in one run, batch 1, one runtime thread:
agent in-process vs raw ``session.run`` (same int8 model); the router's score (softmax vs
the trust score's k-NN over the card's bank, with and without the rate controller); local
REST round trip vs raw ``session.run``; int8 vs fp32 (the edge MLP and a MobileNetV2-sized
CNN with random weights); ONNX Runtime vs TFLite on the same fp32 MLP.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from edge_agent.config import AgentConfig
from edge_agent.core import AgentCore
from edge_agent.executor import BoundedExecutor
from edge_agent.router import Router
from edge_agent.routing import RateController, decide
from edgeserve.artifacts import packaged_artifacts
from edgeserve.bench.timing import Latencies, interleaved, machine_info
from edgeserve.processes import agent_process
from edgeserve.runtimes import RuntimeOptions
from edgeserve.runtimes.tflite import TFLiteSession
from edgeserve.wire import oip_rest
from edgeserve.wire.model_card import ModelCard
from edgeserve.wire.tensors import InferRequest, InferTensor
from edgeserve.wire.trust import TrustBank
from models.data import load_split

Array = npt.NDArray[Any]
console = Console()


def raw_session(path: Path) -> ort.InferenceSession:
    """A bare ONNX Runtime session with the same options the agent uses."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _agent_core(workdir: Path, models: list[str], cache: bool) -> AgentCore:
    config = AgentConfig(
        state_dir=workdir / ("cache" if cache else "nocache"),
        models=models,
        cache_entries=4096 if cache else 0,
    )
    core = AgentCore.from_config(config)
    core.start()
    return core


def _agent_call(core: AgentCore, model: str, rows: list[Array]) -> Callable[[int], object]:
    def call(i: int) -> object:
        row = rows[i % len(rows)]
        return core.infer(InferRequest(model, [InferTensor("input", "FP32", [1, 64], row)]))

    return call


def _router_cache_hit(core: AgentCore, model: str, row: Array) -> Callable[[int], object]:
    """The agent's cache-hit path: the router answers from its result cache (the one
    owner of cached answers), on an event loop as the API serves it."""
    router = Router(core, BoundedExecutor(1, 16), None, None, "local", 1.0)
    loop = asyncio.new_event_loop()
    request = InferRequest(model, [InferTensor("input", "FP32", [1, 64], row)])
    loop.run_until_complete(router.infer(request))  # fills the cache
    return lambda _: loop.run_until_complete(router.infer(request))


def _ort_call(session: ort.InferenceSession, rows: list[Array]) -> Callable[[int], object]:
    return lambda i: session.run(["logits"], {"input": rows[i % len(rows)]})


def _ratio_row(table: Table, name: str, lat: Latencies, base: Latencies) -> None:
    table.add_row(
        name,
        f"{lat.p50_us:.1f}",
        f"{lat.p99_us:.1f}",
        f"{lat.p50_us - base.p50_us:+.1f}",
        f"{lat.p50_us / base.p50_us:.2f}x",
    )


def _table(title: str, results: dict[str, Latencies], baseline: str) -> Table:
    table = Table(title=title)
    for column in ("contender", "p50 µs", "p99 µs", "Δp50 µs", "p50 ratio"):
        table.add_column(column, justify="left" if column == "contender" else "right")
    for name, lat in results.items():
        _ratio_row(table, name, lat, results[baseline])
    return table


def bench_in_process(
    rows: list[Array], requests: int, workdir: Path, progress: Progress
) -> dict[str, Latencies]:
    session = raw_session(packaged_artifacts() / "digits-edge.onnx")
    core = _agent_core(workdir, ["digits-edge"], cache=False)
    cached = _agent_core(workdir, ["digits-edge"], cache=True)
    hot = rows[:1]
    try:
        return interleaved(
            {
                "raw session.run (int8)": _ort_call(session, rows),
                "agent core.infer, cache off": _agent_call(core, "digits-edge", rows),
                "agent router, cache hit": _router_cache_hit(cached, "digits-edge", hot[0]),
            },
            requests,
            progress=progress,
        )
    finally:
        core.close()
        cached.close()


def bench_router_score(
    rows: list[Array], requests: int, progress: Progress
) -> dict[str, Latencies]:
    """What the router's score adds per request: deciding one row on its logits with the
    softmax score, with the trust score (k-NN over the card's bank), and with the trust
    score under the rate controller, as the agent does after the model has run."""
    artifacts = packaged_artifacts()
    card = ModelCard.load(artifacts / "digits-edge.card.json")
    if card.router is None or card.bank is None:
        raise RuntimeError("the packaged digits-edge card has no router policy or bank")
    bank = TrustBank.from_bytes(
        (artifacts / card.bank.file).read_bytes(), card.bank.sha256, card.bank.k
    )
    session = raw_session(artifacts / "digits-edge.onnx")
    logits = [session.run(["logits"], {"input": row})[0] for row in rows]
    trust = card.router.model_copy(update={"target_kind": "manual"})
    softmax = trust.model_copy(update={"score": "max_probability"})
    held = RateController(0.1, card.router.rate_window or 500, trust.threshold)
    t = card.temperature

    def softmax_call(i: int) -> object:
        return decide(softmax, logits[i % len(rows)], t)

    def trust_call(i: int) -> object:
        return decide(trust, logits[i % len(rows)], t, rows[i % len(rows)], bank)

    def held_call(i: int) -> object:
        return decide(trust, logits[i % len(rows)], t, rows[i % len(rows)], bank, held)

    return interleaved(
        {
            "max-probability score": softmax_call,
            "trust score (k-NN, bank)": trust_call,
            "trust score + rate controller": held_call,
        },
        requests,
        progress=progress,
    )


def bench_rest(
    rows: list[Array], requests: int, workdir: Path, progress: Progress
) -> dict[str, Latencies]:
    session = raw_session(packaged_artifacts() / "digits-edge.onnx")
    agent = agent_process(workdir, name="rest", cache_entries="0", log_level="ERROR")
    port = agent.start()
    connection = http.client.HTTPConnection("127.0.0.1", port)
    bodies = []
    for row in rows:
        request = InferRequest("digits-edge", [InferTensor("input", "FP32", [1, 64], row)])
        request.parameters["binary_data_output"] = True
        bodies.append(oip_rest.encode_request(request, binary=True))

    # The agent's event loop hands every inference to a worker thread and is woken when it
    # is done; this is that round trip alone (a private loop, a no-op job).
    hop = ThreadPoolExecutor(1)
    hop_loop = asyncio.new_event_loop()

    def hop_call(i: int) -> object:
        return hop_loop.run_until_complete(hop_loop.run_in_executor(hop, int))

    def live_call(i: int) -> object:
        connection.request("GET", "/v2/health/live")
        return connection.getresponse().read()

    def rest_call(i: int) -> object:
        body, length = bodies[i % len(bodies)]
        connection.request(
            "POST",
            "/v2/models/digits-edge/infer",
            body,
            {"Inference-Header-Content-Length": str(length)},
        )
        reply = connection.getresponse()
        data = reply.read()
        if reply.status != 200:
            raise RuntimeError(f"agent answered {reply.status}: {data[:200]!r}")
        return data

    try:
        return interleaved(
            {
                "raw session.run (int8)": _ort_call(session, rows),
                "event loop -> thread pool -> event loop, no-op (hop floor)": hop_call,
                "REST GET /v2/health/live (transport floor)": live_call,
                "REST infer round trip (binary, keep-alive)": rest_call,
            },
            requests,
            progress=progress,
        )
    finally:
        hop_loop.close()
        hop.shutdown()
        connection.close()
        agent.stop()


def _accuracy(session: ort.InferenceSession, x: Array, y: Array) -> float:
    logits = session.run(["logits"], {"input": x})[0]
    return float(np.mean(logits.argmax(axis=1) == y))


def bench_int8_edge(
    rows: list[Array], x: Array, y: Array, requests: int, progress: Progress
) -> tuple[dict[str, Latencies], dict[str, float]]:
    fp32 = raw_session(packaged_artifacts() / "digits-edge-fp32.onnx")
    int8 = raw_session(packaged_artifacts() / "digits-edge.onnx")
    latencies = interleaved(
        {"edge MLP fp32": _ort_call(fp32, rows), "edge MLP int8": _ort_call(int8, rows)},
        requests,
        progress=progress,
    )
    accuracy = {"edge MLP fp32": _accuracy(fp32, x, y), "edge MLP int8": _accuracy(int8, x, y)}
    return latencies, accuracy


def bench_int8_mobilenet(
    workdir: Path, requests: int, progress: Progress
) -> tuple[dict[str, Latencies], dict[str, float]]:
    from models.build import build_mobilenet_v2_pair

    fp32_path, int8_path = build_mobilenet_v2_pair(workdir / "mobilenet")
    fp32, int8 = raw_session(fp32_path), raw_session(int8_path)
    name = fp32.get_inputs()[0].name
    out = fp32.get_outputs()[0].name
    rng = np.random.default_rng(0)
    images = [rng.random((1, 3, 224, 224), dtype=np.float32) for _ in range(8)]
    latencies = interleaved(
        {
            "MobileNetV2 fp32": lambda i: fp32.run([out], {name: images[i % 8]}),
            "MobileNetV2 int8": lambda i: int8.run([out], {name: images[i % 8]}),
        },
        requests,
        block=20,
        warmup=5,
        progress=progress,
    )
    batch = np.concatenate(images)
    a = fp32.run([out], {name: batch})[0]
    b = int8.run([out], {name: batch})[0]
    cosine = float(
        np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
    )
    quality = {
        "top-1 agreement int8 vs fp32": float(np.mean(a.argmax(1) == b.argmax(1))),
        "mean cosine of logits": cosine,
    }
    return latencies, quality


def bench_ort_vs_tflite(
    rows: list[Array], x: Array, y: Array, requests: int, workdir: Path, progress: Progress
) -> tuple[dict[str, Latencies], dict[str, float]]:
    artifacts = packaged_artifacts()
    onnx_session = raw_session(artifacts / "digits-edge-fp32.onnx")
    tflite = TFLiteSession(artifacts / "digits-edge-tflite.tflite", RuntimeOptions(threads=1))
    core = _agent_core(workdir / "both", ["digits-edge-fp32", "digits-edge-tflite"], cache=False)
    try:
        latencies = interleaved(
            {
                "raw ONNX Runtime fp32": _ort_call(onnx_session, rows),
                "raw TFLite fp32": lambda i: tflite.run({"input": rows[i % len(rows)]}, ["logits"]),
                "agent ONNX Runtime fp32": _agent_call(core, "digits-edge-fp32", rows),
                "agent TFLite fp32": _agent_call(core, "digits-edge-tflite", rows),
            },
            requests,
            progress=progress,
        )
    finally:
        core.close()
    onnx_top = onnx_session.run(["logits"], {"input": x})[0].argmax(1)
    tflite_top = np.array(
        [tflite.run({"input": row[None]}, ["logits"])["logits"].argmax() for row in x]
    )
    quality = {
        "ONNX accuracy": float(np.mean(onnx_top == y)),
        "TFLite accuracy": float(np.mean(tflite_top == y)),
        "top-1 agreement": float(np.mean(onnx_top == tflite_top)),
    }
    return latencies, quality


class _Report:
    """Prints each comparison as it finishes and collects it for the JSON file and plot."""

    def __init__(self, requests: int) -> None:
        self.document: dict[str, Any] = {
            "machine": machine_info(onnxruntime=ort.__version__),
            "requests": requests,
        }
        self.sections: dict[str, Any] = {}
        self.plots: dict[str, dict[str, Latencies]] = {}

    def add(
        self,
        key: str,
        title: str,
        results: dict[str, Latencies],
        baseline: str,
        quality: dict[str, float] | None = None,
    ) -> None:
        console.print(_table(title, results, baseline))
        section: dict[str, Any] = {"latency": {k: v.summary() for k, v in results.items()}}
        if quality:
            rounded = {k: round(v, 4) for k, v in quality.items()}
            console.print(f"  quality: {json.dumps(rounded)}")
            section["quality"] = rounded
        self.sections[key] = section
        self.plots[key] = results

    def write(self, out: Path) -> None:
        self.document["sections"] = self.sections
        (out / "results.json").write_text(json.dumps(self.document, indent=2) + "\n")
        _plot(self.plots, out / "latency.png")
        console.print(f"wrote {out / 'results.json'} and {out / 'latency.png'}")


def run_edge_benchmark(requests: int, out: Path, mobilenet: bool) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    x, y = load_split(packaged_artifacts(), "test")
    rows = [np.ascontiguousarray(x[i : i + 1]) for i in range(len(x))]
    report = _Report(requests)
    raw = "raw session.run (int8)"
    with (
        tempfile.TemporaryDirectory(prefix="edgeserve-bench-") as tmp,
        Progress(console=console, transient=True) as progress,
    ):
        workdir = Path(tmp)
        results = bench_in_process(rows, requests, workdir, progress)
        report.add("in_process", "agent in-process, int8 MLP batch 1", results, raw)
        results = bench_router_score(rows, requests, progress)
        title = f"router score per request, bank of {_bank_rows()} digits"
        report.add("router_score", title, results, "max-probability score")
        results = bench_rest(rows, requests, workdir, progress)
        report.add("rest", "REST round trip vs session.run", results, raw)
        results, quality = bench_int8_edge(rows, x, y, requests, progress)
        report.add("int8_edge", "int8 vs fp32, edge MLP", results, "edge MLP fp32", quality)
        if mobilenet:
            results, quality = bench_int8_mobilenet(workdir, max(100, requests // 25), progress)
            title = "int8 vs fp32, MobileNetV2 224x224 (random weights)"
            report.add("int8_mobilenet", title, results, "MobileNetV2 fp32", quality)
        results, quality = bench_ort_vs_tflite(rows, x, y, requests, workdir, progress)
        title = "ONNX Runtime vs TFLite, same fp32 MLP"
        report.add("ort_vs_tflite", title, results, "raw ONNX Runtime fp32", quality)
    report.write(out)
    return report.document


def _bank_rows() -> int:
    card = ModelCard.load(packaged_artifacts() / "digits-edge.card.json")
    return card.bank.rows if card.bank is not None else 0


def _plot(groups: dict[str, dict[str, Latencies]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 4.2))
    for axis, (title, results) in zip(np.atleast_1d(axes), groups.items(), strict=True):
        names = list(results)
        p50 = [results[n].p50_us for n in names]
        p99 = [results[n].p99_us for n in names]
        positions = np.arange(len(names))
        axis.bar(positions - 0.2, p50, 0.4, label="p50")
        axis.bar(positions + 0.2, p99, 0.4, label="p99")
        axis.set_xticks(positions, [n.replace(" ", "\n", 2) for n in names], fontsize=7)
        axis.set_ylabel("µs per request (batch 1)")
        axis.set_title(title, fontsize=9)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
