"""Tables, the goal judgement and the plot of ``edgeserve bench peers`` (pure, from cells).

A cell is one dict of ``peers.summarise``: contender, model, protocol, concurrency, the
median ``ok_per_s``, ``p50_ms`` and ``p99_ms`` over rounds, and summed ``errors``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

# "gateway-2w": the same gateway with workers = 2, one per core of this box, as the docs
# advise; "gateway" is one process.
GATEWAYS = ("gateway", "gateway-2w")
CONTENDERS = (*GATEWAYS, "naive", "pytriton")
PEERS = ("naive", "pytriton")


def _find(cells: list[dict[str, Any]], contender: str, model: str, protocol: str, c: int) -> Any:
    for cell in cells:
        if (cell["contender"], cell["model"], cell["protocol"], cell["concurrency"]) == (
            contender,
            model,
            protocol,
            c,
        ):
            return cell
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def _rate(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "—"
    flag = " !" if cell["errors"] else ""  # some round had failures: see results.json
    return f"{cell['ok_per_s']:,.0f}{flag}"


def _latency(cell: dict[str, Any] | None) -> str:
    if cell is None or cell["p50_ms"] is None:
        return "—"
    return f"{cell['p50_ms']:.2f} | {cell['p99_ms']:.2f}"


def peers_table(
    cells: list[dict[str, Any]], model: str, protocols: Sequence[str], concurrency: Sequence[int]
) -> Table:
    """One row per (protocol, concurrency): each contender's req/s and p50 | p99, ratios."""
    table = Table(title=f"{model}: gateway vs peers (batch 1, closed loop; medians of rounds)")
    table.add_column("protocol", no_wrap=True)
    table.add_column("conc", justify="right")
    for name in CONTENDERS:
        table.add_column(f"{name}\nreq/s", justify="right", no_wrap=True)
        table.add_column(f"{name}\np50 | p99 ms", justify="right", no_wrap=True)
    for gateway_name in GATEWAYS:
        for peer in PEERS:
            table.add_column(f"{gateway_name}/{peer}\nreq/s", justify="right", no_wrap=True)
    for protocol in protocols:
        for c in concurrency:
            found = {n: _find(cells, n, model, protocol, c) for n in CONTENDERS}
            row = [protocol, str(c)]
            for name in CONTENDERS:
                row += [_rate(found[name]), _latency(found[name])]
            for gateway_name in GATEWAYS:
                gateway = found[gateway_name]
                for peer in PEERS:
                    ratio = (
                        _ratio(gateway["ok_per_s"], found[peer]["ok_per_s"])
                        if gateway and found[peer]
                        else None
                    )
                    row.append("—" if ratio is None else f"{ratio:.2f}x")
            table.add_row(*row)
    return table


def goal(
    cells: list[dict[str, Any]],
    model: str,
    concurrency: Sequence[int],
    gateway: str = "gateway",
) -> dict[str, Any]:
    """c >= 32: gateway req/s >= PyTriton's and p99 <= PyTriton's; c = 1: p50 <= naive's.

    Judged in every protocol both sides were measured in, for the gateway named.
    """
    checks: list[dict[str, Any]] = []
    for cell in cells:
        if cell["contender"] != gateway or cell["model"] != model:
            continue
        protocol, c = cell["protocol"], cell["concurrency"]
        if c >= 32 and (peer := _find(cells, "pytriton", model, protocol, c)):
            throughput = _ratio(cell["ok_per_s"], peer["ok_per_s"])
            p99 = _ratio(cell["p99_ms"], peer["p99_ms"])
            ok = throughput is not None and p99 is not None and throughput >= 1 and p99 <= 1
            checks.append(
                {"against": "pytriton", "protocol": protocol, "concurrency": c,
                 "throughput_ratio": throughput, "p99_ratio": p99, "met": ok}
            )  # fmt: skip
        if c == 1 and (peer := _find(cells, "naive", model, protocol, c)):
            p50 = _ratio(cell["p50_ms"], peer["p50_ms"])
            checks.append(
                {"against": "naive", "protocol": protocol, "concurrency": c,
                 "p50_ratio": p50, "met": p50 is not None and p50 <= 1}
            )  # fmt: skip
    measured = {c["contender"] for c in cells if c["model"] == model}
    missing = [name for name in (gateway, *PEERS) if name not in measured]
    # A failed check fails the goal; without figures from one of the three it is not judged.
    met = False if not all(c["met"] for c in checks) else None if missing or not checks else True
    return {
        "met": met,
        "checks": checks,
        "no_figures_from": missing,
        "summary": _say(f"{model}, {gateway}", met, checks, missing),
    }


def _say(model: str, met: bool | None, checks: list[dict[str, Any]], missing: list[str]) -> str:
    verdict = {True: "[green]met[/green]", False: "[red]NOT met[/red]", None: "not judged"}[met]
    parts = []
    for check in checks:
        mark = "✓" if check["met"] else "✗"
        where = f"vs {check['against']} {check['protocol']} c={check['concurrency']}"
        if check["against"] == "pytriton":
            parts.append(
                f"{where}: {check['throughput_ratio']}x req/s, p99 {check['p99_ratio']}x {mark}"
            )
        else:
            parts.append(f"{where}: p50 {check['p50_ratio']}x {mark}")
    if missing:
        parts.append(f"no figures from {', '.join(missing)}")
    return f"goal for {model}: {verdict}\n  " + "\n  ".join(parts)


def plot_peers(cells: list[dict[str, Any]], path: Path, concurrency: Sequence[int]) -> None:
    """req/s and p99 against concurrency, per model: colour = contender, line = protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({c["model"] for c in cells})
    fig, axes = plt.subplots(
        2, max(1, len(models)), figsize=(7 * max(1, len(models)), 8), squeeze=False
    )
    colours = {name: f"C{i}" for i, name in enumerate(CONTENDERS)}
    styles = {"rest-json": "-", "rest-binary": "--", "grpc": ":"}
    x = {c: i for i, c in enumerate(concurrency)}
    for column, model in enumerate(models):
        for name in CONTENDERS:
            for protocol, style in styles.items():
                mine = [
                    c
                    for c in cells
                    if (c["contender"], c["model"], c["protocol"]) == (name, model, protocol)
                ]
                mine.sort(key=lambda c: c["concurrency"])
                if not mine:
                    continue
                xs = [x[c["concurrency"]] for c in mine]
                label = f"{name} {protocol}"
                for row, key in enumerate(("ok_per_s", "p99_ms")):
                    ys = [c[key] for c in mine]
                    axes[row][column].plot(
                        xs, ys, style, marker="o", color=colours[name], label=label
                    )
        for row, label in enumerate(("ok requests/s", "p99 latency, ms (log)")):
            axis = axes[row][column]
            axis.set_xticks(list(x.values()), [str(c) for c in x])
            axis.set(xlabel="concurrency (closed loop, batch 1)", ylabel=label, title=model)
            axis.legend(fontsize=7)
        axes[1][column].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
