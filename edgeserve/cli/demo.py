"""``edgeserve demo``: the whole system on one machine, each capability as it lands.

Today: a cloud gateway and an edge agent enrolled with it over mTLS, as two real
processes. First the edge alone: the held-out test digits through the agent's OIP v2
REST API with the int8 ONNX and the TFLite model, cache hits on repeated inputs, bad
inputs refused with precise errors while the agent keeps serving. Then the gateway: two
tenants, the cloud model answering concurrent clients in dynamic batches, and its
refusals (401, 403, 404, 429 with Retry-After). Then the cascade: the calibrated router
escalating the least confident digits, the gateway killed mid-run with every answer
still arriving within its budget (degraded), the breaker opening and closing again
when the gateway returns, and a clean SIGTERM shutdown of both. Then a fleet over MQTT
(``demo_fleet``): a broker, the sync service and four enrolled agents come online, their
telemetry is counted centrally, a fine-tuned v2 rolls out as signed deltas stage by
stage, and garbage, a forged manifest and a cross-device publish are refused. Then a
fault drill (``demo_faults``): the broker and an agent killed, nothing lost or corrupted.
Last one turn of the learning loop (``demo_learning``): hard examples of a shifted
stream, a distilled v2 promoted by the sequential gate, a worse v3 halted at the canary.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.panel import Panel
from rich.progress import track
from rich.table import Table

from edgeserve.artifacts import packaged_artifacts
from edgeserve.cli.demo_cascade import show_cascade
from edgeserve.cli.demo_cloud import show_cloud
from edgeserve.cli.demo_fleet import show_fleet
from edgeserve.cli.demo_learning import show_learning
from edgeserve.client import OipError, OipHttpClient
from edgeserve.eval.stack import start_cascade
from edgeserve.processes import free_port
from models.data import load_split

DEMO_MODELS = ["digits-edge", "digits-edge-tflite"]
console = Console()


LOCAL_ONLY = {"score": "max_probability", "threshold": 0.0, "escalation_model": "digits-cloud"}


def run_demo(requests: int) -> int:
    x, y = load_split(packaged_artifacts(), "test")
    if requests:
        x, y = x[:requests], y[:requests]
    with tempfile.TemporaryDirectory(prefix="edgeserve-demo-") as tmp:
        workdir = Path(tmp)
        console.rule("[bold]edgeserve demo")
        started = time.perf_counter()
        stack = start_cascade(
            workdir, models=DEMO_MODELS, mtls_port=free_port(), breaker_reset_s="1"
        )
        ports = stack.gateway.ports
        console.print(
            f"edge agent pid {stack.agent.pid} on 127.0.0.1:{stack.agent.port} serving "
            f"{', '.join(DEMO_MODELS)}; cloud gateway pid {stack.gateway.pid} (REST "
            f":{ports['http']}, gRPC :{ports['grpc']}, device mTLS :{ports['grpc_mtls']}); "
            f"ready in {time.perf_counter() - started:.1f}s"
        )
        try:
            with OipHttpClient(stack.agent_url) as client:
                for model in DEMO_MODELS:  # first the edge alone, as if offline
                    client.set_router_policy(model, LOCAL_ONLY)
                _local_answers(client, x, y)
                _cache_hits(client, x)
                _bad_inputs(client, x)
                _metrics(client)
            show_cloud(console, stack, x, y)
            show_cascade(console, stack, workdir, x, y)
        finally:
            codes = stack.stop()
        console.print(f"stopped on SIGTERM, exit codes: {codes}")
        fleet = show_fleet(console, workdir)
        console.print(f"fleet stopped on SIGTERM, exit codes: {fleet}")
        loop = show_learning(console, workdir)
        console.print(f"learning-loop fleet stopped on SIGTERM, exit codes: {loop}")
        failed = any(codes.values()) or any(fleet.values()) or any(loop.values())
        return 1 if failed else 0


def _local_answers(
    client: OipHttpClient, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]
) -> None:
    console.rule("1. local answers: held-out digits through the agent's OIP v2 API")
    table = Table()
    for column in ("model", "runtime", "requests", "accuracy", "p50 ms", "p99 ms", "mean conf"):
        left = column in ("model", "runtime")
        table.add_column(column, justify="left" if left else "right", no_wrap=left)
    for model in DEMO_MODELS:
        latencies, correct, confidences, runtime = [], 0, [], ""
        for row, label in track(list(zip(x, y, strict=True)), description=model, console=console):
            start = time.perf_counter()
            answer = client.infer(model, {"input": row[None, :]})
            latencies.append(time.perf_counter() - start)
            logits = answer.output("logits").data
            correct += int(np.argmax(logits) == label)
            confidences.append(answer.parameters["confidence"][0])
            runtime = answer.parameters["runtime"]
        p50, p99 = np.percentile(np.array(latencies) * 1e3, [50, 99])
        table.add_row(
            model,
            runtime,
            str(len(x)),
            f"{correct / len(x):.2%}",
            f"{p50:.2f}",
            f"{p99:.2f}",
            f"{np.mean(confidences):.3f}",
        )
    console.print(table)


def _cache_hits(client: OipHttpClient, x: npt.NDArray[np.float32]) -> None:
    console.rule("2. result cache: the same digits again")
    repeat = x[: min(200, len(x))]
    hits = sum(
        bool(client.infer(DEMO_MODELS[0], {"input": row[None, :]}).parameters["cache_hit"])
        for row in repeat
    )
    console.print(f"{hits} of {len(repeat)} repeated requests answered from the cache")


def _bad_inputs(client: OipHttpClient, x: npt.NDArray[np.float32]) -> None:
    console.rule("3. bad input: a precise error each, and the agent keeps serving")
    nan_row = x[:1].copy()
    nan_row[0, 3] = np.nan
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("NaN in the input", DEMO_MODELS[0], {"input": nan_row}),
        ("wrong shape", DEMO_MODELS[0], {"input": x[:1, :32]}),
        ("wrong dtype", DEMO_MODELS[0], {"input": x[:1].astype(np.float64)}),
        ("unknown model", "no-such-model", {"input": x[:1]}),
    ]
    table = Table("case", "status", "error")
    for label, model, inputs in cases:
        try:
            client.infer(model, inputs)
            table.add_row(label, "200", "[red]accepted!")
        except OipError as exc:
            table.add_row(label, str(exc.status), exc.message)
    console.print(table)
    console.print(f"agent still ready: {client.ready()}")


def _metrics(client: OipHttpClient) -> None:
    console.rule("4. what the agent counted (/metrics)")
    text = client.metrics()
    wanted = ("edgeserve_agent_cache_total", "edgeserve_agent_errors_total")
    lines = [line for line in text.splitlines() if line.startswith(wanted)]
    console.print(Panel("\n".join(lines), title="metrics"))
