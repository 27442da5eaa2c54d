"""The read-only rows the registry hands out, so no caller depends on its table layout.

Everything that crosses the registry's boundary is a frozen dataclass with typed fields
(JSON columns already parsed into wire types), so the service, the admin API and the
rollout controller never touch SQLite rows or re-parse JSON. ``dataclasses.asdict``
turns any of them into a JSON-ready dict for the admin API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from edgeserve.stats import Proportion
from edgeserve.wire.model_card import ModelCard
from edgeserve.wire.sync_messages import RunningModel

RolloutState = Literal["running", "completed", "halted", "rolled_back", "superseded"]
DeviceRolloutState = Literal["pending", "assigned", "installed", "failed", "rolled_back"]


@dataclass(frozen=True, slots=True)
class VersionRow:
    model: str
    version: str
    sha256: str
    size: int
    format: str
    card: ModelCard
    created: float


@dataclass(frozen=True, slots=True)
class DeviceRow:
    device_id: str
    group: str
    labels: dict[str, str]
    agent_version: str
    online: bool
    last_seen: float
    running: dict[str, RunningModel]
    desired_revision: int

    def running_version(self, model: str) -> str | None:
        running = self.running.get(model)
        return running.version if running is not None else None


@dataclass(frozen=True, slots=True)
class IssueRow:
    """A payload issued to one device: the only update ids that device may fetch chunks of."""

    device_id: str
    model: str
    version: str
    update_id: str
    payload_sha256: str
    chunk_count: int
    created: float


@dataclass(frozen=True, slots=True)
class RolloutRow:
    id: int
    model: str
    version: str
    group: str | None
    spec: dict[str, Any]
    state: RolloutState
    stage: int
    stage_started: float
    created: float
    updated: float
    reason: str
    gate: dict[str, Any] = field(default_factory=dict)  # stage (str) -> the gate's last look


@dataclass(frozen=True, slots=True)
class RolloutDeviceRow:
    """One target device of a rollout; ``from_version`` is what it ran when assigned."""

    rollout_id: int
    device_id: str
    stage: int
    from_version: str | None
    state: DeviceRolloutState
    reason: str
    updated: float


@dataclass(frozen=True, slots=True)
class RolloutView:
    """A rollout as an operator sees it: where it stands and every device's state.

    ``counts`` maps each device state to how many devices are in it (for progress bars);
    ``stage_sizes`` is the number of devices in each stage, canary first; ``spec`` the
    ``RolloutSpec`` it runs under, as a dict.
    """

    id: int
    model: str
    version: str
    group: str | None
    state: RolloutState
    stage: int
    stage_sizes: tuple[int, ...]
    reason: str
    created: float
    updated: float
    devices: tuple[RolloutDeviceRow, ...]
    counts: dict[str, int] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)  # sequential gate: stage -> last look

    @property
    def total(self) -> int:
        return len(self.devices)


@dataclass(frozen=True, slots=True)
class VersionSummary:
    """Telemetry of one model version across the fleet.

    ``devices`` counts devices that sent telemetry for this version, ``running`` those
    that report running it now. Rates are over requests; ``agreement`` is the mean of the
    edge/cloud agreement of escalated requests (None when none was measured); ``dropped``
    sums the all-time drop counters of the devices that reported this version.
    ``score_quantiles`` is the 10th/50th/90th percentile of the requests' router scores
    (their lowest row's): a shift in the inputs shows there first, even while each device
    holds its escalation rate.
    """

    model: str
    version: str
    devices: int
    running: int
    requests: int
    rows: int
    escalation_rate: float
    agreement: float | None
    p50_latency_ms: float
    p99_latency_ms: float
    error_rate: float
    degraded_rate: float
    cache_hit_rate: float
    dropped: int
    score_quantiles: tuple[float, float, float] | None = None


@dataclass(frozen=True, slots=True)
class CohortCounts:
    """What one cohort's telemetry says since the stage started."""

    requests: int = 0
    errors: int = 0
    scored: int = 0  # requests with a router score
    below: int = 0  # of those, scored below the reference threshold
    measured: int = 0  # escalated requests the cloud answered, with an agreement share
    agreed: float = 0.0  # the sum of their agreement shares

    def rates(self) -> dict[str, Proportion]:
        # A request's agreement is a share of its escalated rows; rounding the sum makes
        # one-row requests exact and batched ones a close count.
        agreed = min(round(self.agreed), self.measured)
        return {
            "agreement": Proportion(agreed, self.measured),
            "escalation": Proportion(self.below, self.scored),
            "errors": Proportion(self.errors, self.requests),
        }
