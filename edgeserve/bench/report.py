"""``edgeserve bench report``: every benchmark in one run, one folder, one ``report.md``.

Each benchmark of :data:`edgeserve.bench.suite.BENCHMARKS` runs into its own sub-folder
(its printed output goes to ``<name>/output.log``), under a progress bar over the
benchmarks. A benchmark that raises is recorded as failed with its error and the others
still run. Then ``report.md`` (machine, summary, one section per benchmark with its
headline figures, ratios to their baselines, goals ✅/❌ and links to its plots),
``report.json`` (the same figures, machine-readable) and ``headlines.png`` (every
headline ratio on one chart) are written.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgeserve.bench.machine import MachineInfo, collect_machine_info
from edgeserve.bench.suite import BENCHMARKS, Benchmark, Figure, Outcome

__all__ = ["Report", "Section", "render_markdown", "run_report", "write_report"]

SUMMARY_PLOT = "headlines.png"
MARKS = {True: "✅", False: "❌", None: "-"}


@dataclass
class Section:
    name: str
    title: str
    command: str
    status: Literal["ok", "failed"]
    seconds: float
    figures: list[Figure]
    plots: list[str] = field(default_factory=list)  # relative to the report folder
    notes: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Report:
    machine: MachineInfo
    sections: list[Section]
    mode: Literal["full", "quick"]
    command: str
    note: str
    wall_seconds: float = 0.0


def run_report(
    out: Path, quick: bool = False, only: Sequence[str] | None = None, note: str | None = None
) -> Report:
    """Run the chosen benchmarks (all by default) into ``out`` and write the report there."""
    names = list(only or BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise ValueError(f"no benchmark named {unknown}; choose from {list(BENCHMARKS)}")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    machine = collect_machine_info()
    command = "edgeserve bench report" + (" --quick" if quick else "")
    command += f" --only {','.join(names)}" if only else ""
    report = Report(machine, [], "quick" if quick else "full", command, "")
    # The benchmarks print to stdout; this console keeps the real one for the progress bar.
    console = Console(file=sys.stdout)
    with _progress(console) as progress:
        task = progress.add_task("benchmarks", total=len(names))
        for name in names:
            progress.update(task, description=name)
            section = run_section(BENCHMARKS[name], out, quick)
            report.sections.append(section)
            mark = "ok" if section.status == "ok" else f"[red]FAILED[/]: {section.error}"
            progress.console.print(f"{name}: {mark} ({_duration(section.seconds)})")
            progress.advance(task)
    report.wall_seconds = time.perf_counter() - started
    report.note = " ".join(filter(None, [note, default_note(machine, collect_load())]))
    write_report(report, out)
    return report


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def run_section(benchmark: Benchmark, out: Path, quick: bool) -> Section:
    """One benchmark into ``out/<name>``, its printed output into ``output.log`` there."""
    folder = out / benchmark.name
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with (folder / "output.log").open("w") as log:
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                outcome = benchmark.run(folder, quick)
        except Exception as exc:  # any benchmark failure becomes a failed section
            log.write(traceback.format_exc())
            outcome = Outcome([], failed=f"{type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - started
    plots = sorted(str(p.relative_to(out)) for p in folder.rglob("*.png"))
    return Section(
        benchmark.name,
        benchmark.title,
        benchmark.command,
        "failed" if outcome.failed else "ok",
        seconds,
        outcome.figures,
        plots,
        outcome.notes,
        outcome.failed,
    )


def collect_load() -> float:
    import os

    return round(os.getloadavg()[0], 2)


def default_note(machine: MachineInfo, load_at_end: float) -> str:
    return (
        f"{machine.logical_cpus} logical CPUs; load average {machine.load_average_1m} at the "
        f"start and {load_at_end} at the end. Other work on the machine moves absolute "
        "figures; the ratios, taken between contenders interleaved in the same run, move less."
    )


def write_report(report: Report, out: Path) -> None:
    """``report.md``, ``report.json`` and (when any figure has a baseline) the summary PNG."""
    plotted = plot_headlines(report.sections, out / SUMMARY_PLOT)
    (out / "report.md").write_text(render_markdown(report, summary_plot=plotted))
    document = {
        "machine": report.machine.as_dict(),
        "mode": report.mode,
        "command": report.command,
        "note": report.note,
        "wall_seconds": round(report.wall_seconds, 1),
        "sections": [_section_json(section) for section in report.sections],
    }
    (out / "report.json").write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def _section_json(section: Section) -> dict[str, Any]:
    data = asdict(section)
    data["seconds"] = round(section.seconds, 1)
    for figure, entry in zip(section.figures, data["figures"], strict=True):
        entry["ratio"] = figure.ratio
    return data


# -- markdown ----------------------------------------------------------------------------


def render_markdown(report: Report, summary_plot: bool = True) -> str:
    lines = [
        "# edgeserve benchmark report",
        "",
        f"> {report.note}" if report.note else "",
        "",
        f"`{report.command}` — {report.mode} run, {_duration(report.wall_seconds)} in all.",
        "Each benchmark's own files (CSV, JSON, plots, printed output) are in its folder.",
        "",
        "## Machine",
        "",
        *_machine_table(report.machine),
        "",
        "## Summary",
        "",
        "| benchmark | status | wall time | goals met |",
        "| --- | --- | ---: | ---: |",
        *(_summary_row(section) for section in report.sections),
        "",
    ]
    if summary_plot:
        lines += [f"![every headline figure as a ratio to its baseline]({SUMMARY_PLOT})", ""]
    for section in report.sections:
        lines += _section_lines(section)
    return "\n".join(lines).replace("\n\n\n", "\n\n") + "\n"


def _machine_table(machine: MachineInfo) -> list[str]:
    gpus = "; ".join(machine.gpus) or "none (no nvidia-smi)"
    commit = machine.git_commit or "unknown (not a git checkout)"
    dirty = {True: " (uncommitted changes)", False: " (clean)", None: ""}[machine.git_dirty]
    memory = f"{machine.memory_gib} GiB" if machine.memory_gib is not None else "unknown"
    rows = [
        ("CPU", machine.cpu_model or "unknown"),
        ("logical CPUs", str(machine.logical_cpus)),
        ("memory", memory),
        ("OS", machine.os),
        ("kernel", machine.kernel),
        ("Python", machine.python),
        ("onnxruntime", machine.onnxruntime or "not installed"),
        ("execution providers", ", ".join(machine.onnxruntime_providers) or "-"),
        ("torch", machine.torch or "not installed"),
        ("torch CUDA", machine.torch_cuda or "-"),
        ("GPU", gpus),
        ("git commit", f"`{commit}`{dirty}"),
        ("date", machine.date),
        ("load average (1 min) at start", str(machine.load_average_1m)),
    ]
    return ["| | |", "| --- | --- |", *(f"| {key} | {value} |" for key, value in rows)]


def _summary_row(section: Section) -> str:
    status = "✅ ok" if section.status == "ok" else "❌ failed"
    judged = [f.met for f in section.figures if f.met is not None]
    goals = f"{sum(judged)} / {len(judged)}" if judged else "-"
    return f"| {section.name} | {status} | {_duration(section.seconds)} | {goals} |"


def _section_lines(section: Section) -> list[str]:
    lines = [
        f"## {section.name}: {section.title}",
        "",
        f"`{section.command}` · {_duration(section.seconds)} · files in `{section.name}/`",
        "",
    ]
    if section.status == "failed":
        lines += [f"**Failed:** {section.error}", ""]
    if section.figures:
        lines += ["| figure | value | baseline | ratio | goal | met |",
                  "| --- | ---: | ---: | ---: | --- | :---: |"]  # fmt: skip
        lines += [_figure_row(figure) for figure in section.figures]
        lines.append("")
    elif section.status == "ok":
        lines += ["No headline figures.", ""]
    lines += [f"- {note}" for note in section.notes]
    if section.notes:
        lines.append("")
    for plot in section.plots:
        lines += [f"![{plot}]({plot})", ""]
    return lines


def _figure_row(figure: Figure) -> str:
    value = "not measured" if figure.value is None else f"{fmt(figure.value)} {figure.unit}"
    baseline = "-"
    if figure.baseline is not None:
        number = "-" if figure.baseline_value is None else fmt(figure.baseline_value)
        baseline = f"{figure.baseline}: {number}"
    ratio = "-" if figure.ratio is None else f"{figure.ratio:.2f}x"
    goal = figure.goal or "-"
    mark = MARKS[figure.met] if figure.goal else ""
    return f"| {figure.name} | {value} | {baseline} | {ratio} | {goal} | {mark} |"


def fmt(value: float) -> str:
    """Three significant figures, thousands separated: 0.0523, 34.1, 1,234, 41,911."""
    if value == 0 or abs(value) >= 100 or float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:,.{max(0, 2 - int(f'{abs(value):e}'.split('e')[1]))}f}"


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{seconds:.1f} s"


# -- summary plot ------------------------------------------------------------------------


def plot_headlines(sections: list[Section], path: Path) -> bool:
    """One bar per figure that has a baseline: its ratio, coloured by its goal; False (and
    no file) when no figure has one."""
    bars = [
        (f"{section.name}: {figure.name}", ratio, figure.met)
        for section in sections
        for figure in section.figures
        if (ratio := figure.ratio) is not None and ratio > 0
    ]
    path.unlink(missing_ok=True)
    if not bars:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {True: "tab:green", False: "tab:red", None: "tab:grey"}
    fig, axis = plt.subplots(figsize=(10, 0.32 * len(bars) + 1.2))
    positions = range(len(bars))
    drawn = axis.barh(positions, [b[1] for b in bars], color=[colours[b[2]] for b in bars])
    axis.bar_label(drawn, fmt="%.2fx", fontsize=6, padding=2)
    axis.set_yticks(list(positions), [_shorten(b[0]) for b in bars], fontsize=7)
    axis.invert_yaxis()
    axis.set_xscale("log")
    axis.axvline(1.0, color="black", linewidth=0.8)
    axis.set_xlabel("value / baseline (log); green: goal met, red: missed, grey: no goal")
    axis.set_title("headline figures relative to their baselines", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _shorten(label: str, limit: int = 70) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"
