"""``edgeserve bench gateway``: the cloud gateway under load, as a real process on loopback.

A temporary repository holds each model twice (``<name>`` batched, ``<name>-nobatch``
not): the reference ``digits-cloud`` CNN and ``heavy``, an FP32 MLP 64→2048→2048→2048→10
with random weights (~1.4 ms at batch 1 on one thread). Load comes from separate
``edgeserve.bench.loadgen`` processes. Printed as each finishes: cold load to ready;
batching vs none at concurrency 1/8/32/64 (gRPC, closed loop) with the gateway's mean
rows per batch from /metrics; a noisy neighbour flooding at 10x its limit; per-request
overhead of each front door over raw ``session.run``; eviction under a one-model budget.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from edgeserve.artifacts import packaged_artifacts
from edgeserve.bench import loadgen as lg
from edgeserve.bench.gateway_harness import (
    A_LIMIT,
    MODELS,
    QUEUE_DELAY_US,
    Gateway,
    build_repository,
    eviction_budget,
    infer_ms,
    repository_lookup_us,
    running_gateway,
)
from edgeserve.bench.timing import machine_info

console = Console(width=None if sys.stdout.isatty() else 132)
CONCURRENCY = (1, 8, 32, 64)
B_RATE = 50.0


def bench_cold_load(gateway: Gateway, models: list[str]) -> dict[str, Any]:
    """Explicit load (admin, REST) until the model reports ready; then first and warm infer."""
    results: dict[str, Any] = {}
    for model in models:
        started = time.perf_counter()
        status, body = gateway.call("POST", f"/v2/repository/models/{model}/load")
        if status != 200:
            raise RuntimeError(f"loading {model} answered {status}: {body[:200]!r}")
        while gateway.call("GET", f"/v2/models/{model}/ready")[0] != 200:
            time.sleep(0.005)
        ready_ms = (time.perf_counter() - started) * 1e3
        first_ms = infer_ms(gateway, model)[0]
        warm_ms = float(np.median([infer_ms(gateway, model)[0] for _ in range(20)]))
        results[model] = {"load_to_ready_ms": ready_ms, "first_ms": first_ms, "warm_ms": warm_ms}
    rows = [[m, r["load_to_ready_ms"], r["first_ms"], r["warm_ms"]] for m, r in results.items()]
    columns = ["model", "load->ready ms", "first infer ms", "warm infer p50 ms"]
    console.print(table("cold load: explicit load -> ready (REST, fresh gateway)", columns, rows))
    return results


def bench_batching(gateway: Gateway, model: str, seconds: float, work: Path) -> list[Any]:
    """Closed-loop gRPC at each concurrency, batched then not; rows per batch from /metrics."""
    points = []
    for concurrency, name in itertools.product(CONCURRENCY, (model, f"{model}-nobatch")):
        before = gateway.metrics()
        point = gateway.loadgen(
            "grpc", name, work / "run.json", concurrency=concurrency, duration=seconds
        )
        point["mean_rows_per_batch"] = mean_batch(before, gateway.metrics(), name)
        points.append(point)
    console.print(batching_table(model, points))
    return points


def mean_batch(before: dict[Any, float], after: dict[Any, float], model: str) -> float | None:
    """Rows per executed batch between two /metrics snapshots."""
    delta = [
        after.get((f"edgeserve_gateway_batch_size_{k}", model, ""), 0.0)
        - before.get((f"edgeserve_gateway_batch_size_{k}", model, ""), 0.0)
        for k in ("sum", "count")
    ]
    return round(delta[0] / delta[1], 2) if delta[1] else None


def bench_noisy_neighbour(gateway: Gateway, seconds: float, work: Path) -> dict[str, Any]:
    """Tenant B at a modest open-loop rate, alone and while tenant A floods at 10x its limit."""
    b = {"rate": B_RATE, "concurrency": 8, "duration": seconds}
    alone = gateway.loadgen("grpc", "digits-cloud", work / "b1.json", "tenant-b", **b)
    address, key = gateway.address("grpc"), gateway.keys["tenant-a"]
    options = {"rate": 10 * A_LIMIT, "concurrency": 128, "connections": 16, "duration": seconds + 3}
    argv = lg.command("grpc", address, "digits-cloud", key, work / "a.json", **options)
    flood = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(1.5)  # A's process is up and flooding before B's window opens
        shared = gateway.loadgen("grpc", "digits-cloud", work / "b2.json", "tenant-b", **b)
    finally:
        errors = flood.communicate(timeout=seconds + 60)[1]
    if flood.returncode != 0:
        raise RuntimeError(f"flooding loadgen failed: {errors.decode()[-2000:]}")
    a = json.loads((work / "a.json").read_text())
    ratio = round(shared["latency_ms"]["p99"] / alone["latency_ms"]["p99"], 2)
    result = {"b_alone": alone, "b_with_flood": shared, "a_flood": a, "b_p99_ratio": ratio}
    runs = [("B alone", alone), ("B while A floods", shared), ("A flooding (limit 100/s)", a)]
    rows = [
        [n, r["offered_per_s"], r["throughput_ok_per_s"], *_p50_p99(r), r["outcomes"]]
        for n, r in runs
    ]
    columns = ["tenant", "sent/s", "ok/s", "p50 ms", "p99 ms", "outcomes"]
    title = f"noisy neighbour on digits-cloud: B's p99 {ratio:.2f}x alone (goal <= 1.2x)"
    console.print(table(title, columns, rows))
    return result


def _p50_p99(result: dict[str, Any]) -> list[float]:
    return [result["latency_ms"]["p50"], result["latency_ms"]["p99"]]


def bench_overhead(gateway: Gateway, seconds: float, work: Path) -> dict[str, Any]:
    """Concurrency 1, batch 1, digits-cloud-nobatch over each front door vs raw session.run."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(packaged_artifacts() / "digits-cloud.onnx"), options)
    x = np.random.default_rng(0).random((1, 64), dtype=np.float32)
    samples = []
    for _ in range(3000):
        started = time.perf_counter()
        session.run(["logits"], {"input": x})
        samples.append((time.perf_counter() - started) * 1e3)
    p50_ms = lg.percentile(samples, 50)
    results = {"raw session.run": {"p50_ms": p50_ms, "p99_ms": lg.percentile(samples, 99)}}
    results["grpc ServerLive (transport floor)"] = grpc_floor(gateway.address("grpc"))
    for target in ("rest-json", "rest-binary", "grpc"):
        r = gateway.loadgen(target, "digits-cloud-nobatch", work / "o.json", duration=seconds)
        results[target] = {
            "p50_ms": r["latency_ms"]["p50"],
            "p99_ms": r["latency_ms"]["p99"],
            "gateway_cpu_us": r["gateway_cpu_us_per_request"],
        }
    for entry in results.values():
        entry["added_p50_us"] = round((entry["p50_ms"] - p50_ms) * 1e3, 1)
    rows = [
        [n, r["p50_ms"] * 1e3, r["p99_ms"] * 1e3, r["added_p50_us"], r.get("gateway_cpu_us", "-")]
        for n, r in results.items()
    ]
    columns = ["contender", "p50 µs", "p99 µs", "added p50 µs", "gateway CPU µs/req"]
    title = "per-request overhead over raw session.run (digits-cloud, c=1, batch 1, no batching)"
    console.print(table(title, columns, rows))
    return results


def grpc_floor(address: str, calls: int = 3000) -> dict[str, float]:
    """A gRPC round trip through the gateway's server that does no work: the floor under
    every gRPC figure (sync client, one channel, concurrency 1)."""
    import grpc

    from edgeserve.wire.grpc_stubs import inference_stub
    from edgeserve.wire.proto import grpc_service_pb2 as pb

    with grpc.insecure_channel(address) as channel:
        stub = inference_stub(channel)
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            stub.ServerLive(pb.ServerLiveRequest(), timeout=5)
            samples.append((time.perf_counter() - started) * 1e3)
    return {"p50_ms": lg.percentile(samples[100:], 50), "p99_ms": lg.percentile(samples[100:], 99)}


def bench_eviction(gateway: Gateway, budget: int, rounds: int = 6) -> dict[str, Any]:
    """Alternate the models under a one-model budget, then repeat each: all must succeed."""
    requests: list[dict[str, Any]] = []
    sequence = [m for _ in range(rounds) for m in MODELS] + [m for m in MODELS for _ in range(5)]
    for model in sequence:
        before = gateway.log_events()
        ms, status = infer_ms(gateway, model)
        loads = (gateway.log_events() - before)["model loaded"]
        requests.append({"model": model, "status": status, "ms": round(ms, 2), "loads": loads})
    events = gateway.log_events()
    result: dict[str, Any] = {"memory_budget_bytes": budget, "requests": requests}
    result |= {"loads": events["model loaded"], "evictions": events["evicting model"]}
    result["all_ok"] = all(r["status"] == 200 for r in requests)
    rows = []
    for model in MODELS:
        mine = [r for r in requests if r["model"] == model]
        reload = _median([r["ms"] for r in mine if r["loads"]])
        warm = _median([r["ms"] for r in mine if not r["loads"]])
        result[model] = {"reload_p50_ms": reload, "warm_p50_ms": warm}
        rows.append([model, reload, warm, sum(r["status"] == 200 for r in mine), len(mine)])
    title = (
        f"eviction, budget {budget / 2**20:.1f} MiB: {result['loads']} loads, "
        f"{result['evictions']} evictions, every request ok: {result['all_ok']}"
    )
    columns = ["model", "reload request p50 ms", "warm request p50 ms", "ok", "sent"]
    console.print(table(title, columns, rows))
    return result


def _median(values: list[float]) -> float | None:
    return round(float(np.median(values)), 2) if values else None


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    """A rich table; floats with two decimals, dicts as compact JSON."""
    result = Table(title=title)
    for i, column in enumerate(columns):
        result.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        cells = [json.dumps(v) if isinstance(v, dict) else v for v in row]
        result.add_row(*(f"{v:,.2f}" if isinstance(v, float) else str(v) for v in cells))
    return result


def batching_table(model: str, points: list[dict[str, Any]]) -> Table:
    """One row per concurrency: batched vs not, and their ratios."""
    rows = []
    for b, n in zip(points[::2], points[1::2], strict=True):
        ratio = b["throughput_ok_per_s"] / max(n["throughput_ok_per_s"], 1e-9)
        p99 = b["latency_ms"]["p99"] / n["latency_ms"]["p99"]
        cpu = f"{b['gateway_cpu_us_per_request']:.0f} | {n['gateway_cpu_us_per_request']:.0f}"
        rows.append(
            [
                b["concurrency"],
                b["throughput_ok_per_s"],
                n["throughput_ok_per_s"],
                f"{ratio:.2f}x",
                *_p50_p99(b),
                *_p50_p99(n),
                f"{p99:.2f}x",
                b["mean_rows_per_batch"],
                cpu,
            ]
        )
    columns = [
        "conc",
        "req/s batched",
        "req/s none",
        "ratio",
        "p50 ms b",
        "p99 ms b",
        "p50 ms n",
        "p99 ms n",
        "p99 ratio",
        "rows/batch",
        "gw CPU µs/req b | n",
    ]
    return table(f"{model}: dynamic batching vs none (gRPC, closed loop)", columns, rows)


def batching_goal(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Goal: >= 4x throughput at concurrency >= 32 with p99 no worse than without batching."""
    checks = {}
    for b, n in zip(points[::2], points[1::2], strict=True):
        if b["concurrency"] >= 32:
            ratio = b["throughput_ok_per_s"] / max(n["throughput_ok_per_s"], 1e-9)
            p99 = b["latency_ms"]["p99"] / n["latency_ms"]["p99"]
            checks[b["concurrency"]] = {
                "throughput_ratio": round(ratio, 2),
                "p99_ratio": round(p99, 2),
            }
    met = all(c["throughput_ratio"] >= 4 and c["p99_ratio"] <= 1 for c in checks.values())
    return {"met": met, "by_concurrency": checks}


def _machine_info() -> dict[str, Any]:
    import grpc
    import onnxruntime as ort

    return machine_info(onnxruntime=ort.__version__, grpcio=grpc.__version__)


def _plot(document: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(MODELS) + 1, figsize=(16, 8), squeeze=False)
    for column, (model, points) in enumerate(document["batching"].items()):
        for variant, runs in (("batched", points[::2]), ("no batching", points[1::2])):
            x = [r["concurrency"] for r in runs]
            axes[0][column].plot(x, [r["throughput_ok_per_s"] for r in runs], "o-", label=variant)
            axes[1][column].plot(x, [r["latency_ms"]["p99"] for r in runs], "o-", label=variant)
        for row, label in enumerate(("ok requests/s", "p99 latency, ms")):
            axes[row][column].set(xscale="log", xlabel="concurrency (gRPC, closed loop)")
            axes[row][column].set(ylabel=label, title=model)
            axes[row][column].set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY], minor=False)
            axes[row][column].minorticks_off()
            axes[row][column].legend()
    noisy = document["noisy_neighbour"]
    runs = [noisy["b_alone"], noisy["b_with_flood"]]
    for offset, q in ((-0.2, "p50"), (0.2, "p99")):
        axes[0][-1].bar(np.arange(2) + offset, [r["latency_ms"][q] for r in runs], 0.4, label=q)
    axes[0][-1].set_xticks([0, 1], ["B alone", "B while A floods"])
    axes[0][-1].set(
        yscale="log", ylabel="ms (log)", title=f"tenant B, p99 ratio {noisy['b_p99_ratio']:.2f}x"
    )
    axes[0][-1].legend()
    outcomes = noisy["a_flood"]["outcomes"]
    axes[1][-1].bar(list(outcomes), list(outcomes.values()))
    axes[1][-1].set(ylabel="requests", title="tenant A (flooding at 10x) outcomes")
    axes[1][-1].tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(out / "gateway.png", dpi=100)
    plt.close(fig)


def run_gateway_benchmark(
    out: Path, duration_s: float = 5.0, quick: bool = False
) -> dict[str, Any]:
    """Run every comparison, print each as it finishes, write results.json and gateway.png."""
    seconds = min(duration_s, 1.5) if quick else duration_s
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "machine": _machine_info(),
        "seconds_per_point": seconds,
        "queue_delay_us": QUEUE_DELAY_US,
    }
    steps = ["cold load", *(f"batching {m}" for m in MODELS), "noisy neighbour", "overhead",
             "wrong secret"]  # fmt: skip
    with (
        tempfile.TemporaryDirectory(prefix="edgeserve-bench-gw-") as tmp,
        Progress(console=console, transient=True) as progress,
    ):
        work = Path(tmp)
        artifacts = build_repository(work / "models")
        doc["repository_entry_us"] = lookup = round(repository_lookup_us(work / "models"), 1)
        console.print(f"ModelRepository.entry() on this 4-model repository: {lookup:.0f} µs/call")
        task = progress.add_task("gateway benchmark", total=len(steps) + 1)
        # No preloads: the cold-load step measures an explicit load of each model.
        with running_gateway(work, "main", preload="[]") as gateway:
            for step in steps:
                progress.update(task, description=step)
                _step(doc, step, gateway, seconds, work)
                progress.advance(task)
        budget = eviction_budget(artifacts)
        progress.update(task, description="eviction")
        with running_gateway(work, "budget", memory_budget_bytes=str(budget)) as gateway:
            doc["eviction"] = bench_eviction(gateway, budget)
        progress.advance(task)
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    _plot(doc, out)
    console.print(f"wrote {out / 'results.json'} and {out / 'gateway.png'}")
    return doc


def _step(doc: dict[str, Any], step: str, gateway: Gateway, seconds: float, work: Path) -> None:
    if step == "cold load":
        doc["cold_load"] = bench_cold_load(
            gateway, [n for m in MODELS for n in (m, f"{m}-nobatch")]
        )
    elif step.startswith("batching "):
        model = step.removeprefix("batching ")
        points = doc.setdefault("batching", {})[model] = bench_batching(
            gateway, model, seconds, work
        )
        doc.setdefault("batching_goal", {})[model] = goal = batching_goal(points)
        console.print(f"  goal >= 4x req/s at c >= 32 with p99 no worse: {goal}")
        doc.setdefault("batch_size_histogram", {})[model] = histogram = gateway.batch_histogram(
            model
        )
        console.print(f"  gateway /metrics batch sizes for {model} (all runs): {histogram}")
    elif step == "noisy neighbour":
        doc["noisy_neighbour"] = bench_noisy_neighbour(gateway, seconds, work)
    elif step == "overhead":
        doc["overhead"] = bench_overhead(gateway, seconds, work)
    else:
        doc["wrong_secret"] = bench_wrong_secret(gateway, seconds, work)


def bench_wrong_secret(gateway: Gateway, seconds: float, work: Path) -> dict[str, Any]:
    """A real key id with wrong secrets, flooded over REST: the gateway's CPU per refusal,
    beside its CPU per accepted request of the same load generator."""
    key_id = gateway.keys["bench"].split("_")[1]
    gateway.keys["wrong-secret"] = f"es_{key_id}_{'A' * 43}"
    options: dict[str, Any] = {"concurrency": 8, "duration": seconds}
    refused = gateway.loadgen("rest-json", "digits-cloud", work / "ws.json", "wrong-secret",
                              **options)  # fmt: skip
    accepted = gateway.loadgen("rest-json", "digits-cloud", work / "ok.json", **options)
    result = {
        "key_check_us": round(_wrong_secret_check_us(gateway), 2),
        "refused": refused,
        "accepted": accepted,
        "cpu_us_per_refusal": refused["gateway_cpu_us_per_request"],
        "cpu_us_per_accepted": accepted["gateway_cpu_us_per_request"],
    }
    rows = [["wrong secret (401)", refused["throughput_ok_per_s"], refused["outcomes"],
             refused["gateway_cpu_us_per_request"]],
            ["valid key (200)", accepted["throughput_ok_per_s"], accepted["outcomes"],
             accepted["gateway_cpu_us_per_request"]]]  # fmt: skip
    columns = ["requests", "ok/s", "outcomes", "gateway CPU µs/request"]
    title = (f"a valid key id with a wrong secret: the key check {result['key_check_us']:.1f} µs "
             "in process (goal <= 50 µs); whole requests through the gateway")  # fmt: skip
    console.print(table(title, columns, rows))
    return result


def _wrong_secret_check_us(gateway: Gateway, checks: int = 5000) -> float:
    """The gateway's own key check (``Authenticator``, on its tenants database) refusing a
    wrong secret for a real key id, per check: what a flood of them costs beyond HTTP."""
    from cloud_gateway.tenancy import Authenticator, TenantStore
    from edgeserve.wire.errors import Unauthenticated

    with TenantStore(gateway.state_dir / "tenants.db") as store:
        auth = Authenticator(store)
        wrong = f"Bearer {gateway.keys['wrong-secret']}"
        started = time.perf_counter()
        for _ in range(checks):
            with contextlib.suppress(Unauthenticated):
                auth.from_api_key(wrong)
        return (time.perf_counter() - started) / checks * 1e6
