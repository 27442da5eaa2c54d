"""``edgeserve bench delta``: how many bytes a model update costs, per encoding.

For every case of :mod:`edgeserve.bench.delta_cases` (retrain, last-layer fine-tune,
full fine-tune, three int8 re-quantizations; on the 0.6 MB reference CNN and a 51 MB
MLP) it builds and applies four payloads — full zstd, zstd-patch (base as zstd prefix),
bsdiff4 and our tensor-delta (latest format) — checks each rebuilds the new file
exactly, and reports size as % of the new model with build and apply times. bsdiff4
needs ~17x the model in memory and minutes on 50 MB, so it runs within
``bsdiff_budget_s``: a case it cannot afford is reported as skipped with the estimate,
never silently dropped.
"""

from __future__ import annotations

import csv
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgeserve.bench.delta_cases import CASES, DeltaCase, big_cases, small_cases
from edgeserve.bench.timing import machine_info
from edgeserve.wire.delta import zstd_codec
from edgeserve.wire.delta.tensor_delta import apply_tensor_delta, build_tensor_delta

__all__ = ["METHODS", "DeltaRow", "goals", "run_delta_bench"]

# The results table has nine columns; an 80-column pipe would fold every cell.
console = Console() if sys.stdout.isatty() else Console(width=150)

LAST_LAYER_GOAL_PERCENT = 5.0
Build = Callable[[bytes, bytes], bytes]
Apply = Callable[[bytes, bytes, int], bytes]


def _bsdiff_build(new: bytes, base: bytes) -> bytes:
    import bsdiff4  # type: ignore[import-untyped]

    return bytes(bsdiff4.diff(base, new))


def _bsdiff_apply(delta: bytes, base: bytes, size: int) -> bytes:
    import bsdiff4

    return bytes(bsdiff4.patch(base, delta))


METHODS: dict[str, tuple[Build, Apply]] = {
    "zstd": (lambda new, base: zstd_codec.compress(new),
             lambda delta, base, size: zstd_codec.decompress(delta, None, size)),
    "zstd-patch": (lambda new, base: zstd_codec.compress(new, base),
                   lambda delta, base, size: zstd_codec.decompress(delta, base, size)),
    "bsdiff4": (_bsdiff_build, _bsdiff_apply),
    "tensor-delta": (build_tensor_delta, apply_tensor_delta),
}  # fmt: skip


@dataclass(frozen=True)
class DeltaRow:
    """One payload: ``size`` is None when the method was skipped (``note`` says why)."""

    model: str
    case: str
    method: str
    new_size: int
    size: int | None
    build_s: float | None
    apply_s: float | None
    note: str = ""

    @property
    def percent(self) -> float | None:
        return None if self.size is None else 100.0 * self.size / self.new_size


class _BsdiffBudget:
    """Spends a time budget on bsdiff4, predicting each run from the rate seen so far."""

    # Measured here: ~3 s per MB of base on float weights (suffix sorting dominates).
    _PRIOR_S_PER_BYTE = 3.0 / 1e6

    def __init__(self, budget_s: float) -> None:
        self.left = budget_s
        self.rate = self._PRIOR_S_PER_BYTE
        self.runs = 0

    def estimate(self, base_size: int) -> float:
        return self.rate * base_size

    def spend(self, base_size: int, seconds: float) -> None:
        self.left -= seconds
        observed = seconds / max(base_size, 1)
        self.rate = observed if self.runs == 0 else max(self.rate, observed)
        self.runs += 1


def _timed(call: Callable[[], bytes]) -> tuple[bytes, float]:
    start = time.perf_counter()
    out = call()
    return out, time.perf_counter() - start


def _measure(case: DeltaCase, method: str, budget: _BsdiffBudget) -> DeltaRow:
    row = DeltaRow(case.model, case.case, method, len(case.new), None, None, None)
    if method == "bsdiff4":
        estimate = budget.estimate(len(case.base))
        if estimate > budget.left:
            note = f"skipped: est. {estimate:.0f} s > {max(budget.left, 0):.0f} s budget left"
            return DeltaRow(**{**asdict(row), "note": note})
    build, apply = METHODS[method]
    delta, build_s = _timed(lambda: build(case.new, case.base))
    rebuilt, apply_s = _timed(lambda: apply(delta, case.base, len(case.new)))
    if rebuilt != case.new:
        raise RuntimeError(f"{method} does not rebuild {case.model} / {case.case}")
    if method == "bsdiff4":
        budget.spend(len(case.base), build_s)
    return DeltaRow(case.model, case.case, method, len(case.new), len(delta), build_s, apply_s)


def _cases(big: bool) -> Iterator[DeltaCase]:
    from models.data import make_split

    split = make_split()
    yield from small_cases(split)
    if big:
        yield from big_cases(split)


def goals(rows: list[DeltaRow]) -> list[tuple[str, bool | None, str]]:
    """(goal, passed or None when not measured, evidence) for each goal of the issue."""
    out: list[tuple[str, bool | None, str]] = []
    by_key = {(r.model, r.case, r.method): r for r in rows}
    for model in dict.fromkeys(r.model for r in rows):
        best = min(
            (r for r in rows if r.model == model and r.case == CASES[0] and r.percent is not None),
            key=lambda r: r.size or 0,
        )
        ok = (best.percent or 0) <= LAST_LAYER_GOAL_PERCENT
        goal = f"{model}: last-layer fine-tune delta <= {LAST_LAYER_GOAL_PERCENT:g}%"
        out.append((goal, ok, f"{best.method} {best.percent:.2f}%"))
        for case in CASES:
            ours, theirs = by_key[(model, case, "tensor-delta")], by_key[(model, case, "bsdiff4")]
            goal = f"{model}: tensor-delta < bsdiff4, {case}"
            if theirs.size is None or ours.size is None:
                out.append((goal, None, f"bsdiff4 {theirs.note}"))
            else:
                evidence = f"{ours.percent:.2f}% vs {theirs.percent:.2f}%"
                out.append((goal, ours.size < theirs.size, evidence))
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _results_table(rows: list[DeltaRow]) -> Table:
    table = Table(title="model update payloads (size as % of the new model)")
    for column in ("model", "case", "method", "new MB", "payload KB", "% of new",
                   "build s", "apply s", "note"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("model", "case", "method",
                                                               "note") else "right")  # fmt: skip
    for r in rows:
        table.add_row(
            r.model, r.case, r.method, f"{r.new_size / 1e6:.2f}",
            _fmt(None if r.size is None else r.size / 1e3, ".1f"), _fmt(r.percent, ".2f"),
            _fmt(r.build_s, ".3f"), _fmt(r.apply_s, ".3f"), r.note,
        )  # fmt: skip
    return table


def _goals_table(rows: list[DeltaRow]) -> Table:
    table = Table(title="goals")
    for column in ("goal", "result", "evidence"):
        table.add_column(column)
    labels = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "[yellow]not measured[/]"}
    for goal, passed, evidence in goals(rows):
        table.add_row(goal, labels[passed], evidence)
    return table


def _write_csv(rows: list[DeltaRow], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "case", "method", "new_bytes", "payload_bytes", "percent",
                         "build_s", "apply_s", "note"])  # fmt: skip
        for r in rows:
            writer.writerow([
                r.model, r.case, r.method, r.new_size, _fmt(r.size, "d"), _fmt(r.percent, ".3f"),
                _fmt(r.build_s, ".4f"), _fmt(r.apply_s, ".4f"), r.note,
            ])  # fmt: skip


def _plot(rows: list[DeltaRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r.model for r in rows))
    methods = list(METHODS)
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.6), squeeze=False)
    for axis, model in zip(axes[0], models, strict=True):
        positions = np.arange(len(CASES))
        width = 0.8 / len(methods)
        floor = 0.01
        for i, method in enumerate(methods):
            found = {r.case: r.percent for r in rows if r.model == model and r.method == method}
            x = positions + (i - (len(methods) - 1) / 2) * width
            heights = [found.get(case) or 0.0 for case in CASES]
            axis.bar(x, heights, width, label=method)
            for xi, h in zip(x, heights, strict=True):
                if h == 0.0:  # skipped (bsdiff4 over its time budget): say so on the plot
                    axis.text(xi, floor * 1.2, "skipped", rotation=90, fontsize=6, ha="center")
        axis.set_yscale("log")
        axis.set_ylim(floor, 1000)
        axis.axhline(LAST_LAYER_GOAL_PERCENT, color="grey", linestyle=":", linewidth=1)
        labels = [textwrap.fill(c, 12, break_on_hyphens=False) for c in CASES]
        axis.set_xticks(positions, labels, fontsize=7)
        axis.set_ylabel("payload, % of the new model (log)")
        axis.set_title(model, fontsize=9)
        axis.legend(fontsize=7, loc="upper center", ncol=len(methods))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_delta_bench(
    out_dir: Path, big: bool = True, bsdiff_budget_s: float = 120.0
) -> list[DeltaRow]:
    """Measure every case x method, print the tables, write delta.csv and delta.png.

    The default bsdiff4 budget keeps the run under five minutes on two cores; cases it
    cannot afford (here the 51 MB retrain) are reported as skipped with the estimate.
    ``bsdiff_budget_s=float("inf")`` measures everything (about ten minutes).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    console.print(machine_info(numpy=np.__version__, zstd=_zstd_version()))
    budget = _BsdiffBudget(bsdiff_budget_s)
    rows: list[DeltaRow] = []
    for case in _cases(big):
        console.print(f"[dim]{case.model}: {case.case} ({len(case.new) / 1e6:.2f} MB)[/]")
        rows += [_measure(case, method, budget) for method in METHODS]
    order = {model: i for i, model in enumerate(dict.fromkeys(r.model for r in rows))}
    rows.sort(key=lambda r: (order[r.model], CASES.index(r.case), list(METHODS).index(r.method)))
    console.print(_results_table(rows))
    console.print(_goals_table(rows))
    _write_csv(rows, out_dir / "delta.csv")
    _plot(rows, out_dir / "delta.png")
    console.print(f"wrote {out_dir / 'delta.csv'} and {out_dir / 'delta.png'}")
    return rows


def _zstd_version() -> str:
    import pyzstd

    return str(pyzstd.zstd_version)
