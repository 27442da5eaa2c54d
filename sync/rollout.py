"""The rollout controller: which device should run which version, and when to stop.

A rollout moves one model version through a group in stages: a canary (a device count
or a fraction), then cumulative fractions of the group, ending at all of it. The stage
plan is fixed and stored when the rollout starts, so a restarted service resumes it
exactly. A stage is promoted when enough of its devices installed the version, its soak
time passed and the version's error rate in telemetry stays under the threshold — or,
under the sequential gate (``sync.gate``), when its cohort is not worse than the devices
still on the old version; the rollout halts by itself when update failures, the error
rate or the gate say so, and then every device it touched is sent back to the version it
ran before.

The controller is pure logic over the ``Registry`` with an injectable clock: it consumes
update results and ticks, and returns ``Assign`` actions; turning those into signed
manifests and MQTT messages is the sync service's job. Offline devices simply stay
"assigned": their desired state is retained and they install when they return.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from edgeserve.wire.errors import (
    EdgeServeError,
    ErrorCode,
    InvalidInput,
    ModelNotFound,
    UpdateRefused,
)
from edgeserve.wire.sync_messages import UpdateResult
from sync.gate import GATES, GateDecision, GateKind, GateSettings, look
from sync.registry import Registry
from sync.views import (
    DeviceRolloutState,
    RolloutDeviceRow,
    RolloutRow,
    RolloutState,
    RolloutView,
)

_TOUCHED = ("assigned", "installed", "failed")


class RolloutNotFound(EdgeServeError):
    code = ErrorCode.NOT_FOUND


@dataclass(frozen=True)
class RolloutSpec:
    """What to roll out where, how fast, and when to give up.

    ``canary``: an int is a device count, a float in (0, 1) a fraction of the targets
    (at least one device). ``stages``: cumulative fractions after the canary, ending at
    1.0. ``promote_after_healthy``: installs needed per stage (None = every device of
    the stage that did not fail). Failures halt at ``max_failures`` or at a failure rate
    of ``max_failure_rate`` over the devices that reported; 0 means any failure halts.

    ``gate`` chooses how a stage is judged besides installs and soak time: ``threshold``
    halts when the version's error rate passes ``max_error_rate``; ``sequential`` compares
    the cohort on the new version with the devices still on the old one by an
    always-valid sequential test (``sync.gate``; the ``gate_*`` fields are its settings)
    and halts when it is significantly worse, promotes when it is not worse.
    """

    model: str
    version: str
    group: str | None = None
    canary: int | float = 1
    stages: list[float] = field(default_factory=lambda: [0.5, 1.0])
    promote_after_healthy: int | None = None
    soak_s: float = 0.0
    max_failures: int = 1
    max_failure_rate: float = 0.2
    max_error_rate: float = 0.05
    gate: GateKind = "threshold"
    gate_alpha: float = 0.05
    gate_tau: float = 0.05
    gate_min_requests: int = 100
    gate_margin_agreement: float = 0.05
    gate_margin_escalation: float = 0.05
    gate_margin_errors: float = 0.01

    def __post_init__(self) -> None:
        canary = self.canary
        if isinstance(canary, bool) or not (
            (isinstance(canary, int) and canary >= 1)
            or (isinstance(canary, float) and 0 < canary < 1)
        ):
            raise InvalidInput(f"canary {canary!r}: a device count >= 1 or a fraction in (0, 1)")
        stages = self.stages
        if not stages or stages[-1] != 1.0 or any(not 0 < f <= 1 for f in stages):
            raise InvalidInput(f"stages {stages!r}: fractions in (0, 1], the last one 1.0")
        if any(b < a for a, b in itertools.pairwise(stages)):
            raise InvalidInput(f"stages {stages!r} must not decrease")
        if self.promote_after_healthy is not None and self.promote_after_healthy < 1:
            raise InvalidInput("promote_after_healthy must be at least 1")
        if self.soak_s < 0 or self.max_failures < 0:
            raise InvalidInput("soak_s and max_failures must not be negative")
        if not (0 <= self.max_failure_rate <= 1 and 0 <= self.max_error_rate <= 1):
            raise InvalidInput("max_failure_rate and max_error_rate are fractions in [0, 1]")
        self._check_gate()

    def _check_gate(self) -> None:
        if self.gate not in GATES:
            raise InvalidInput(f"gate {self.gate!r}: one of {', '.join(GATES)}")
        self.gate_settings()  # checks its own values

    def gate_settings(self) -> GateSettings:
        return GateSettings(
            alpha=self.gate_alpha,
            tau=self.gate_tau,
            min_requests=self.gate_min_requests,
            margin_agreement=self.gate_margin_agreement,
            margin_escalation=self.gate_margin_escalation,
            margin_errors=self.gate_margin_errors,
            max_error_rate=self.max_error_rate,
        )

    def stage_sizes(self, targets: int) -> list[int]:
        """How many of ``targets`` devices each stage adds, canary first; empty stages go."""
        first = self.canary if isinstance(self.canary, int) else math.ceil(self.canary * targets)
        bounds = [min(max(first, 1), targets)]
        for fraction in self.stages:
            bound = min(targets, math.ceil(round(fraction * targets, 9)))
            if bound > bounds[-1]:
                bounds.append(bound)
        return [b - a for a, b in zip([0, *bounds], bounds, strict=False)]

    def failure_reason(self, failed: int, installed: int) -> str | None:
        if failed == 0:
            return None
        rate = failed / (failed + installed)
        if failed >= self.max_failures:
            return f"{failed} update failures reached the limit of {self.max_failures}"
        if rate >= self.max_failure_rate:
            return f"failure rate {rate:.0%} reached the limit of {self.max_failure_rate:.0%}"
        return None


@dataclass(frozen=True, slots=True)
class Assign:
    """Action: ``device_id`` should run ``model@version`` (a signed rollback if ``rollback``)."""

    device_id: str
    model: str
    version: str
    rollback: bool
    rollout_id: int


Assigns = list[Assign]
Views = list[RolloutView]
DeviceRows = list[RolloutDeviceRow]


class RolloutController:
    def __init__(self, registry: Registry, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.clock = clock

    def start(self, spec: RolloutSpec) -> tuple[int, Assigns]:
        """Plan and store a rollout; returns its id and the canary assignments.

        A running rollout of the same model is superseded: its devices simply move on to
        the new version through this one.
        """
        if self.registry.version(spec.model, spec.version) is None:
            raise ModelNotFound(f"{spec.model}@{spec.version} is not registered")
        targets = self.registry.devices(spec.group)
        if not targets:
            raise InvalidInput(f"no devices in group {spec.group!r}")
        plan: list[tuple[str, int, str | None, DeviceRolloutState]] = []
        sizes = spec.stage_sizes(len(targets))
        stages = [stage for stage, size in enumerate(sizes) for _ in range(size)]
        for device, stage in zip(targets, stages, strict=True):
            running = device.running_version(spec.model)
            state: DeviceRolloutState = "installed" if running == spec.version else "pending"
            plan.append((device.device_id, stage, running, state))
        older = [r for r in self.registry.rollouts("running") if r.model == spec.model]
        rollout_id = self.registry.create_rollout(
            spec.model, spec.version, spec.group, asdict(spec), plan, now=self.clock()
        )
        for row in older:
            self.registry.update_rollout(
                row.id,
                state="superseded",
                reason=f"superseded by rollout {rollout_id}",
                now=self.clock(),
            )
        return rollout_id, self._assign_stage(rollout_id, spec, 0) + self._evaluate(rollout_id)

    def on_result(self, result: UpdateResult) -> Assigns:
        """Record one device's update outcome; may promote or halt its rollout."""
        actions: Assigns = []
        for row in self.registry.rollouts("running"):
            if row.model != result.model or row.version != result.version:
                continue
            device = self._device(row.id, result.device_id)
            if device is None or device.state == "rolled_back":
                continue
            if result.ok:
                self._set(row.id, device.device_id, "installed")
            else:
                reason = result.reason or f"failed at {result.stage}"
                self._set(row.id, device.device_id, "failed", reason)
            actions += self._evaluate(row.id)
        return actions

    def on_reported(self, device_id: str) -> Assigns:
        """A device's reported state: where it already runs a rollout's version, it has
        installed it — also when its result message was lost (a broker killed while
        holding it), which would otherwise leave the rollout waiting for ever."""
        device = self.registry.device(device_id)
        if device is None:
            return []
        actions: Assigns = []
        for row in self.registry.rollouts("running"):
            entry = self._device(row.id, device_id)
            if entry is None or entry.state != "assigned":
                continue
            if device.running_version(row.model) == row.version:
                self._set(row.id, device_id, "installed")
                actions += self._evaluate(row.id)
        return actions

    def current_assign(self, device_id: str, model: str, version: str) -> Assign | None:
        """The newest rollout's instruction that sends ``device_id`` to ``model@version``:
        its assignment in a running rollout, or its way back from a halted one."""
        for row in reversed(self.registry.rollouts()):
            if row.model != model:
                continue
            entry = self._device(row.id, device_id)
            if entry is None:
                continue
            if row.state == "running" and row.version == version and entry.state == "assigned":
                return Assign(device_id, model, version, False, row.id)
            if row.state in ("halted", "rolled_back") and entry.from_version == version:
                return Assign(device_id, model, version, True, row.id)
        return None

    def assignment_failed(self, assign: Assign, reason: str) -> Assigns:
        """The service could not issue ``assign`` (a payload it cannot build or a store
        that rotted): the device fails with the reason instead of waiting for ever, and
        the rollout's failure policy decides whether it halts."""
        row = self.registry.rollout(assign.rollout_id)
        device = self._device(assign.rollout_id, assign.device_id)
        if row is None or row.state != "running" or device is None or assign.rollback:
            return []
        if device.state != "assigned" or row.version != assign.version:
            return []
        self._set(row.id, assign.device_id, "failed", f"not issued: {reason}")
        return self._evaluate(row.id)

    def tick(self) -> Assigns:
        """Re-check every running rollout: soak timers and telemetry error rates."""
        actions: Assigns = []
        for row in self.registry.rollouts("running"):
            actions += self._evaluate(row.id)
        return actions

    def rollback(self, rollout_id: int, reason: str) -> Assigns:
        """Operator's rollback of a running or completed rollout."""
        row = self._rollout(rollout_id)
        if row.state not in ("running", "completed"):
            raise UpdateRefused(f"rollout {rollout_id} is already {row.state}")
        return self._halt(row, "rolled_back", reason or "rolled back by the operator")

    def show(self, rollout_id: int) -> RolloutView:
        row = self._rollout(rollout_id)
        devices = self.registry.rollout_devices(rollout_id)
        spec = _spec(row)
        sizes = tuple(spec.stage_sizes(len(devices))) if devices else ()
        counts = Counter(device.state for device in devices)
        return RolloutView(
            id=row.id,
            model=row.model,
            version=row.version,
            group=row.group,
            state=row.state,
            stage=row.stage,
            stage_sizes=sizes,
            reason=row.reason,
            created=row.created,
            updated=row.updated,
            devices=tuple(devices),
            spec=row.spec,
            gate=row.gate,
            counts={
                state: counts.get(state, 0)
                for state in ("pending", "assigned", "installed", "failed", "rolled_back")
            },
        )

    def list(self) -> Views:
        return [self.show(row.id) for row in self.registry.rollouts()]

    # -- internals ------------------------------------------------------------------------
    def _evaluate(self, rollout_id: int) -> Assigns:
        """Halt, promote (possibly through several stages) or complete one rollout."""
        actions: Assigns = []
        while True:
            row = self._rollout(rollout_id)
            if row.state != "running":
                return actions
            spec = _spec(row)
            devices = self.registry.rollout_devices(rollout_id)
            states = Counter(d.state for d in devices)
            # Devices that already ran the version never reported: they are no evidence.
            reported_ok = sum(
                d.state == "installed" and d.from_version != row.version for d in devices
            )
            reason = spec.failure_reason(states["failed"], reported_ok)
            soaked = self.clock() - row.stage_started >= spec.soak_s
            if reason is None and spec.gate == "threshold" and soaked:
                reason = self._error_rate_reason(spec, devices)
            passed = True
            if reason is None and spec.gate == "sequential":
                decision = self._sequential(row, spec, devices)
                reason = decision.reason if decision.action == "halt" else None
                passed = decision.action == "promote"
            if reason is not None:
                return actions + self._halt(row, "halted", reason)
            if not passed or not self._stage_ready(spec, row, devices):
                return actions
            if row.stage >= max(d.stage for d in devices):
                if states["pending"] == 0 and states["assigned"] == 0:
                    self.registry.update_rollout(rollout_id, state="completed", now=self.clock())
                return actions
            self.registry.update_rollout(rollout_id, stage=row.stage + 1, now=self.clock())
            actions += self._assign_stage(rollout_id, spec, row.stage + 1)

    def _stage_ready(self, spec: RolloutSpec, row: RolloutRow, devices: DeviceRows) -> bool:
        stage = [d for d in devices if d.stage == row.stage]
        installed = sum(d.state == "installed" for d in stage)
        healthy = len(stage) - sum(d.state == "failed" for d in stage)
        needed = min(spec.promote_after_healthy or len(stage), healthy)
        soaked = self.clock() - row.stage_started >= spec.soak_s
        return soaked and installed >= max(needed, 1)

    def _error_rate_reason(self, spec: RolloutSpec, devices: DeviceRows) -> str | None:
        ours = {d.device_id for d in devices if d.state == "installed"}
        per_device = self.registry.request_errors(spec.model, spec.version)
        requests = sum(total for device, (total, _) in per_device.items() if device in ours)
        errors = sum(bad for device, (_, bad) in per_device.items() if device in ours)
        if requests == 0 or errors / requests <= spec.max_error_rate:
            return None
        return (
            f"error rate {errors / requests:.1%} over {requests} requests is above"
            f" {spec.max_error_rate:.1%}"
        )

    def _sequential(self, row: RolloutRow, spec: RolloutSpec, devices: DeviceRows) -> GateDecision:
        """The gate's look at the current stage, kept with the rollout per stage."""
        decision = look(self.registry, row, devices, spec.gate_settings())
        looks = row.gate | {str(row.stage): decision.as_dict()}
        self.registry.update_rollout(row.id, gate=looks, now=self.clock())
        return decision

    def _assign_stage(self, rollout_id: int, spec: RolloutSpec, stage: int) -> Assigns:
        actions: Assigns = []
        for device in self.registry.rollout_devices(rollout_id):
            if device.stage != stage or device.state != "pending":
                continue
            current = self.registry.device(device.device_id)
            running = current.running_version(spec.model) if current else None
            self._set(rollout_id, device.device_id, "assigned", from_version=running)
            actions.append(Assign(device.device_id, spec.model, spec.version, False, rollout_id))
        return actions

    def _halt(self, row: RolloutRow, state: RolloutState, reason: str) -> Assigns:
        """Stop a rollout and send every device it touched back to its previous version.

        Failed devices still run their old version, but get the rollback too so their
        desired state stops naming the refused one. Devices that ran no earlier version
        (or already ran this one) have nothing to go back to.
        """
        actions: Assigns = []
        for device in self.registry.rollout_devices(row.id):
            previous = device.from_version
            if device.state not in _TOUCHED or previous in (None, row.version):
                continue
            assert previous is not None
            actions.append(Assign(device.device_id, row.model, previous, True, row.id))
            if device.state != "failed":
                self._set(row.id, device.device_id, "rolled_back", reason)
        self.registry.update_rollout(row.id, state=state, reason=reason, now=self.clock())
        return actions

    def _set(
        self,
        rollout_id: int,
        device_id: str,
        state: DeviceRolloutState,
        reason: str = "",
        from_version: str | None = None,
    ) -> None:
        self.registry.set_rollout_device(
            rollout_id, device_id, state, reason, from_version, now=self.clock()
        )

    def _rollout(self, rollout_id: int) -> RolloutRow:
        row = self.registry.rollout(rollout_id)
        if row is None:
            raise RolloutNotFound(f"no rollout {rollout_id}")
        return row

    def _device(self, rollout_id: int, device_id: str) -> RolloutDeviceRow | None:
        return next(
            (d for d in self.registry.rollout_devices(rollout_id) if d.device_id == device_id),
            None,
        )


def _spec(row: RolloutRow) -> RolloutSpec:
    return RolloutSpec(**row.spec)
