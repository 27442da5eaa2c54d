"""The peer benchmark's headline figures for ``edgeserve bench report``: the gateway (one
process, and two workers) against NVIDIA PyTriton at the highest concurrency and against
the naive FastAPI server at concurrency 1, per model and protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeserve.bench.peers_report import GATEWAYS
from edgeserve.bench.suite import Figure, Outcome


def run_peers(out: Path, quick: bool) -> Outcome:
    from edgeserve.bench.peers import run_peers_benchmark

    doc = run_peers_benchmark(out, duration_s=2 if quick else 5, rounds=1 if quick else 3,
                              quick=quick)  # fmt: skip
    settings = doc["settings"]
    notes = [f"{settings['rounds']} round(s) of {settings['seconds_per_cell']} s per cell"]
    notes += [f"skipped {name}: {why.splitlines()[0]}" for name, why in doc["skipped"].items()]
    return Outcome(peers_figures(doc), notes)


def peers_figures(doc: dict[str, Any]) -> list[Figure]:
    cells = {(c["contender"], c["model"], c["protocol"], c["concurrency"]): c for c in doc["cells"]}
    top = max(doc["settings"]["concurrency"])
    figures = []
    for gateway in GATEWAYS:
        for model in sorted({c["model"] for c in doc["cells"]}):
            for protocol in ("rest-json", "grpc"):
                mine = cells.get((gateway, model, protocol, top))
                peer = cells.get(("pytriton", model, protocol, top))
                if mine and peer:
                    met = mine["ok_per_s"] >= peer["ok_per_s"] and mine["p99_ms"] <= peer["p99_ms"]
                    name = f"{gateway} {model} {protocol} req/s at c={top}"
                    figures.append(Figure(name, mine["ok_per_s"], "req/s", "PyTriton",
                                          peer["ok_per_s"], "≥ 1x, p99 no worse", met))  # fmt: skip
            mine, naive = (
                cells.get((gateway, model, "rest-json", 1)),
                cells.get(("naive", model, "rest-json", 1)),
            )
            if mine and naive and mine["p50_ms"] and naive["p50_ms"]:
                met = mine["p50_ms"] <= naive["p50_ms"]
                name = f"{gateway} {model} rest-json p50 at c=1"
                figures.append(Figure(name, mine["p50_ms"], "ms", "naive FastAPI",
                                      naive["p50_ms"], "≤ 1x", met))  # fmt: skip
    return figures
