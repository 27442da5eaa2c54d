"""What an experiment is: a model's unversioned name split across versions, plus a shadow.

An experiment on model ``m`` takes over ``/v2/models/m/infer`` (requests that name a
version explicitly bypass it: they asked for that version). Its *split* arms serve the
traffic in proportion to their weights; the first is the control, that every other arm
is compared with. An optional *shadow* arm receives a copy of the control-served
traffic whose answers are compared with the control's and recorded, never returned.

Assignment is sticky: the caller's key (a header or a ``parameters`` entry, as the
experiment says) is hashed with the experiment's name to a point in [0, 1), and the
point picks the arm by cumulative weight. The hash is SHA-256, not Python's ``hash``,
so every worker process and every restart sends a key to the same arm. A stopped arm's
share goes to the control, so keys on the other arms stay where they were.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from typing import Literal

from edgeserve.stats import Guardrails
from edgeserve.wire.errors import InvalidInput

Role = Literal["split", "shadow"]
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SCALE = float(1 << 64)


@dataclass(frozen=True, slots=True)
class Arm:
    version: str
    role: Role
    weight: float = 0.0  # split arms only
    stopped: str | None = None  # why the arm was stopped, or None while it runs

    @property
    def name(self) -> str:
        return self.version if self.role == "split" else f"{self.version} (shadow)"


@dataclass(frozen=True, slots=True)
class Settings:
    """The decision rules: guardrails, and what the shadow must agree on."""

    guardrails: Guardrails = field(default_factory=Guardrails)
    min_agreement: float = 0.95  # a shadow significantly below this is stopped
    alpha: float = 0.05
    shadow_queue: int = 256  # mirrored requests waiting; more are dropped and counted
    shadow_fraction: float = 1.0  # of the control's requests, mirrored to the shadow
    # Callers send labels back: record each answer (one row per request, flushed in
    # batches) so that a label can be scored against the arm that gave it.
    feedback: bool = False


@dataclass(frozen=True, slots=True)
class ExperimentSpec:
    name: str
    model: str
    arms: tuple[Arm, ...]
    key_header: str | None = None
    key_parameter: str | None = None
    settings: Settings = field(default_factory=Settings)

    def __post_init__(self) -> None:
        _check(self)

    @property
    def control(self) -> Arm:
        return self.arms[0]

    @property
    def split(self) -> tuple[Arm, ...]:
        return tuple(arm for arm in self.arms if arm.role == "split")

    @property
    def shadow(self) -> Arm | None:
        return next((a for a in self.arms if a.role == "shadow" and a.stopped is None), None)

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise InvalidInput(f"experiment {self.name!r} has no arm {name!r}")

    def assign(self, key: str | None) -> Arm:
        """The split arm for ``key`` (no key: a weighted random draw, not sticky)."""
        return pick(self.name, self.edges(), self.control, key)

    def edges(self) -> tuple[tuple[float, Arm], ...]:
        """Each split arm with the upper end of its share of [0, 1); a stopped arm's
        share is the control's."""
        total = sum(arm.weight for arm in self.split)
        edges: list[tuple[float, Arm]] = []
        edge = 0.0
        for arm in self.split:
            edge += arm.weight / total
            edges.append((edge, arm if arm.stopped is None else self.control))
        return tuple(edges)


def pick(
    experiment: str, edges: tuple[tuple[float, Arm], ...], control: Arm, key: str | None
) -> Arm:
    point = _point(experiment, key) if key is not None else random.random()
    for edge, arm in edges:
        if point < edge:
            return arm
    return control


def _point(experiment: str, key: str) -> float:
    digest = hashlib.sha256(f"{experiment}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def _check(spec: ExperimentSpec) -> None:
    if not NAME.fullmatch(spec.name):
        raise InvalidInput(f"experiment name {spec.name!r} must match {NAME.pattern}")
    split = spec.split
    if not split or spec.arms[0].role != "split":
        raise InvalidInput("an experiment needs a control: its first arm must be a split arm")
    if any(arm.weight <= 0 for arm in split):
        raise InvalidInput("every split arm needs a positive weight")
    if len(split) == 1 and len(spec.arms) == 1:
        raise InvalidInput("an experiment needs a second split arm or a shadow")
    if sum(arm.role == "shadow" for arm in spec.arms) > 1:
        raise InvalidInput("an experiment has at most one shadow arm")
    versions = [arm.version for arm in spec.arms]
    if len(set(versions)) != len(versions):
        raise InvalidInput(f"each version may be in one arm only, got {versions}")
    if spec.key_header is not None and spec.key_parameter is not None:
        raise InvalidInput("the sticky key comes from a header or a parameter, not both")
    if not 0.0 <= spec.settings.shadow_fraction <= 1.0:
        raise InvalidInput("shadow_fraction must be in [0, 1] (0: mirroring paused)")
    if spec.settings.shadow_queue < 1:
        raise InvalidInput("shadow_queue must be at least 1")
    if not 0.0 < spec.settings.min_agreement <= 1.0:
        raise InvalidInput("min_agreement must be in (0, 1]")
