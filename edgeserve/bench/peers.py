"""``edgeserve bench peers``: our gateway side by side with what a user would pick instead.

Contenders (``peers_contenders``), each a real process serving the same two ONNX files
(the ``digits-cloud`` CNN and ``heavy``, the random-weight MLP 64→2048→2048→2048→10) with
onnxruntime on CPU, one intra-op thread per session: the gateway (dynamic batching, as
configured by the gateway benchmark's repository); a naive FastAPI app (one uvicorn
process, a sync route, no batching, JSON only); NVIDIA PyTriton (Triton's C++ front doors
and dynamic batcher, ``max_batch_size`` 64, default queue delay, ``@batch`` callable).

Load (``peers_load``) comes from C programs so the client is not what is measured: wrk
for REST JSON and REST binary, h2load for gRPC; one load-generator thread, closed loop,
batch 1, every request the same real test digit. A cell is (model, protocol,
concurrency 1/32/64). Each round visits every cell and, within it, every contender in
turn, the first one rotating, so drift on the box hits all of them alike; the medians of
the rounds are reported (req/s, p50 and p99 each its own median). Before any timing each
contender's answer to each payload is checked against onnxruntime here, and each
(contender, model, protocol) is warmed up for a second.

On this two-core machine nothing is pinned: the load generator (up to a core), the
server being measured and the idle others share both cores, so a server gets about one
core under load. The figures compare servers on the same box; they are not capacities.

The goal judged per model: at c=32/64 the gateway's req/s is at least PyTriton's with
p99 no worse; at c=1 its p50 is no worse than the naive app's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.progress import Progress

from edgeserve.artifacts import packaged_artifacts
from edgeserve.bench.gateway_harness import MODELS, QUEUE_DELAY_US, build_repository
from edgeserve.bench.peers_contenders import Contender, Lineup, running_contenders
from edgeserve.bench.peers_load import (
    PROTOCOLS,
    LoadResult,
    Payload,
    answer_logits,
    missing_tools,
    payloads,
    run_load,
)
from edgeserve.bench.peers_report import GATEWAYS, goal, peers_table, plot_peers
from edgeserve.bench.timing import machine_info

console = Console(width=None if sys.stdout.isatty() else 220)
CONCURRENCY = (1, 32, 64)
QUICK_CONCURRENCY = (1, 64)
WARMUP_S = 1

Key = tuple[str, str, str, int]  # contender, model, protocol, concurrency


class ToolMissing(RuntimeError):
    """wrk is not installed: nothing can be measured."""


@dataclass(frozen=True)
class Plan:
    seconds: int
    rounds: int
    concurrency: tuple[int, ...]
    protocols: tuple[str, ...]

    @property
    def cells(self) -> list[tuple[str, str, int]]:
        return [(m, p, c) for m in MODELS for p in self.protocols for c in self.concurrency]


def make_plan(duration_s: int, rounds: int, quick: bool) -> Plan:
    missing = missing_tools()
    if "wrk" in missing:
        raise ToolMissing("wrk is not installed: apt-get install -y wrk (Debian package wrk)")
    protocols: tuple[str, ...] = PROTOCOLS
    if "h2load" in missing:
        console.print("[yellow]h2load missing (apt-get install -y nghttp2-client): no gRPC")
        protocols = tuple(p for p in PROTOCOLS if p != "grpc")
    if quick:
        return Plan(2, 1, QUICK_CONCURRENCY, protocols)
    return Plan(duration_s, rounds, CONCURRENCY, protocols)


def reference_logits(
    artifacts: dict[str, Path], row: npt.NDArray[np.float32]
) -> dict[str, npt.NDArray[np.float32]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return {
        m: ort.InferenceSession(str(artifacts[m]), options).run(["logits"], {"input": row})[0]
        for m in MODELS
    }


def check_answers(
    lineup: Lineup,
    requests: dict[str, dict[str, Payload]],
    expected: dict[str, npt.NDArray[np.float32]],
) -> tuple[set[tuple[str, str, str]], dict[str, str]]:
    """(contender, model, protocol) that answer right, and why the others are left out."""
    good: set[tuple[str, str, str]] = set()
    left_out: dict[str, str] = {}
    for contender in lineup.contenders:
        for model, by_protocol in requests.items():
            for protocol, payload in by_protocol.items():
                where = f"{contender.name} {model} {protocol}"
                if protocol not in contender.protocols:
                    left_out[where] = "not served (the naive app speaks OIP JSON only)"
                    continue
                try:
                    logits = answer_logits(payload, contender.address(protocol))
                except Exception as exc:  # any failure to answer leaves the cell out, with why
                    left_out[where] = f"{type(exc).__name__}: {str(exc)[:300]}"
                    continue
                if logits.shape != expected[model].shape or not np.allclose(
                    logits, expected[model], rtol=1e-3, atol=1e-3
                ):
                    left_out[where] = f"wrong answer: {logits.ravel()[:4]}..."
                else:
                    good.add((contender.name, model, protocol))
    return good, left_out


def _timed(
    contender: Contender, payload: Payload, concurrency: int, seconds: int, work: Path
) -> LoadResult:
    try:
        return run_load(payload, contender.address(payload.protocol), concurrency, seconds, work)
    except (RuntimeError, ValueError, subprocess.SubprocessError) as exc:
        console.print(f"[red]{contender.name} {payload.protocol} c={concurrency}: {exc}")
        return LoadResult(0.0, None, None, 0, float(seconds), {"load_generator_failed": 1})


Run = tuple[int, Contender, str, str, int]  # round, contender, model, protocol, concurrency


def schedule(lineup: Lineup, good: set[tuple[str, str, str]], plan: Plan) -> list[Run]:
    """Every timed run in order: rounds of cells, in each cell the contenders in turn, the
    first one rotating from cell to cell and round to round."""
    runs: list[Run] = []
    contenders = lineup.contenders
    for r in range(plan.rounds):
        for i, (model, protocol, concurrency) in enumerate(plan.cells):
            shift = (r + i) % max(1, len(contenders))
            for contender in contenders[shift:] + contenders[:shift]:
                if (contender.name, model, protocol) in good:
                    runs.append((r, contender, model, protocol, concurrency))
    return runs


def measure(
    lineup: Lineup,
    requests: dict[str, dict[str, Payload]],
    good: set[tuple[str, str, str]],
    plan: Plan,
    work: Path,
) -> dict[Key, list[LoadResult]]:
    """Warm up each (contender, model, protocol) at the top concurrency, then the rounds."""
    warm = [(c, m, p) for c in lineup.contenders for m in MODELS for p in plan.protocols]
    warm = [(c, m, p) for c, m, p in warm if (c.name, m, p) in good]
    runs = schedule(lineup, good, plan)
    minutes = (len(runs) * (plan.seconds + 0.5) + len(warm) * (WARMUP_S + 0.5)) / 60
    console.print(f"{len(runs)} timed runs of {plan.seconds} s: about {minutes:.0f} min")
    samples: dict[Key, list[LoadResult]] = {}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("warming up", total=len(warm) + len(runs))
        for contender, model, protocol in warm:
            if _alive(contender, lineup):
                _timed(contender, requests[model][protocol], max(plan.concurrency), WARMUP_S, work)
            progress.advance(task)
        for r, contender, model, protocol, concurrency in runs:
            progress.update(task, description=f"round {r + 1}: {model} {protocol} c={concurrency}")
            progress.advance(task)
            if _alive(contender, lineup):
                key = (contender.name, model, protocol, concurrency)
                payload = requests[model][protocol]
                samples.setdefault(key, []).append(
                    _timed(contender, payload, concurrency, plan.seconds, work)
                )
    return samples


def _alive(contender: Contender, lineup: Lineup) -> bool:
    """False once it has exited; the first time, say so with the end of its log."""
    if contender.name in lineup.exited:
        return False
    note = contender.exit_note()
    if note is not None:
        lineup.exited[contender.name] = note
        console.print(f"[red]{note}\n{contender.name}: its remaining runs are left out")
    return note is None


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(float(np.median(present)), 3) if present else None


def summarise(samples: dict[Key, list[LoadResult]]) -> list[dict[str, Any]]:
    """One entry per measured cell and contender: medians over rounds, errors, every round."""
    cells = []
    for (contender, model, protocol, concurrency), results in samples.items():
        errors: dict[str, int] = {}
        for result in results:
            for kind, count in result.errors.items():
                errors[kind] = errors.get(kind, 0) + count
        cells.append(
            {
                "contender": contender,
                "model": model,
                "protocol": protocol,
                "concurrency": concurrency,
                "ok_per_s": _median([r.ok_per_s for r in results]),
                "p50_ms": _median([r.p50_ms for r in results]),
                "p99_ms": _median([r.p99_ms for r in results]),
                "errors": errors,
                "rounds": [r.to_dict() for r in results],
            }
        )
    return cells


def _tool_versions() -> dict[str, str]:
    versions = {}
    for tool, flag in (("wrk", "-v"), ("h2load", "--version")):
        try:
            done = subprocess.run([tool, flag], capture_output=True, text=True, timeout=10)
        except OSError:
            continue
        versions[tool] = (done.stdout or done.stderr).strip().splitlines()[0][:60]
    return versions


def run_peers_benchmark(
    out: Path, duration_s: int = 5, rounds: int = 3, quick: bool = False
) -> dict[str, Any]:
    """Measure every contender, print a table per model, write results.json and peers.png."""
    import onnxruntime as ort

    from models.data import load_split

    plan = make_plan(duration_s, rounds, quick)
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "machine": machine_info(onnxruntime=ort.__version__, **_tool_versions()),
        "settings": {
            "seconds_per_cell": plan.seconds,
            "rounds": plan.rounds,
            "concurrency": list(plan.concurrency),
            "protocols": list(plan.protocols),
            "gateway_queue_delay_us": QUEUE_DELAY_US,
            "pytriton_queue_delay_us": 0,
            "max_batch_size": 64,
        },
    }
    with tempfile.TemporaryDirectory(prefix="edgeserve-bench-peers-") as tmp:
        work = Path(tmp)
        artifacts = build_repository(work / "models")
        row = load_split(packaged_artifacts(), "test")[0][:1]
        expected = reference_logits(artifacts, row)
        with running_contenders(work, artifacts, console.print) as lineup:
            requests = {m: payloads(m, row, lineup.key) for m in MODELS}
            good, doc["left_out"] = check_answers(lineup, requests, expected)
            for where, why in doc["left_out"].items():
                console.print(f"[dim]not measured: {where}: {why}")
            doc["skipped"] = lineup.skipped
            for contender in lineup.contenders:
                doc["machine"].update(contender.versions)
            samples = measure(lineup, requests, good, plan, work)
            doc["exited"] = lineup.exited
    doc["machine"]["loadavg_1m_at_end"] = os.getloadavg()[0]  # was the box busy meanwhile?
    doc["cells"] = summarise(samples)
    doc["goal"] = {
        f"{m} / {g}": goal(doc["cells"], m, plan.concurrency, g) for m in MODELS for g in GATEWAYS
    }
    for model in MODELS:
        console.print(peers_table(doc["cells"], model, plan.protocols, plan.concurrency))
        for gateway in GATEWAYS:
            console.print(doc["goal"][f"{model} / {gateway}"]["summary"])
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    plot_peers(doc["cells"], out / "peers.png", plan.concurrency)
    console.print(f"wrote {out / 'results.json'} and {out / 'peers.png'}")
    return doc
