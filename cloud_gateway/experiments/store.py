"""Experiments, their arms and their per-arm counts, in one SQLite file.

Shared by every gateway worker process and the admin CLI, like the tenants database.
Workers add their counts (``flush``: one transaction per flush, whatever the traffic)
and read the running experiments back. With feedback on, they also record each answer's
labels so that a label sent later to any worker (``feedback``, keyed by request id) is
scored against the arm that answered: whichever of answer and label arrives second
scores it, so no step ever scans the table; ``settle`` forgets what was never matched
within ``RETENTION_S``.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_gateway.experiments.schema import connect, migrate, transaction, translated
from cloud_gateway.experiments.spec import Arm, ExperimentSpec, Settings
from cloud_gateway.experiments.tally import Tally
from edgeserve.stats import Guardrails, LatencyHistogram
from edgeserve.wire.errors import (
    EdgeServeError,
    ErrorCode,
    InternalError,
    InvalidInput,
    ModelNotFound,
)

RETENTION_S = 3600.0


class ExperimentNotFound(ModelNotFound):
    pass


class ExperimentConflict(EdgeServeError):
    code = ErrorCode.CONFLICT


@dataclass(frozen=True, slots=True)
class Prediction:
    """One arm's answer to one request: its top label per row."""

    request_id: str
    experiment: str
    version: str
    labels: list[str]


@dataclass(frozen=True, slots=True)
class Experiment:
    spec: ExperimentSpec
    status: str  # running | stopped
    reason: str | None
    created_at: float


class ExperimentStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn = connect(path)
        try:
            migrate(self._conn, self._lock, path)
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ExperimentStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- experiments ----------------------------------------------------------------------

    def create(self, spec: ExperimentSpec) -> None:
        settings = dataclasses.asdict(spec.settings)
        try:
            with transaction(self._conn, self._lock) as conn:
                conn.execute(
                    "INSERT INTO experiments (name, model, key_header, key_parameter, settings,"
                    " status, created_at) VALUES (?, ?, ?, ?, ?, 'running', ?)",
                    (spec.name, spec.model, spec.key_header, spec.key_parameter,
                     json.dumps(settings), time.time()),
                )  # fmt: skip
                for position, arm in enumerate(spec.arms):
                    conn.execute(
                        "INSERT INTO arms VALUES (?, ?, ?, ?, ?, NULL)",
                        (spec.name, arm.version, arm.role, arm.weight, position),
                    )
        except InternalError as exc:  # sqlite's IntegrityError, translated
            raise _conflict(exc, spec) from exc

    def get(self, name: str) -> Experiment:
        found = self._load("WHERE name = ?", (name,))
        if not found:
            raise ExperimentNotFound(f"no experiment named {name!r}")
        return found[0]

    def all(self) -> list[Experiment]:
        return self._load("ORDER BY created_at", ())

    def running(self) -> list[Experiment]:
        return self._load("WHERE status = 'running' ORDER BY name", ())

    def stop(self, name: str, reason: str) -> bool:
        """Stop the experiment (its model's traffic goes back to the default version);
        False if it had already stopped."""
        self.get(name)
        with transaction(self._conn, self._lock) as conn:
            changed = conn.execute(
                "UPDATE experiments SET status = 'stopped', reason = ?, stopped_at = ?"
                " WHERE name = ? AND status = 'running'",
                (reason, time.time(), name),
            ).rowcount
        return changed > 0

    def stop_arm(self, name: str, version: str, reason: str) -> bool:
        """Stop one arm (the first reason wins: workers may decide at the same time)."""
        with transaction(self._conn, self._lock) as conn:
            changed = conn.execute(
                "UPDATE arms SET stopped = ? WHERE experiment = ? AND version = ?"
                " AND stopped IS NULL",
                (reason, name, version),
            ).rowcount
        return changed > 0

    # -- counts ---------------------------------------------------------------------------

    def flush(
        self, tallies: dict[tuple[str, str], Tally], predictions: Sequence[Prediction]
    ) -> None:
        """Add a worker's counts ((experiment, version) -> tally) and its predictions: one
        whose label is already in is scored at once, the others wait for their label."""
        with transaction(self._conn, self._lock) as conn:
            for (experiment, version), tally in tallies.items():
                _add_counts(conn, experiment, version, tally)
            now = time.time()
            waiting = []
            for p in predictions:
                truth = conn.execute(
                    "SELECT labels FROM labels WHERE request_id = ? AND experiment = ?",
                    (p.request_id, p.experiment),
                ).fetchone()
                if truth is None:
                    row = (p.request_id, p.experiment, p.version, json.dumps(p.labels), now)
                    waiting.append(row)
                else:
                    _score(conn, p.experiment, p.version, p.labels, json.loads(truth[0]))
            conn.executemany("INSERT OR REPLACE INTO predictions VALUES (?, ?, ?, ?, ?)", waiting)

    def totals(self, name: str) -> dict[str, Tally]:
        """Every arm's counts so far (all workers' flushes), by version."""
        columns = ", ".join(Tally.COUNTS)
        with self._lock, translated():
            rows = self._conn.execute(
                f"SELECT version, {columns}, latency FROM counts WHERE experiment = ?", (name,)
            ).fetchall()
        totals: dict[str, Tally] = {}
        for version, *counts, latency in rows:
            tally = Tally(*counts)
            tally.latency = LatencyHistogram(json.loads(latency))
            totals[version] = tally
        return totals

    # -- labels ---------------------------------------------------------------------------

    def feedback(self, name: str, request_id: str, labels: list[str]) -> int:
        """Record the true labels of a request and score the answers already flushed for
        it; returns how many there were (0: not flushed yet, or unknown; an answer
        flushed later is scored then, within ``RETENTION_S``)."""
        with transaction(self._conn, self._lock) as conn:
            rows = conn.execute(
                "SELECT version, labels FROM predictions WHERE request_id = ? AND experiment = ?",
                (request_id, name),
            ).fetchall()
            for version, predicted in rows:
                if len(json.loads(predicted)) != len(labels):
                    raise InvalidInput(
                        f"request {request_id!r} had {len(json.loads(predicted))} rows"
                        f" (version {version}), feedback has {len(labels)} labels"
                    )
            for version, predicted in rows:
                _score(conn, name, version, json.loads(predicted), labels)
            conn.execute(
                "DELETE FROM predictions WHERE request_id = ? AND experiment = ?",
                (request_id, name),
            )
            # Kept: the shadow's answer to the same request may be flushed later.
            conn.execute(
                "INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?)",
                (request_id, name, json.dumps(labels), time.time()),
            )
        return len(rows)

    def settle(self, now: float | None = None) -> None:
        """Forget predictions and labels older than ``RETENTION_S`` (never matched)."""
        cutoff = (now or time.time()) - RETENTION_S
        with transaction(self._conn, self._lock) as conn:
            conn.execute("DELETE FROM predictions WHERE at < ?", (cutoff,))
            conn.execute("DELETE FROM labels WHERE at < ?", (cutoff,))

    # -- plumbing -------------------------------------------------------------------------

    def _load(self, where: str, params: tuple[Any, ...]) -> list[Experiment]:
        with self._lock, translated():
            rows = self._conn.execute(
                "SELECT name, model, key_header, key_parameter, settings, status, reason,"
                f" created_at FROM experiments {where}",
                params,
            ).fetchall()
            arms = {row[0]: self._arms(row[0]) for row in rows}
        return [_experiment(row, arms[row[0]]) for row in rows]

    def _arms(self, name: str) -> list[Arm]:
        rows = self._conn.execute(
            "SELECT version, role, weight, stopped FROM arms WHERE experiment = ?"
            " ORDER BY position",
            (name,),
        ).fetchall()
        return [Arm(version, role, weight, stopped) for version, role, weight, stopped in rows]


def _experiment(row: Sequence[Any], arms: list[Arm]) -> Experiment:
    name, model, key_header, key_parameter, settings, status, reason, created_at = row
    raw = json.loads(settings)
    raw["guardrails"] = Guardrails(**raw["guardrails"])
    spec = ExperimentSpec(name, model, tuple(arms), key_header, key_parameter, Settings(**raw))
    return Experiment(spec, status, reason, created_at)


def _add_counts(conn: sqlite3.Connection, experiment: str, version: str, tally: Tally) -> None:
    row = conn.execute(
        "SELECT latency FROM counts WHERE experiment = ? AND version = ?", (experiment, version)
    ).fetchone()
    latency = tally.latency
    if row is not None:
        latency = LatencyHistogram(json.loads(row[0]))
        latency.merge(tally.latency)
    columns = ", ".join(Tally.COUNTS)
    updates = ", ".join(f"{c} = {c} + excluded.{c}" for c in Tally.COUNTS)
    conn.execute(
        f"INSERT INTO counts (experiment, version, {columns}, latency)"
        f" VALUES (?, ?, {', '.join('?' * len(Tally.COUNTS))}, ?)"
        f" ON CONFLICT (experiment, version) DO UPDATE SET {updates}, latency = excluded.latency",
        (experiment, version, *(getattr(tally, c) for c in Tally.COUNTS),
         json.dumps(latency.counts)),
    )  # fmt: skip


def _score(
    conn: sqlite3.Connection, experiment: str, version: str, predicted: list[str], truth: list[str]
) -> None:
    pairs = list(zip(predicted, truth, strict=False))
    correct = sum(p == t for p, t in pairs)
    _add_counts(conn, experiment, version, Tally(labelled=len(pairs), correct=correct))


def _conflict(exc: EdgeServeError, spec: ExperimentSpec) -> EdgeServeError:
    """A duplicate name or a second running experiment on a model, said plainly."""
    text = exc.message
    if "UNIQUE" in text and "experiments.name" in text:
        return ExperimentConflict(f"an experiment named {spec.name!r} already exists")
    if "UNIQUE" in text:
        return ExperimentConflict(
            f"model {spec.model!r} already has a running experiment: stop it first"
        )
    return exc
