"""The experiments of one gateway process: the model -> experiment map and its ticker.

``active`` maps a model's name to its running experiment: the one dict lookup a request
to any model pays. Every ``FLUSH_INTERVAL_S`` the ticker, in a thread so the event loop
never waits on SQLite, adds this process's counts to the shared database, scores labels
that came back, stops arms that a guardrail or a sequential test condemns (over the sum
of every process's counts), and reads the running experiments back, so an experiment
created, changed or stopped from the CLI (or by another worker) takes effect here
within a tick.

Where the counts live with ``workers = N``: in each process between flushes, and summed
in the database (the shared source of truth the decisions and ``experiment show``
read). A decision is idempotent (``UPDATE ... WHERE stopped IS NULL``), so workers that
decide at once agree; a stopped arm reaches every worker within a tick. An experiment
whose candidates are all stopped keeps running on the control alone until an operator
stops it: stopping it by itself would send the traffic to the model's default version,
which is often the very candidate just condemned (the newest).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from cloud_gateway.experiments.decide import arms_to_stop
from cloud_gateway.experiments.live import LiveExperiment, ShadowRun
from cloud_gateway.experiments.store import (
    Experiment,
    ExperimentConflict,
    ExperimentStore,
    Prediction,
)
from cloud_gateway.experiments.tally import Tally
from cloud_gateway.metrics import GatewayMetrics
from edgeserve.logs import LogThrottle
from edgeserve.wire.errors import EdgeServeError, InvalidInput, ModelNotFound

log = logging.getLogger(__name__)
FLUSH_INTERVAL_S = 0.5
MAX_LABELS = 4096
MAX_REQUEST_ID = 128


@dataclass(frozen=True, slots=True)
class Flush:
    tallies: dict[tuple[str, str], Tally]
    predictions: list[Prediction]


class Experiments:
    def __init__(
        self, path: Path, metrics: GatewayMetrics, interval_s: float = FLUSH_INTERVAL_S
    ) -> None:
        self.path = path
        self.metrics = metrics
        self.interval_s = interval_s
        self.active: dict[str, LiveExperiment] = {}
        self._retired: list[LiveExperiment] = []
        self._store: ExperimentStore | None = None
        self._run_shadow: ShadowRun | None = None
        self._task: asyncio.Task[None] | None = None
        self._failures = LogThrottle(log, 30.0)

    async def start(self, run_shadow: ShadowRun) -> None:
        """Open the database, load the running experiments, start the ticker."""
        self._run_shadow = run_shadow
        self._store = await asyncio.to_thread(ExperimentStore, self.path)
        self._apply(await asyncio.to_thread(self._store.running))
        self._task = asyncio.get_running_loop().create_task(self._tick_forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._store is not None:
            with contextlib.suppress(EdgeServeError):
                await self.tick()  # the last counts
            self._store.close()
        for live in [*self.active.values(), *self._retired]:
            await live.close()
        self.active.clear()
        self._retired = []

    async def tick(self) -> None:
        """Flush, settle labels, decide, and pick up changes: one round trip to SQLite."""
        if self._store is None:
            return
        flush = self._take()
        try:
            running = await asyncio.to_thread(self._sync_tick, self._store, flush)
        except EdgeServeError as exc:
            self._give_back(flush)
            self._failures.log(logging.WARNING, "tick", "experiments flush failed",
                               {"reason": exc.message})  # fmt: skip
            return
        self._count(flush)
        self._apply(running)

    async def feedback(self, model: str, request_id: object, labels: object) -> int:
        """Labels for an earlier request to ``model``'s running experiment."""
        live = self.active.get(model)
        if live is None or self._store is None:
            raise ModelNotFound(f"model {model!r} has no running experiment to take feedback")
        if not live.spec.settings.feedback:
            raise ExperimentConflict(
                f"experiment {live.name!r} does not take feedback: create it with --feedback"
            )
        if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID:
            raise InvalidInput(f"feedback needs 'id': the request's id (1-{MAX_REQUEST_ID} chars)")
        if (
            not isinstance(labels, list)
            or not 0 < len(labels) <= MAX_LABELS
            or not all(isinstance(label, str | int) for label in labels)
        ):
            raise InvalidInput("feedback needs 'labels': one label (string or integer) per row")
        truth = [str(label) for label in labels]
        return await asyncio.to_thread(self._store.feedback, live.name, request_id, truth)

    # -- plumbing -------------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.tick()

    def _take(self) -> Flush:
        tallies: dict[tuple[str, str], Tally] = {}
        predictions: list[Prediction] = []
        for live in [*self.active.values(), *self._retired]:
            own, recorded = live.take()
            for version, tally in own.items():
                tallies.setdefault((live.name, version), Tally()).add(tally)
            predictions += recorded
        return Flush(tallies, predictions)

    def _give_back(self, flush: Flush) -> None:
        for live in [*self.active.values(), *self._retired]:
            own = {v: t for (name, v), t in flush.tallies.items() if name == live.name}
            live.give_back(own, [p for p in flush.predictions if p.experiment == live.name])

    @staticmethod
    def _sync_tick(store: ExperimentStore, flush: Flush) -> list[Experiment]:
        store.flush(flush.tallies, flush.predictions)
        store.settle()
        for experiment in store.running():
            spec = experiment.spec
            for arm, reason in arms_to_stop(spec, store.totals(spec.name)):
                if store.stop_arm(spec.name, arm.version, reason):
                    log.warning("experiment arm stopped", extra={
                        "experiment": spec.name, "arm": arm.name, "reason": reason})  # fmt: skip
        return store.running()

    def _apply(self, running: list[Experiment]) -> None:
        """Make the active map the running experiments. One that changed (an arm
        stopped) is updated in place; one that stopped is retired: requests still in flight
        hold it, so its counts are taken once more at the next tick, then it is dropped."""
        assert self._run_shadow is not None
        fresh: dict[str, LiveExperiment] = {}
        for experiment in running:
            spec = experiment.spec
            current = self.active.get(spec.model)
            if current is not None and current.name == spec.name:
                if current.spec != spec:
                    current.update(spec)
                fresh[spec.model] = current
            else:
                fresh[spec.model] = LiveExperiment(spec, self._run_shadow)
                log.info("experiment active", extra={"experiment": spec.name, "model": spec.model})
        gone = [live for model, live in self.active.items() if fresh.get(model) is not live]
        # In place: the core holds this very dict.
        self.active.clear()
        self.active.update(fresh)
        for live in self._retired:
            asyncio.get_running_loop().create_task(live.close())
        self._retired = gone

    def _count(self, flush: Flush) -> None:
        metrics = self.metrics
        for (name, version), tally in flush.tallies.items():
            arm = _arm_name(self.active, name, version)
            if tally.requests - tally.errors:
                metrics.experiment_requests.labels(name, arm, "ok").inc(
                    tally.requests - tally.errors
                )
            if tally.errors:
                metrics.experiment_requests.labels(name, arm, "error").inc(tally.errors)
            if tally.compared:
                metrics.experiment_compared.labels(name, "yes").inc(tally.agreed)
                metrics.experiment_compared.labels(name, "no").inc(tally.compared - tally.agreed)
            if tally.dropped:
                metrics.experiment_dropped.labels(name).inc(tally.dropped)


def _arm_name(active: dict[str, LiveExperiment], name: str, version: str) -> str:
    for live in active.values():
        if live.name == name:
            for arm in live.spec.arms:
                if arm.version == version:
                    return arm.name
    return version
