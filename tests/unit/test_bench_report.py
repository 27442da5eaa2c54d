"""``edgeserve bench report``: the markdown it writes from given results, and one real run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgeserve.bench.machine import MachineInfo, collect_machine_info
from edgeserve.bench.report import Report, Section, render_markdown, write_report
from edgeserve.bench.suite import Figure, faults_figures, goal_met, run_faults

MACHINE = MachineInfo(
    cpu_model="Test CPU 9000",
    logical_cpus=2,
    memory_gib=23.5,
    os="Debian GNU/Linux 12 (bookworm)",
    kernel="Linux 6.1 x86_64",
    python="3.11.7",
    onnxruntime="1.32.0",
    onnxruntime_providers=["CPUExecutionProvider"],
    torch="2.13.0+cpu",
    torch_cuda="not available",
    gpus=[],
    git_commit="0123abc",
    git_dirty=True,
    date="2026-01-01 00:00:00 UTC",
    load_average_1m=1.5,
)


def _report() -> Report:
    ok = Section(
        "telemetry",
        "Telemetry ingest",
        "edgeserve bench telemetry",
        "ok",
        12.0,
        [
            Figure("records/s", 41911.0, "records/s", "goal rate", 20000.0, "≥ 20,000", True),
            Figure("tenant p99", 18.0, "ms", "alone", 10.0, "≤ 1.5x", False),
            Figure("records per CPU second", 51234.5, "records/s"),
        ],
        plots=["telemetry/ingest.png"],
        notes=["10 devices"],
    )
    failed = Section(
        "faults", "Fault-injection suite", "pytest tests/faults", "failed", 3.0, [],
        error="pytest exited with 1: 2 failed, 5 passed",
    )  # fmt: skip
    return Report(MACHINE, [ok, failed], "quick", "edgeserve bench report --quick", "shared box")


def test_figures_render_as_a_table_with_value_baseline_ratio_and_goal_marks():
    text = render_markdown(_report())
    assert "| records/s | 41,911 records/s | goal rate: 20,000 | 2.10x | ≥ 20,000 | ✅ |" in text
    assert "| tenant p99 | 18 ms | alone: 10 | 1.80x | ≤ 1.5x | ❌ |" in text
    assert "| records per CPU second | 51,234 records/s | - | - | - |  |" in text
    assert "![telemetry/ingest.png](telemetry/ingest.png)" in text
    assert "- 10 devices" in text


def test_a_failed_benchmark_shows_as_failed_with_its_error():
    text = render_markdown(_report())
    assert "| faults | ❌ failed | 3.0 s | - |" in text
    assert "**Failed:** pytest exited with 1: 2 failed, 5 passed" in text


def test_the_summary_counts_goals_met_per_benchmark():
    assert "| telemetry | ✅ ok | 12.0 s | 1 / 2 |" in render_markdown(_report())


def test_the_machine_and_the_header_note_are_in_the_report():
    text = render_markdown(_report())
    assert text.startswith("# edgeserve benchmark report\n\n> shared box\n")
    for row in (
        "| CPU | Test CPU 9000 |",
        "| memory | 23.5 GiB |",
        "| execution providers | CPUExecutionProvider |",
        "| GPU | none (no nvidia-smi) |",
        "| git commit | `0123abc` (uncommitted changes) |",
    ):
        assert row in text


def test_write_report_adds_the_summary_plot_and_the_figures_as_json(tmp_path):
    write_report(_report(), tmp_path)
    assert (tmp_path / "headlines.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![every headline figure" in (tmp_path / "report.md").read_text()
    document = json.loads((tmp_path / "report.json").read_text())
    assert document["sections"][0]["figures"][0]["ratio"] == pytest.approx(41911 / 20000)
    assert document["sections"][1]["status"] == "failed"


def test_machine_info_of_this_host_names_cpu_memory_and_python():
    machine = collect_machine_info()
    assert machine.logical_cpus and machine.logical_cpus >= 1
    assert machine.memory_gib and machine.memory_gib > 0
    assert machine.python.startswith("3.")
    assert "CPUExecutionProvider" in machine.onnxruntime_providers


@pytest.mark.parametrize(
    ("value", "goal", "met"),
    [(0, "== 0", True), (1, "== 0", False), (1.4, "<= 1.5x", True), (1.6, "≤ 1.5", False),
     (25000, ">= 20,000 records/s", True), (0, "0", True), (2, "0", False),
     (3, "as low as possible", None), (155, "<= budget 150 + 250", None), (1, "0 or so", None)],
)  # fmt: skip
def test_fault_goals_written_as_comparisons_are_judged(value, goal, met):
    assert goal_met(value, goal) is met


def test_fault_figures_come_from_the_suites_json():
    figures = faults_figures(
        {"corrupt activations": {"value": 0, "unit": "count", "goal": "== 0"},
         "other tenants p99 ratio": {"value": 1.9, "unit": "x", "goal": "<= 1.5"}}
    )  # fmt: skip
    assert [(f.name, f.value, f.met) for f in figures] == [
        ("corrupt activations", 0.0, True),
        ("other tenants p99 ratio", 1.9, False),
    ]


def test_the_fault_section_fails_with_a_reason_when_the_suite_is_absent(tmp_path):
    outcome = run_faults(tmp_path / "out", quick=True, tests_dir=tmp_path / "tests" / "faults")
    assert outcome.failed is not None and "not in this checkout" in outcome.failed
    assert outcome.figures == []


def test_quick_report_of_the_telemetry_benchmark_end_to_end(tmp_path):
    out = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, "-m", "edgeserve", "bench", "report", "--quick", "--only", "telemetry",
         "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    text = (out / "report.md").read_text()
    assert "| telemetry | ✅ ok |" in text
    assert "| records/s ingested (decode + dedup + store + ack) |" in text
    assert "| Python |" in text and "| git commit |" in text
    assert (out / "headlines.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "telemetry" / "results.json").read_text())["records"] > 0


def test_unknown_benchmark_names_are_refused(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "edgeserve", "bench", "report", "--only", "nope", "--out",
         str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "nope" in done.stderr and not (tmp_path / "report.md").exists()
