"""One turn of the learning loop, end to end, with the figures its goals are judged by.

``run_loop`` starts the fleet of ``learning_fleet`` (a gateway, a broker, the sync
service, four escalating agents and a hard-example collector), feeds the collector the
shifted stream, distills a new edge version from the hard examples the sync service
stored (and a deliberately worse one from shuffled labels), measures both offline
(``learning.loop_figures``), and pushes each to the fleet under the sequential gate
while the agents serve the shifted test digits. ``edgeserve eval learning-loop`` and the
demo both run it.

Goals (issue 16): the shift accuracy rises by at least ``SHIFT_GAIN_GOAL``; the clean
accuracy drops by at most ``CLEAN_LOSS_GOAL``; the new version reaches the served
cascade's accuracy with fewer escalations; the gate completes the good rollout and halts
the bad one with no device past the canary touched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeserve.artifacts import packaged_artifacts
from edgeserve.eval.fleet import BrokerKind
from edgeserve.eval.learning import LoopFigures, loop_figures
from edgeserve.eval.learning_fleet import (
    MODEL,
    RolloutOutcome,
    collect_hard_examples,
    gated_rollout,
    start_loop_fleet,
)
from models.data import load_split, make_split
from models.shift import shifted_stream
from sync.ingest import hard_examples

SHIFT_GAIN_GOAL = 0.03
CLEAN_LOSS_GOAL = 0.003
STREAM_NOISE = 0.05
Say = Callable[[str], None]


@dataclass(frozen=True)
class LoopSettings:
    epochs: int = 12
    collect_passes: int = 1  # passes of the shifted training digits through the collector
    margin_agreement: float = 0.10
    min_requests: int = 100
    rollout_timeout_s: float = 300.0
    broker_kind: BrokerKind = "auto"


@dataclass(frozen=True)
class LoopReport:
    hard_examples: int
    collect_s: float
    distill_s: float
    figures: LoopFigures
    good: RolloutOutcome
    bad: RolloutOutcome
    exit_codes: dict[str, int]  # of the fleet's processes, stopped with SIGTERM

    def goals(self) -> dict[str, bool]:
        served, new = self.figures.served, self.figures.others["distilled"]
        touched = self.bad.counts["installed"] + self.bad.counts["rolled_back"]
        touched += self.bad.counts["failed"] + self.bad.counts["assigned"]
        return {
            "shift accuracy +3 points": new.shift_accuracy - served.shift_accuracy
            >= SHIFT_GAIN_GOAL,
            "clean accuracy -0.3 points at most": served.clean_accuracy - new.clean_accuracy
            <= CLEAN_LOSS_GOAL + 1e-9,
            "same cascade accuracy, fewer escalations": new.rate_for_served_accuracy
            < self.figures.rate,
            "gate promotes it without a human": self.good.state == "completed",
            "worse model halted at the canary": self.bad.state == "halted" and touched <= 1,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "hard_examples": self.hard_examples,
            "collect_s": self.collect_s,
            "distill_s": self.distill_s,
            "figures": self.figures.as_dict(),
            "good_rollout": asdict(self.good),
            "bad_rollout": asdict(self.bad),
            "exit_codes": self.exit_codes,
            "goals": self.goals(),
        }


def run_loop(workdir: Path, settings: LoopSettings, say: Say = lambda _: None) -> LoopReport:
    # torch only when the loop trains, not whenever the CLI or the demo is imported
    from models.distill import DistillConfig, distill_edge_version

    source = packaged_artifacts()
    split = make_split(0)
    pool = np.concatenate([split.x_train, split.x_calibration])
    collect_stream = shifted_stream(pool, settings.collect_passes, STREAM_NOISE, seed=1)
    x_test, _ = load_split(source, "test")
    live = shifted_stream(x_test, 2, STREAM_NOISE, seed=2)
    say("starting a gateway, a broker, the sync service and five agents")
    fleet = start_loop_fleet(workdir / "loop", settings.broker_kind)
    try:
        started = time.perf_counter()
        say(f"the collector sees {len(collect_stream)} shifted digits")
        collect_hard_examples(fleet, collect_stream)
        collect_s = time.perf_counter() - started
        registry = fleet.registry()
        try:
            hard = hard_examples(registry, MODEL, "input").x
        finally:
            registry.close()
        say(f"distilling from the {len(hard)} hard examples the sync service stored")
        started = time.perf_counter()
        # The bank is kept: an update cannot ship a new one to the devices yet.
        good = distill_edge_version(
            workdir / "v2", hard, "2", DistillConfig(epochs=settings.epochs, rebuild_bank=False)
        )
        worse = DistillConfig(epochs=settings.epochs, rebuild_bank=False, shuffle_labels=True)
        bad = distill_edge_version(workdir / "v3", hard, "3", worse)
        distill_s = time.perf_counter() - started
        figures = loop_figures(source, {"distilled": workdir / "v2", "shuffled": workdir / "v3"})
        gate = {
            "gate_margin_agreement": settings.margin_agreement,
            "gate_min_requests": settings.min_requests,
        }
        say("pushing v2 under the sequential gate while the agents serve shifted digits")
        timeout = settings.rollout_timeout_s
        good_rollout = gated_rollout(fleet, good.artifact, good.card, live, timeout, **gate)
        say("pushing v3 (trained on shuffled labels) the same way")
        bad_rollout = gated_rollout(fleet, bad.artifact, bad.card, live, timeout, **gate)
    finally:
        codes = fleet.stop()
    return LoopReport(
        hard_examples=len(hard),
        collect_s=round(collect_s, 2),
        distill_s=round(distill_s, 2),
        figures=figures,
        good=good_rollout,
        bad=bad_rollout,
        exit_codes=codes,
    )
