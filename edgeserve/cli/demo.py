"""``edgeserve demo``: the whole system on one machine, each capability as it lands.

Today: an edge agent as a real process serving the int8 ONNX and the TFLite digit
models with no network, the held-out test digits sent through its OIP v2 REST API,
cache hits on repeated inputs, bad inputs refused with precise errors while the agent
keeps serving; then the cloud gateway as a second process, with two tenants, the
cloud model answering concurrent clients in dynamic batches, and its refusals (401,
403, 404, 429 with Retry-After); and a clean SIGTERM shutdown of both.
"""

from __future__ import annotations

import json
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

from edgeserve.cli.demo_cloud import show_cloud, start_gateway
from edgeserve.client import OipError, OipHttpClient
from edgeserve.edge_agent.core import packaged_artifacts
from edgeserve.models.data import load_split
from edgeserve.processes import agent_process

DEMO_MODELS = ["digits-edge", "digits-edge-tflite"]
console = Console()


def run_demo(requests: int) -> int:
    x, y = load_split(packaged_artifacts(), "test")
    if requests:
        x, y = x[:requests], y[:requests]
    with tempfile.TemporaryDirectory(prefix="edgeserve-demo-") as tmp:
        workdir = Path(tmp)
        agent = agent_process(
            workdir, models=json.dumps(DEMO_MODELS), device_id="demo-device-1"
        )
        console.rule("[bold]edgeserve demo")
        started = time.perf_counter()
        port = agent.start()
        console.print(
            f"edge agent pid {agent.pid} ready on 127.0.0.1:{port} in "
            f"{time.perf_counter() - started:.1f}s, offline, serving {', '.join(DEMO_MODELS)}"
        )
        gateway = None
        try:
            with OipHttpClient(f"http://127.0.0.1:{port}") as client:
                _local_answers(client, x, y)
                _cache_hits(client, x)
                _bad_inputs(client, x)
                _metrics(client)
            gateway, keys = start_gateway(workdir)
            show_cloud(console, gateway, keys, x, y)
        finally:
            codes = {"agent": agent.stop()}
            if gateway is not None:
                codes["gateway"] = gateway.stop()
        console.print(f"stopped on SIGTERM, exit codes: {codes}")
        return 0 if not any(codes.values()) else 1


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
