"""``edgeserve bench shadow``: what mirroring every request to a shadow version costs the
primary, at concurrency 32, on a real gateway process under wrk.

The repository holds ``digits-cloud`` twice: version 2 the packaged CNN (the default, and
the control), version 1 the packaged edge MLP (the shadow: a real candidate). Four
conditions, interleaved over rounds (each round starts one condition later): the gateway
alone (no experiment), then an experiment whose only split arm is the control and whose
shadow receives a copy of every request, of a tenth (``--shadow-fraction 0.1``), of none
(the experiment's routing alone); each experiment is stopped after its run. The figure
is the ratio of the medians of the primary's p50 (and p99, throughput) to the gateway
alone, with the share of the control's answers the shadow compared and the share it
dropped because its queue was full.
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

from cloud_gateway.experiments import Arm, ExperimentSpec, ExperimentStore, Settings
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
# Shares of the requests mirrored (--shadow-fraction); 0 measures the experiment's routing
# alone, so that the shadow's own cost is the difference.
FRACTIONS = (1.0, 0.1, 0.0)


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
    run_load(payload, gateway.address("http"), CONCURRENCY, 1, work)  # warm-up
    runs: dict[str, list[LoadResult]] = {"alone": []}
    mirrored: dict[str, list[dict[str, float]]] = {}
    conditions: list[float | None] = [None, *FRACTIONS]  # None: no experiment
    for index in range(rounds):
        # Each round starts one condition later, so that no condition always runs first
        # or last (a busy neighbour or a warming cache then favours none of them).
        shift = index % len(conditions)
        for fraction in conditions[shift:] + conditions[:shift]:
            if fraction is None:
                result = run_load(payload, gateway.address("http"), CONCURRENCY, seconds, work)
                runs["alone"].append(result)
                continue
            name = _condition(fraction)
            result, counts = _shadowed_round(gateway, f"shadow-{index}-{fraction:g}", fraction,
                                             payload, seconds, work)  # fmt: skip
            runs.setdefault(name, []).append(result)
            mirrored.setdefault(name, []).append(counts)
    return _summary(runs, mirrored, seconds, rounds)


def _condition(fraction: float) -> str:
    return f"shadow on {fraction:.0%}"


def _shadowed_round(
    gateway: Gateway, name: str, fraction: float, payload: Payload, seconds: int, work: Path
) -> tuple[LoadResult, dict[str, float]]:
    """One run with an experiment mirroring ``fraction`` of the requests: the primary's
    figures and what the shadow did meanwhile (compared, dropped, served by the control)."""
    database = gateway.state_dir / "experiments.db"
    arms = (Arm(CONTROL, "split", 1), Arm(SHADOW, "shadow"))
    with ExperimentStore(database) as store:
        store.create(ExperimentSpec(name, MODEL, arms, settings=Settings(shadow_fraction=fraction)))
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
    runs: dict[str, list[LoadResult]],
    mirrored: dict[str, list[dict[str, float]]],
    seconds: int,
    rounds: int,
) -> dict[str, Any]:
    def median(results: list[LoadResult], field: str) -> float:
        return statistics.median(float(getattr(r, field)) for r in results)

    figures: dict[str, dict[str, Any]] = {
        name: {f: median(results, f) for f in ("p50_ms", "p99_ms", "ok_per_s")}
        for name, results in runs.items()
    }
    alone = figures["alone"]
    for name, counts in mirrored.items():
        served = sum(m["served"] for m in counts) or 1.0
        figures[name].update(
            p50_ratio=round(figures[name]["p50_ms"] / alone["p50_ms"], 3),
            p99_ratio=round(figures[name]["p99_ms"] / alone["p99_ms"], 3),
            throughput_ratio=round(figures[name]["ok_per_s"] / alone["ok_per_s"], 3),
            compared_share=round(sum(m["compared"] for m in counts) / served, 3),
            dropped_share=round(sum(m["dropped"] for m in counts) / served, 3),
        )
    ratio = figures[_condition(1.0)]["p50_ratio"]
    return {
        "concurrency": CONCURRENCY,
        "seconds_per_run": seconds,
        "rounds": rounds,
        "figures": figures,
        "runs": {name: [r.to_dict() for r in results] for name, results in runs.items()},
        "p50_ratio": ratio,
        "goal_p50_ratio": GOAL_P50_RATIO,
        "goal_met": ratio <= GOAL_P50_RATIO,
    }


def _print(document: dict[str, Any]) -> None:
    title = (
        f"digits-cloud REST JSON under wrk, c={document['concurrency']}, medians of "
        f"{document['rounds']} interleaved rounds of {document['seconds_per_run']} s"
    )
    table = Table("primary", "p50 ms", "p99 ms", "req/s", "p50 ratio", "mirrored (dropped)",
                  title=title)  # fmt: skip
    for name, f in document["figures"].items():
        ratio = f"{f['p50_ratio']:.3f}x" if "p50_ratio" in f else "-"
        shadow = f"{f['compared_share']:.1%} ({f['dropped_share']:.1%})" if ratio != "-" else "-"
        table.add_row(name, f"{f['p50_ms']:.2f}", f"{f['p99_ms']:.2f}", f"{f['ok_per_s']:,.0f}",
                      ratio, shadow)  # fmt: skip
    console.print(table)
    console.print(
        f"a shadow on every request adds {document['p50_ratio']:.3f}x to the primary's p50 "
        f"(goal <= {GOAL_P50_RATIO}: {'met' if document['goal_met'] else 'MISSED'})"
    )
