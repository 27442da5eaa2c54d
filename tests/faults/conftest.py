"""Fixtures of the fault-injection suite: figures, soak options, namespaces, fleets.

Every test here injects a real fault — a network namespace whose veth link is cut or
flapped, a TCP proxy that delays, stalls, resets or loses connections, ``kill -9`` of a
process, a tmpfs that fills up, a tenant's flood — and records what it measured with the
session's ``figures``. At the end of the run ``pytest_terminal_summary`` prints them as
one table and, when ``EDGESERVE_FAULT_FIGURES`` names a file, writes them there as flat
JSON (``{"name": {"value": n, "unit": "...", "goal": "..."}}``) for the benchmark report.

``--soak`` (with ``--soak-minutes N``) runs the long forms: many more kill iterations,
longer flapping, repeated broker storms.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edgeserve.testing.netns import NetNamespace, available
from tests.faults.fleet import Release, build_release

FIGURES_ENV = "EDGESERVE_FAULT_FIGURES"


@dataclass
class Figure:
    value: float
    unit: str
    goal: str


@dataclass
class Figures:
    """Measured figures by name; counters add up across tests, ``put`` overwrites."""

    items: dict[str, Figure] = field(default_factory=dict)

    def count(self, name: str, value: float, unit: str, goal: str) -> None:
        previous = self.items.get(name)
        total = value + (previous.value if previous is not None else 0)
        self.items[name] = Figure(total, unit, goal)

    def put(self, name: str, value: float, unit: str, goal: str) -> None:
        self.items[name] = Figure(value, unit, goal)

    def as_json(self) -> dict[str, dict[str, float | str]]:
        return {
            name: {"value": f.value, "unit": f.unit, "goal": f.goal}
            for name, f in sorted(self.items.items())
        }


_FIGURES = pytest.StashKey[Figures]()


@dataclass(frozen=True)
class Soak:
    """How long the soak forms run; ``enabled`` False means the short, normal forms."""

    enabled: bool
    minutes: float

    @property
    def seconds(self) -> float:
        return self.minutes * 60.0


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("faults", "fault-injection suite")
    group.addoption("--soak", action="store_true", help="run the long fault soak")
    group.addoption(
        "--soak-minutes", type=float, default=10.0, help="minutes the soak tests run (each)"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_FIGURES] = Figures()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    figures = terminalreporter.config.stash.get(_FIGURES, None)
    if figures is None or not figures.items:
        return
    terminalreporter.section("fault-injection figures")
    terminalreporter.write_line(f"{'figure':<40} {'value':>12}  {'unit':<14} goal")
    for name, figure in sorted(figures.items.items()):
        value = f"{figure.value:.3g}" if figure.value % 1 else f"{int(figure.value)}"
        terminalreporter.write_line(f"{name:<40} {value:>12}  {figure.unit:<14} {figure.goal}")
    target = os.environ.get(FIGURES_ENV)
    if target:
        Path(target).write_text(json.dumps(figures.as_json(), indent=2) + "\n")
        terminalreporter.write_line(f"figures written to {target}")


@pytest.fixture(scope="session")
def figures(pytestconfig: pytest.Config) -> Figures:
    return pytestconfig.stash[_FIGURES]


@pytest.fixture(scope="session")
def soak(pytestconfig: pytest.Config) -> Soak:
    # getoption with a default: when this conftest is not an initial one (the whole
    # suite run from the root), its options were never registered.
    enabled = bool(pytestconfig.getoption("--soak", default=False))
    minutes = float(pytestconfig.getoption("--soak-minutes", default=10.0))
    return Soak(enabled, minutes)


@pytest.fixture
def netns() -> Iterator[NetNamespace]:
    """A fresh namespace with a veth link to the host, always removed afterwards."""
    reason = available()
    if reason is not None:
        pytest.skip(reason)
    with NetNamespace("flt") as namespace:
        yield namespace


@pytest.fixture(scope="session")
def v2(tmp_path_factory: pytest.TempPathFactory) -> Release:
    """A real fine-tuned version 2 of the edge model (trained once per session)."""
    return build_release(tmp_path_factory.mktemp("v2"))
