"""Every benchmark of the project, as one table the report walks: how to run it (full or
quick) into a folder, and which of its figures are the headline, next to its baseline
and its goal.

Each runner calls the benchmark's own ``run_*`` function and reads the figures from what
it returns, so the report never scrapes printed text; the benchmark still prints and
writes its files (CSV, JSON, PNG) as ``edgeserve bench <name>`` does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BENCHMARKS", "Benchmark", "Figure", "Outcome", "faults_figures", "goal_met"]

SOURCE_ROOT = Path(__file__).resolve().parents[2]
FAULTS_TIMEOUT_S = 3600.0


@dataclass(frozen=True, slots=True)
class Figure:
    """One headline number; ``ratio`` is value / baseline_value when there is a baseline."""

    name: str
    value: float | None  # None: not measured in this run
    unit: str
    baseline: str | None = None
    baseline_value: float | None = None
    goal: str | None = None
    met: bool | None = None  # None: no goal, or the goal could not be judged

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline_value:
            return None
        return self.value / self.baseline_value


@dataclass
class Outcome:
    """What a benchmark run gave the report; ``failed`` says why it has no (full) figures."""

    figures: list[Figure]
    notes: list[str] = field(default_factory=list)
    failed: str | None = None


Runner = Callable[[Path, bool], Outcome]


@dataclass(frozen=True, slots=True)
class Benchmark:
    name: str
    title: str
    command: str  # how to run it alone
    run: Runner  # (output folder, quick) -> Outcome


# -- edge --------------------------------------------------------------------------------

RAW = "raw session.run (int8)"


def run_edge(out: Path, quick: bool) -> Outcome:
    from edgeserve.bench.edge import run_edge_benchmark

    document = run_edge_benchmark(500 if quick else 5000, out, mobilenet=not quick)
    notes = [] if not quick else ["quick: 500 requests per contender, no MobileNetV2"]
    return Outcome(edge_figures(document["sections"]), notes)


def edge_figures(sections: dict[str, Any]) -> list[Figure]:
    def p50(section: str, name: str) -> float:
        return float(sections[section]["latency"][name]["p50_us"])

    raw, agent = p50("in_process", RAW), p50("in_process", "agent core.infer, cache off")
    rest_raw = p50("rest", RAW)
    rest = p50("rest", "REST infer round trip (binary, keep-alive)")
    fp32, int8 = p50("int8_edge", "edge MLP fp32"), p50("int8_edge", "edge MLP int8")
    figures = [
        Figure("agent core.infer p50, cache off (int8 MLP)", agent, "µs", "raw session.run",
               raw, "≤ +50 µs or ≤ 1.05x", agent - raw <= 50 or agent <= 1.05 * raw),
        Figure("agent router p50, cache hit", p50("in_process", "agent router, cache hit"),
               "µs", "raw session.run", raw),
        Figure("local REST infer round trip p50", rest, "µs", "raw session.run", rest_raw,
               "≤ +1,000 µs", rest - rest_raw <= 1000),
        Figure("int8 edge MLP p50", int8, "µs", "fp32", fp32, "≤ 0.5x (2x faster)",
               int8 <= 0.5 * fp32),
    ]  # fmt: skip
    if "router_score" in sections:
        softmax = p50("router_score", "max-probability score")
        trust = p50("router_score", "trust score (k-NN, bank)")
        figures.append(Figure("router trust score p50 (k-NN over the digits bank)", trust, "µs",
                              "max-probability score", softmax, "≤ +20 µs",
                              trust - softmax <= 20))  # fmt: skip
    if "int8_mobilenet" in sections:
        fp32, int8 = (
            p50("int8_mobilenet", "MobileNetV2 fp32"),
            p50("int8_mobilenet", "MobileNetV2 int8"),
        )
        figures.append(Figure("int8 MobileNetV2 p50", int8, "µs", "fp32", fp32,
                              "≤ 0.5x (2x faster)", int8 <= 0.5 * fp32))  # fmt: skip
    figures.append(
        Figure("TFLite fp32 MLP p50 (raw)", p50("ort_vs_tflite", "raw TFLite fp32"), "µs",
               "ONNX Runtime", p50("ort_vs_tflite", "raw ONNX Runtime fp32"))
    )  # fmt: skip
    return figures


# -- gateway -----------------------------------------------------------------------------


def run_gateway(out: Path, quick: bool) -> Outcome:
    from edgeserve.bench.gateway import run_gateway_benchmark

    document = run_gateway_benchmark(out, 5.0, quick)
    notes = [f"{document['seconds_per_point']:g} s per measurement point"]
    return Outcome(gateway_figures(document), notes)


def gateway_figures(doc: dict[str, Any]) -> list[Figure]:
    figures = []
    for model, points in doc["batching"].items():
        batched, alone = points[-2], points[-1]  # the highest concurrency, batched then not
        concurrency = batched["concurrency"]
        figures += [
            Figure(f"{model}: batched req/s at concurrency {concurrency}",
                   batched["throughput_ok_per_s"], "req/s", "no batching",
                   alone["throughput_ok_per_s"], "≥ 4x at c ≥ 32, p99 no worse",
                   bool(doc["batching_goal"][model]["met"])),
            Figure(f"{model}: batched p99 at concurrency {concurrency}",
                   batched["latency_ms"]["p99"], "ms", "no batching", alone["latency_ms"]["p99"],
                   "≤ 1x", batched["latency_ms"]["p99"] <= alone["latency_ms"]["p99"]),
        ]  # fmt: skip
    noisy = doc["noisy_neighbour"]
    shared, alone_p99 = noisy["b_with_flood"]["latency_ms"]["p99"], noisy["b_alone"]["latency_ms"]
    figures.append(Figure("tenant B p99 while tenant A floods at 10x its limit", shared, "ms",
                          "B alone", alone_p99["p99"], "≤ 1.2x",
                          shared <= 1.2 * alone_p99["p99"]))  # fmt: skip
    if "wrong_secret" in doc:
        cpu = doc["wrong_secret"]
        figures += [
            Figure("key check of a wrong secret for a valid key id", cpu["key_check_us"], "µs",
                   goal="≤ 50 µs", met=cpu["key_check_us"] <= 50),
            Figure("gateway CPU per refused request (wrong secret, REST JSON)",
                   cpu["cpu_us_per_refusal"], "µs", "per accepted request",
                   cpu["cpu_us_per_accepted"]),
        ]  # fmt: skip
    overhead = doc["overhead"]
    raw_us = overhead["raw session.run"]["p50_ms"] * 1e3
    for target in ("grpc", "rest-binary", "rest-json"):
        figures.append(Figure(f"{target} infer p50 (c=1, digits-cloud, no batching)",
                              overhead[target]["p50_ms"] * 1e3, "µs", "raw session.run",
                              raw_us))  # fmt: skip
    cold = doc["cold_load"]["digits-cloud"]
    figures.append(Figure("digits-cloud explicit load → ready", cold["load_to_ready_ms"], "ms"))
    eviction = doc["eviction"]
    ok = sum(r["status"] == 200 for r in eviction["requests"])
    figures.append(Figure("requests answered under a one-model memory budget", ok, "requests",
                          "sent", len(eviction["requests"]), "all",
                          bool(eviction["all_ok"])))  # fmt: skip
    return figures


# -- delta -------------------------------------------------------------------------------


def run_delta(out: Path, quick: bool) -> Outcome:
    from edgeserve.bench.delta import run_delta_bench

    rows = run_delta_bench(out, big=not quick, bsdiff_budget_s=20.0 if quick else 120.0)
    notes = [f"{r.model} / {r.case} / {r.method}: {r.note}" for r in rows if r.note]
    if quick:
        notes.insert(0, "quick: the 0.6 MB CNN only, not the 51 MB model")
    return Outcome(delta_figures(rows), notes)


def delta_figures(rows: list[Any]) -> list[Figure]:
    """``rows``: :class:`edgeserve.bench.delta.DeltaRow`."""
    from edgeserve.bench.delta import LAST_LAYER_GOAL_PERCENT
    from edgeserve.bench.delta_cases import CASES

    by_key = {(r.model, r.case, r.method): r for r in rows}
    figures = []
    for model in dict.fromkeys(r.model for r in rows):
        last = [r for r in rows if r.model == model and r.case == CASES[0] and r.size]
        best = min(last, key=lambda r: r.size)
        figures.append(Figure(f"{model}: last-layer fine-tune, smallest payload ({best.method})",
                              best.percent, "% of new", goal=f"≤ {LAST_LAYER_GOAL_PERCENT:g}%",
                              met=best.percent <= LAST_LAYER_GOAL_PERCENT))  # fmt: skip
        for case in CASES:
            ours, theirs = by_key[(model, case, "tensor-delta")], by_key[(model, case, "bsdiff4")]
            met = None if theirs.size is None else ours.size < theirs.size
            figures.append(Figure(f"{model}: {case}, tensor-delta", ours.percent, "% of new",
                                  "bsdiff4", theirs.percent, "< bsdiff4", met))  # fmt: skip
    return figures


# -- telemetry ---------------------------------------------------------------------------


def run_telemetry(out: Path, quick: bool) -> Outcome:
    from edgeserve.bench.telemetry import GOAL_RECORDS_PER_S, run_ingest_bench

    sizes = (10, 500, 100) if quick else (100, 2000, 500)
    result = run_ingest_bench(*sizes)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    goal = float(GOAL_RECORDS_PER_S)
    figures = [
        Figure("records/s ingested (decode + dedup + store + ack)", result.records_per_s,
               "records/s", "goal rate", goal, f"≥ {GOAL_RECORDS_PER_S:,} records/s",
               result.records_per_s >= goal),
        Figure("records per CPU second", result.records / result.cpu_seconds, "records/s"),
    ]  # fmt: skip
    notes = [f"{result.devices} devices x {sizes[1]} records, {result.batches} batches "
             f"({result.redelivered_batches} redelivered)"]  # fmt: skip
    return Outcome(figures, notes)


# -- fleet -------------------------------------------------------------------------------


def run_fleet(out: Path, quick: bool) -> Outcome:
    from edgeserve.bench.fleet import run_fleet_bench

    result = run_fleet_bench(out, (1, 2) if quick else (1, 4, 8), 10 if quick else 100)
    return Outcome(fleet_figures(result.rollouts, result.telemetry))


def fleet_figures(rollouts: list[Any], telemetry: list[Any]) -> list[Figure]:
    from edgeserve.bench.telemetry import GOAL_RECORDS_PER_S

    largest = max(r.devices for r in rollouts)
    by_mode = {r.mode: r for r in rollouts if r.devices == largest}
    delta, full = by_mode["delta"], by_mode["full"]
    mqtt, in_process = telemetry[0], telemetry[-1]
    encoding = delta.encoding.replace("x", " x")  # "tensor-deltax8": the encoding, 8 times
    return [
        Figure(f"bytes sent to update {largest} agents, delta ({encoding})",
               delta.payload_bytes, "bytes", "full artifact", full.payload_bytes),
        Figure(f"push → rollout completed, {largest} agents, delta", delta.rollout_s, "s",
               "full artifact", full.rollout_s),
        Figure(f"telemetry through Mosquitto (TLS), {mqtt.devices} devices", mqtt.records_per_s,
               "records/s", "in process", in_process.records_per_s,
               f"≥ {GOAL_RECORDS_PER_S:,} records/s", mqtt.records_per_s >= GOAL_RECORDS_PER_S),
    ]  # fmt: skip


# -- cascade -----------------------------------------------------------------------------


def run_cascade(out: Path, quick: bool) -> Outcome:
    from edgeserve.eval.cascade import run_cascade_eval

    report = run_cascade_eval(out, rows=150 if quick else None)
    return Outcome(cascade_figures(report), [f"{report['test_rows']} test digits"])


def cascade_figures(report: dict[str, Any]) -> list[Figure]:
    cascade, policy = report["cascade"], report["policy"]
    accuracy, cloud = cascade["accuracy"] * 100, report["cloud_only_accuracy"] * 100
    rate = cascade["escalation_rate"] * 100
    figures = [
        Figure("cascade accuracy at the calibrated policy", accuracy, "%", "cloud only", cloud,
               "≥ cloud - 0.3 pt at ≤ 20% escalated", accuracy >= cloud - 0.3 and rate <= 20),
        Figure("edge-only accuracy", report["edge_only_accuracy"] * 100, "%", "cloud only", cloud),
    ]  # fmt: skip
    if policy.get("target_kind") == "escalation_rate":
        target = policy["target_value"] * 100
        figures.append(Figure("escalation rate on the test split", rate, "%", "target", target,
                              "within ±2 pt of target", abs(rate - target) <= 2))  # fmt: skip
    figures += [
        Figure("escalation overhead p50 (round trip - time in gateway)",
               cascade["overhead_p50_ms"], "ms", goal="≤ 1 ms",
               met=cascade["overhead_p50_ms"] <= 1.0),
        Figure("local answer p50", cascade["local_p50_ms"], "ms"),
        Figure("escalated answer p50", cascade["escalated_p50_ms"], "ms", "local answer",
               cascade["local_p50_ms"]),
    ]  # fmt: skip
    return figures


# -- faults ------------------------------------------------------------------------------

_GOAL = re.compile(r"^\s*(<=|>=|==|=|<|>|≤|≥)?\s*([-+]?[0-9][0-9.eE_,]*)(.*)$")


def goal_met(value: float, goal: str) -> bool | None:
    """Judge a goal written as a comparison ("== 0", "<= 1.5x", "≥ 20,000 records/s") or
    as a bare number ("0": equal to it); None if the goal is neither."""
    match = _GOAL.match(goal)
    if match is None or (match[1] is None and match[3].strip()):
        return None  # "counted", "<= budget 150 + 250", "0 or less"...
    try:
        bound = float(match[2].replace(",", "").replace("_", ""))
    except ValueError:
        return None
    op = {"≤": "<=", "≥": ">=", "=": "==", None: "=="}.get(match[1], match[1])
    checks = {"<=": value <= bound, ">=": value >= bound, "==": value == bound,
              "<": value < bound, ">": value > bound}  # fmt: skip
    return checks[op]


def faults_figures(document: dict[str, Any]) -> list[Figure]:
    """``{"name": {"value": number, "unit": str, "goal": str}}`` as the fault suite writes it."""
    figures = []
    for name, entry in document.items():
        value = entry.get("value")
        goal = entry.get("goal") or None
        number = float(value) if isinstance(value, int | float) else None
        met = goal_met(number, goal) if goal and number is not None else None
        figures.append(Figure(name, number, str(entry.get("unit", "")), goal=goal, met=met))
    return figures


def run_faults(out: Path, quick: bool, tests_dir: Path | None = None) -> Outcome:
    """The fault suite under pytest, its figures from the JSON it writes."""
    tests_dir = tests_dir or SOURCE_ROOT / "tests" / "faults"
    if not tests_dir.is_dir():
        return Outcome([], failed=f"{tests_dir.name}/ is not in this checkout: no fault figures")
    out.mkdir(parents=True, exist_ok=True)
    figures_path = out / "faults.json"
    figures_path.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "pytest", str(tests_dir), "-q", "-p", "no:cacheprovider"]
    env = {**os.environ, "EDGESERVE_FAULT_FIGURES": str(figures_path)}
    try:
        done = subprocess.run(argv, cwd=tests_dir.parent.parent, env=env, capture_output=True,
                              text=True, timeout=FAULTS_TIMEOUT_S)  # fmt: skip
    except subprocess.TimeoutExpired:
        return Outcome([], failed=f"the fault suite ran past {FAULTS_TIMEOUT_S:.0f} s")
    (out / "pytest.log").write_text(done.stdout + done.stderr)
    summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    figures = _read_fault_figures(figures_path)
    failed = None
    if done.returncode != 0:
        failed = f"pytest exited with {done.returncode}: {summary} (see faults/pytest.log)"
    elif not figures:
        failed = f"the fault suite passed but wrote no figures to {figures_path.name}"
    return Outcome(figures, [f"pytest: {summary}"], failed)


def _read_fault_figures(path: Path) -> list[Figure]:
    try:
        return faults_figures(json.loads(path.read_text()))
    except (OSError, ValueError, AttributeError):
        return []


def _run_peers(out: Path, quick: bool) -> Outcome:
    from edgeserve.bench.suite_peers import run_peers  # it imports this module's types

    return run_peers(out, quick)


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "edge",
            "Edge agent: overhead, int8 vs fp32, ONNX Runtime vs TFLite",
            "edgeserve bench edge",
            run_edge,
        ),
        Benchmark(
            "gateway",
            "Cloud gateway: batching, noisy neighbour, overhead, eviction",
            "edgeserve bench gateway",
            run_gateway,
        ),
        Benchmark(
            "peers",
            "Cloud gateway vs naive FastAPI and NVIDIA PyTriton (wrk, h2load)",
            "edgeserve bench peers",
            lambda out, quick: _run_peers(out, quick),
        ),
        Benchmark(
            "delta",
            "Model update payloads: tensor delta vs zstd, zstd-patch, bsdiff4",
            "edgeserve bench delta",
            run_delta,
        ),
        Benchmark(
            "telemetry", "Telemetry ingest in process", "edgeserve bench telemetry", run_telemetry
        ),
        Benchmark(
            "fleet",
            "Fleet: time to update N agents, telemetry through Mosquitto",
            "edgeserve bench fleet",
            run_fleet,
        ),
        Benchmark(
            "cascade",
            "Edge-cloud cascade: accuracy, escalation, latency",
            "edgeserve eval cascade",
            run_cascade,
        ),
        Benchmark(
            "faults",
            "Fault-injection suite",
            "EDGESERVE_FAULT_FIGURES=faults.json pytest tests/faults -q",
            run_faults,
        ),
    )
}
