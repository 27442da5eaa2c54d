"""``edgeserve bench shadow``: what mirroring every request to a shadow version costs the
primary, at concurrency 32, on a real gateway process under wrk.

The repository holds ``digits-cloud`` twice: version 2 the packaged CNN (the default, and
the control), version 1 the packaged edge MLP (the shadow: a real candidate). Rounds are
interleaved: the gateway alone (no experiment), then the same gateway with an experiment
whose only split arm is the control and whose shadow receives a copy of every request;
the experiment is stopped between rounds. The figure is the ratio of the medians of the
primary's p50 (and p99, throughput), with the share of copies the shadow compared and
the share dropped because its queue was full (the price of never slowing the primary).
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from cloud_gateway.experiments import Arm, ExperimentSpec, ExperimentStore
from cloud_gateway.repository.seed import config_from_card
from edgeserve.artifacts import packaged_artifacts
from edgeserve.bench.gateway_harness import Gateway, running_gateway
from edgeserve.bench.peers_load import LoadResult, Payload, payloads, run_load
from edgeserve.polling import wait_until
from edgeserve.wire.model_card import ModelCard
from models.data import load_split

console = Console(width=None if sys.stdout.isatty() else 132)
MODEL = "digits-cloud"
CONTROL, SHADOW = "2", "1"
CONCURRENCY = 32
GOAL_P50_RATIO = 1.05


def shadow_repository(root: Path) -> Path:
    source = packaged_artifacts()
    card = ModelCard.load(source / f"{MODEL}.card.json")
    edge = ModelCard.load(source / "digits-edge-fp32.card.json")
    for version, file in ((CONTROL, card.file), (SHADOW, edge.file)):
        (root / MODEL / version).mkdir(parents=True)
        shutil.copyfile(source / file, root / MODEL / version / "model.onnx")
    config = config_from_card(card) + "\n[version_policy]\nlatest = 2\n"
    (root / MODEL / "config.toml").write_text(config)
    return root


def run_shadow_bench(out: Path, seconds: int = 5, rounds: int = 3) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgeserve-bench-shadow-") as tmp:
        work = Path(tmp)
        shadow_repository(work / "models")
        with running_gateway(work, "shadow") as gateway:
            document = _measure(gateway, work, seconds, rounds)
    _print(document)
    out.mkdir(parents=True, exist_ok=True)
    (out / "shadow.json").write_text(json.dumps(document, indent=2) + "\n")
    return document


def _measure(gateway: Gateway, work: Path, seconds: int, rounds: int) -> dict[str, Any]:
    # A real digit, on which control and shadow agree: a shadow that disagreed would be
    # stopped by its agreement test within a few hundred requests, and mirror no more.
    row = load_split(packaged_artifacts(), "test")[0][:1].astype(np.float32)
    payload = payloads(MODEL, row, gateway.keys["bench"])["rest-json"]
    address = gateway.address("http")
    run_load(payload, address, CONCURRENCY, 1, work)  # warm-up: loads, caches, JIT-free paths
    alone: list[LoadResult] = []
    shadowed: list[LoadResult] = []
    mirrored: list[dict[str, float]] = []
    for index in range(rounds):
        alone.append(run_load(payload, address, CONCURRENCY, seconds, work))
        result, counts = _shadowed_round(gateway, f"shadow-{index}", payload, seconds, work)
        shadowed.append(result)
        mirrored.append(counts)
    return _summary(alone, shadowed, mirrored, seconds, rounds)


def _shadowed_round(
    gateway: Gateway, name: str, payload: Payload, seconds: int, work: Path
) -> tuple[LoadResult, dict[str, float]]:
    """One run with an experiment that mirrors every request: the primary's figures and
    what the shadow did meanwhile (compared, dropped, served by the control)."""
    database = gateway.state_dir / "experiments.db"
    arms = (Arm(CONTROL, "split", 1), Arm(SHADOW, "shadow"))
    with ExperimentStore(database) as store:
        store.create(ExperimentSpec(name, MODEL, arms))
    wait_until(lambda: _active(gateway, name), 10, f"experiment {name}")
    before = _shadow_counts(gateway, name)
    result = run_load(payload, gateway.address("http"), CONCURRENCY, seconds, work)
    # The counts reach /metrics at the next flush.
    wanted = before["served"] + result.requests * 0.99
    wait_until(lambda: _shadow_counts(gateway, name)["served"] >= wanted, 10, "the counts")
    after = _shadow_counts(gateway, name)
    with ExperimentStore(database) as store:
        store.stop(name, "benchmark round over")
    wait_until(lambda: not _active(gateway, name), 10, f"experiment {name} to stop")
    return result, {k: after[k] - before[k] for k in after}


def _active(gateway: Gateway, name: str) -> bool:
    status, body = gateway.call("POST", f"/v2/models/{MODEL}/infer", _probe())
    return status == 200 and json.loads(body)["parameters"].get("experiment") == name


def _probe() -> bytes:
    data = [0.0] * 64
    return json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                   "data": data}]}).encode()  # fmt: skip


def _shadow_counts(gateway: Gateway, name: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = gateway.call("GET", "/metrics")[1].decode()
    counts = {"compared": 0.0, "dropped": 0.0, "served": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("experiment") != name or not sample.name.endswith("_total"):
                continue
            if "shadow_compared" in sample.name:
                counts["compared"] += sample.value
            elif "shadow_dropped" in sample.name:
                counts["dropped"] += sample.value
            elif "experiment_requests" in sample.name and sample.labels.get("arm") == CONTROL:
                counts["served"] += sample.value
    return counts


def _summary(
    alone: list[LoadResult],
    shadowed: list[LoadResult],
    mirrored: list[dict[str, float]],
    seconds: int,
    rounds: int,
) -> dict[str, Any]:
    def median(results: list[LoadResult], field: str) -> float:
        return statistics.median(float(getattr(r, field)) for r in results)

    figures = {
        name: {f: median(results, f) for f in ("p50_ms", "p99_ms", "ok_per_s")}
        for name, results in (("alone", alone), ("with shadow", shadowed))
    }
    served = sum(m["served"] for m in mirrored)
    ratio = figures["with shadow"]["p50_ms"] / figures["alone"]["p50_ms"]
    return {
        "concurrency": CONCURRENCY,
        "seconds_per_run": seconds,
        "rounds": rounds,
        "figures": figures,
        "runs": {
            "alone": [r.to_dict() for r in alone],
            "with shadow": [r.to_dict() for r in shadowed],
        },
        "p50_ratio": round(ratio, 3),
        "p99_ratio": round(figures["with shadow"]["p99_ms"] / figures["alone"]["p99_ms"], 3),
        "throughput_ratio": round(
            figures["with shadow"]["ok_per_s"] / figures["alone"]["ok_per_s"], 3
        ),
        "shadow_compared_share": round(sum(m["compared"] for m in mirrored) / served, 3)
        if served
        else None,
        "shadow_dropped_share": round(sum(m["dropped"] for m in mirrored) / served, 3)
        if served
        else None,
        "goal_p50_ratio": GOAL_P50_RATIO,
        "goal_met": ratio <= GOAL_P50_RATIO,
    }


def _print(document: dict[str, Any]) -> None:
    title = (
        f"digits-cloud REST JSON under wrk, c={document['concurrency']}, medians of "
        f"{document['rounds']} interleaved rounds of {document['seconds_per_run']} s"
    )
    table = Table("primary", "p50 ms", "p99 ms", "req/s", title=title)
    for name, f in document["figures"].items():
        table.add_row(name, f"{f['p50_ms']:.2f}", f"{f['p99_ms']:.2f}", f"{f['ok_per_s']:,.0f}")
    console.print(table)
    console.print(
        f"shadow adds {document['p50_ratio']:.3f}x to the primary's p50 (goal <= "
        f"{GOAL_P50_RATIO}: {'met' if document['goal_met'] else 'MISSED'}), p99 "
        f"{document['p99_ratio']:.3f}x, throughput {document['throughput_ratio']:.3f}x; the "
        f"shadow compared {document['shadow_compared_share']:.1%} of the control's answers "
        f"and dropped {document['shadow_dropped_share']:.1%} (queue full)"
    )
