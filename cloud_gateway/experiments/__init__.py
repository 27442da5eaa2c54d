"""Experiments on the gateway: a model's traffic split across versions, a shadow version
mirrored and compared, per-arm counts in SQLite, decisions by ``edgeserve.stats``.

- ``spec``: what an experiment is, and sticky assignment by a hashed caller key.
- ``store``/``schema``: the SQLite file (experiments, arms, summed counts, predictions
  and labels for accuracy) shared by every worker process and the CLI.
- ``live``: one running experiment in one process (counts, the shadow's bounded queue).
- ``runtime``: the process's experiments and the ticker that flushes and decides.
- ``decide``: guardrails and sequential tests that stop arms.
- ``cli``: the bodies of ``edgeserve gateway experiment create|show|stop``.

Nothing here knows HTTP or gRPC: the core calls it, both front doors call the core.
"""

from cloud_gateway.experiments.live import LiveExperiment, Mirrored, top_labels
from cloud_gateway.experiments.runtime import Experiments
from cloud_gateway.experiments.spec import Arm, ExperimentSpec, Settings
from cloud_gateway.experiments.store import (
    Experiment,
    ExperimentConflict,
    ExperimentNotFound,
    ExperimentStore,
)
from cloud_gateway.experiments.tally import Tally

__all__ = [
    "Arm",
    "Experiment",
    "ExperimentConflict",
    "ExperimentNotFound",
    "ExperimentSpec",
    "ExperimentStore",
    "Experiments",
    "LiveExperiment",
    "Mirrored",
    "Settings",
    "Tally",
    "top_labels",
]
