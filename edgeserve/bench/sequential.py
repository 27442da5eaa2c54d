"""``edgeserve bench sequential``: the always-valid test of ``edgeserve.stats``, by simulation.

Each simulated experiment feeds two arms ``batch`` observations at a time (Bernoulli
outcomes at the scenario's rates) and asks ``compare_proportions`` for a verdict after
every batch, as the gateway does after every flush, until a verdict or the horizon.
Scenarios: A/A on agreement and on error rate (any verdict is a false stop), and a
2-point drop in agreement (a "worse" verdict is a detection). The fixed-horizon peer is
the two-sided z-test of the same alpha sized for the same power, looked at once; its
sample size is computed and its power checked by the same simulation.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist, median

import numpy as np
from rich.console import Console
from rich.table import Table

from edgeserve.stats import DEFAULT_ALPHA, Proportion, Verdict, compare_proportions

console = Console()
BASE_AGREEMENT = 0.90
DROP = 0.02
BASE_ERROR_RATE = 0.02
POWER = 0.90
GOAL_FALSE_STOP = 0.05


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    control: float
    candidate: float
    higher_is_better: bool
    wanted: Verdict | None  # None: A/A, every verdict is a false stop


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    name: str
    experiments: int
    stopped: int  # experiments that reached a verdict (A/A: false stops)
    stop_rate: float
    wanted_rate: float  # share that reached the wanted verdict (detections), A/A: 0
    median_requests: float  # both arms, at the verdict or the horizon


def simulate(
    scenario: Scenario, experiments: int, batch: int, horizon: int, seed: int
) -> ScenarioResult:
    """``experiments`` runs of up to ``horizon`` observations per arm, looked at every batch."""
    rng = np.random.default_rng(seed)
    looks = horizon // batch
    control = rng.binomial(batch, scenario.control, (experiments, looks)).cumsum(axis=1)
    candidate = rng.binomial(batch, scenario.candidate, (experiments, looks)).cumsum(axis=1)
    stopped = wanted = 0
    needed: list[float] = []
    for run in range(experiments):
        verdict, look = _first_verdict(scenario, control[run], candidate[run], batch)
        stopped += verdict is not None
        wanted += verdict is not None and verdict == scenario.wanted
        needed.append(2 * batch * (look + 1))
    return ScenarioResult(
        scenario.name,
        experiments,
        stopped,
        stopped / experiments,
        wanted / experiments,
        median(needed),
    )


def _first_verdict(
    scenario: Scenario, control: np.ndarray, candidate: np.ndarray, batch: int
) -> tuple[Verdict | None, int]:
    for look in range(len(control)):
        trials = batch * (look + 1)
        comparison = compare_proportions(
            Proportion(int(control[look]), trials),
            Proportion(int(candidate[look]), trials),
            higher_is_better=scenario.higher_is_better,
        )
        if comparison.verdict is not Verdict.UNDECIDED:
            return comparison.verdict, look
    return None, len(control) - 1


def fixed_horizon_n(p_control: float, p_candidate: float, alpha: float, power: float) -> int:
    """Per-arm sample size of the two-sided two-proportion z-test with this power."""
    z = NormalDist().inv_cdf
    spread = p_control * (1 - p_control) + p_candidate * (1 - p_candidate)
    return math.ceil((z(1 - alpha / 2) + z(power)) ** 2 * spread / (p_control - p_candidate) ** 2)


def fixed_horizon_power(
    p_control: float, p_candidate: float, n: int, alpha: float, experiments: int, seed: int
) -> float:
    """The z-test looked at once at ``n`` per arm: the share of runs that reject."""
    rng = np.random.default_rng(seed)
    a = rng.binomial(n, p_control, experiments) / n
    b = rng.binomial(n, p_candidate, experiments) / n
    pooled = (a + b) / 2
    z = (a - b) / np.sqrt(2 * pooled * (1 - pooled) / n)
    return float(np.mean(np.abs(z) > NormalDist().inv_cdf(1 - alpha / 2)))


def peeking_z_test_false_stop(
    rate: float, experiments: int, batch: int, horizon: int, alpha: float, seed: int
) -> float:
    """A/A with the fixed-horizon z-test looked at after every batch (what not to do): the
    share of runs that ever reject."""
    rng = np.random.default_rng(seed)
    looks = horizon // batch
    trials = batch * np.arange(1, looks + 1)
    a = rng.binomial(batch, rate, (experiments, looks)).cumsum(axis=1) / trials
    b = rng.binomial(batch, rate, (experiments, looks)).cumsum(axis=1) / trials
    pooled = np.clip((a + b) / 2, 1e-9, 1 - 1e-9)
    z = (a - b) / np.sqrt(2 * pooled * (1 - pooled) / trials)
    return float(np.mean((np.abs(z) > NormalDist().inv_cdf(1 - alpha / 2)).any(axis=1)))


def run_sequential_bench(
    out: Path, experiments: int = 1000, batch: int = 100, horizon: int = 12_000, seed: int = 0
) -> dict[str, object]:
    started = time.perf_counter()
    lower = BASE_AGREEMENT - DROP
    scenarios = [
        Scenario("A/A agreement 90% vs 90%", BASE_AGREEMENT, BASE_AGREEMENT, True, None),
        Scenario("A/A error rate 2% vs 2%", BASE_ERROR_RATE, BASE_ERROR_RATE, False, None),
        Scenario("agreement 90% -> 88%", BASE_AGREEMENT, lower, True, Verdict.WORSE),
    ]
    results = [simulate(s, experiments, batch, horizon, seed + i) for i, s in enumerate(scenarios)]
    n_fixed = fixed_horizon_n(BASE_AGREEMENT, lower, DEFAULT_ALPHA, POWER)
    fixed_power = fixed_horizon_power(
        BASE_AGREEMENT, lower, n_fixed, DEFAULT_ALPHA, experiments, seed
    )
    peeking = peeking_z_test_false_stop(
        BASE_AGREEMENT, experiments, batch, horizon, DEFAULT_ALPHA, seed
    )
    false_stop = max(r.stop_rate for r in results if r.name.startswith("A/A"))
    detection = results[-1]
    document: dict[str, object] = {
        "experiments_per_scenario": experiments,
        "batch_per_arm": batch,
        "horizon_per_arm": horizon,
        "alpha": DEFAULT_ALPHA,
        "scenarios": [asdict(r) for r in results],
        "fixed_horizon": {"requests": 2 * n_fixed, "power": fixed_power},
        "peeking_z_test_false_stop": peeking,
        "sequential_vs_fixed_median_requests": detection.median_requests / (2 * n_fixed),
        "goals": {
            "false_stop_max": false_stop,
            "false_stop_met": false_stop <= GOAL_FALSE_STOP,
            "power": detection.wanted_rate,
            "power_met": detection.wanted_rate >= POWER,
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    _print(document, results, n_fixed, fixed_power)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sequential.json").write_text(json.dumps(document, indent=2) + "\n")
    return document


def _print(
    document: dict[str, object], results: list[ScenarioResult], n_fixed: int, fixed_power: float
) -> None:
    title = (
        f"always-valid mSPRT, checked every {document['batch_per_arm']} per arm up to "
        f"{document['horizon_per_arm']} per arm, {document['experiments_per_scenario']} "
        f"simulated experiments each, alpha {document['alpha']}"
    )
    table = Table("scenario", "stopped", "detected", "median requests (both arms)", title=title)
    for r in results:
        detected = "-" if r.name.startswith("A/A") else f"{r.wanted_rate:.1%}"
        table.add_row(r.name, f"{r.stop_rate:.1%}", detected, f"{r.median_requests:,.0f}")
    table.add_row(
        "fixed-horizon z-test, same power (one look)", "-", f"{fixed_power:.1%}", f"{2 * n_fixed:,}"
    )
    peeking = f"{document['peeking_z_test_false_stop']:.1%}"
    table.add_row("A/A with that z-test looked at every batch", peeking, "-", "-")
    console.print(table)
    goals = document["goals"]
    assert isinstance(goals, dict)
    ratio = document["sequential_vs_fixed_median_requests"]
    console.print(
        f"false stop (worst A/A) {goals['false_stop_max']:.1%} (goal <= 5%: "
        f"{'met' if goals['false_stop_met'] else 'MISSED'}); power for a 2-point drop "
        f"{goals['power']:.1%} (goal >= 90%: {'met' if goals['power_met'] else 'MISSED'}); "
        f"median requests to detect it {ratio:.2f}x the fixed-horizon test's"
    )
