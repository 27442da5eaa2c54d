"""One running experiment inside one gateway process: assignment, counts, the shadow.

``LiveExperiment`` is what a request to an experiment's model meets: ``assign`` picks
the split arm, ``served``/``failed`` count the answer, and ``mirror`` hands a copy of
the request to the shadow without waiting for it. The shadow is a bounded queue and one
task that drains it in batches (so the shadow version's batcher can batch them) at the
lowest priority: a full queue drops the copy and counts it, so the primary never waits
on the shadow. Counts are kept per process and taken by ``take`` at each flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from cloud_gateway.experiments.spec import Arm, ExperimentSpec, pick
from cloud_gateway.experiments.store import Prediction
from cloud_gateway.experiments.tally import Tally
from cloud_gateway.repository.config import ModelConfig
from edgeserve.wire.confidence import top_class_confidence
from edgeserve.wire.errors import EdgeServeError

log = logging.getLogger(__name__)
Tensors = dict[str, npt.NDArray[Any]]
# (model, version, inputs) -> (the version's config, its outputs), at the lowest priority.
ShadowRun = Callable[[str, str, Tensors], Awaitable[tuple[ModelConfig, Tensors]]]
SHADOW_BATCH = 64  # mirrored requests handed to the shadow's batcher at once, at most
# After the first copy, the shadow waits this long for more: fewer, larger runs cost the
# event loop (and the GIL) far less per copy than one run per primary batch.
SHADOW_LINGER_S = 0.01
MAX_PREDICTIONS = 100_000  # kept between flushes; beyond, the oldest are not recorded


class Mirrored(NamedTuple):  # one per mirrored request: a tuple is the cheapest to build
    request_id: str
    inputs: Tensors
    control_labels: list[str] | None
    control_outputs: Tensors


class LiveExperiment:
    def __init__(self, spec: ExperimentSpec, run_shadow: ShadowRun) -> None:
        self.spec = spec
        self.name = spec.name
        self.model = spec.model
        self._run_shadow = run_shadow
        # Ids for answers that came without one: a random prefix per process and a
        # counter, unique across workers and restarts without a syscall per request
        # (uuid4 reads the kernel's random source each time, which costs where syscalls
        # are dear, as under gVisor).
        self._id_prefix = secrets.token_hex(6)
        self._ids = itertools.count()
        self._tallies: dict[str, Tally] = {}
        self._predictions: list[Prediction] = []
        self._queue: asyncio.Queue[Mirrored] = asyncio.Queue(spec.settings.shadow_queue)
        self._task: asyncio.Task[None] | None = None
        self.update(spec)

    def update(self, spec: ExperimentSpec) -> None:
        """Take a changed spec (an arm stopped, say) in place: requests in flight still
        hold this object, and their counts must land where the next flush takes them."""
        self.spec = spec
        # Read on every request: looked up once here, not through the spec each time.
        self.control = spec.control
        self.shadow = spec.shadow
        self.shadow_fraction = spec.settings.shadow_fraction if self.shadow else 0.0
        self.feedback = spec.settings.feedback
        self._edges = spec.edges()
        if self.shadow is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._shadow_loop(self.shadow))
        elif self.shadow is None and self._task is not None:
            self._task.cancel()  # a stopped shadow: what is queued is not run
            self._task = None

    # -- the request path -----------------------------------------------------------------

    def routing_key(
        self, parameters: dict[str, Any], header: Callable[[str], str | None] | None
    ) -> str | None:
        """The caller's sticky key, from the experiment's header or parameter."""
        if self.spec.key_header is not None and header is not None:
            return header(self.spec.key_header)
        if self.spec.key_parameter is not None:
            value = parameters.get(self.spec.key_parameter)
            return None if value is None else str(value)
        return None

    def assign(self, key: str | None) -> Arm:
        return pick(self.name, self._edges, self.control, key)

    def mirrors(self, arm: Arm) -> bool:
        """Whether this answer is copied to the shadow (control answers, by fraction)."""
        share = self.shadow_fraction
        control = arm.version == self.control.version and arm.role == "split"
        return control and share > 0.0 and (share >= 1.0 or random.random() < share)

    def request_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids)}"

    def served(self, arm: Arm, request_id: str, labels: list[str] | None, seconds: float) -> None:
        tally = self.tally(arm)
        tally.requests += 1
        tally.latency.observe(seconds)
        if labels is not None and self.feedback:
            self._record(Prediction(request_id, self.name, arm.version, labels))

    def failed(self, arm: Arm, seconds: float) -> None:
        tally = self.tally(arm)
        tally.requests += 1
        tally.errors += 1
        tally.latency.observe(seconds)

    def mirror(self, item: Mirrored) -> bool:
        """Queue a copy for the shadow; False (and counted) when the queue is full."""
        shadow = self.shadow
        if shadow is None:
            return False
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.tally(shadow).dropped += 1
            return False
        return True

    def tally(self, arm: Arm) -> Tally:
        tally = self._tallies.get(arm.version)
        if tally is None:
            tally = self._tallies[arm.version] = Tally()
        return tally

    def take(self) -> tuple[dict[str, Tally], list[Prediction]]:
        """This process's counts and predictions since the last take (for a flush)."""
        tallies, predictions = self._tallies, self._predictions
        self._tallies, self._predictions = {}, []
        return tallies, predictions

    def give_back(self, tallies: dict[str, Tally], predictions: Sequence[Prediction] = ()) -> None:
        """Counts (and predictions) not stored yet: kept for the next flush."""
        for version, tally in tallies.items():
            self._tallies.setdefault(version, Tally()).add(tally)
        for prediction in predictions:
            self._record(prediction)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- the shadow -----------------------------------------------------------------------

    async def _shadow_loop(self, arm: Arm) -> None:
        while True:
            items = [await self._queue.get()]
            await asyncio.sleep(SHADOW_LINGER_S)
            while len(items) < SHADOW_BATCH and not self._queue.empty():
                items.append(self._queue.get_nowait())
            for group in _same_signature(items):
                await self._shadow_batch(arm, group)

    async def _shadow_batch(self, arm: Arm, items: list[Mirrored]) -> None:
        """Run a group of copies as one stacked request: per copy, the shadow's Python
        cost is then a few list operations, not a trip through the batcher."""
        names = list(items[0].inputs)
        stacked = {n: np.concatenate([item.inputs[n] for item in items]) for n in names}
        started = time.perf_counter()
        try:
            config, outputs = await self._run_shadow(self.model, arm.version, stacked)
        except Exception as exc:
            if not isinstance(exc, EdgeServeError):
                log.exception("shadow run failed", extra={"experiment": self.name})
            for _ in items:
                self.failed(arm, time.perf_counter() - started)
            return
        elapsed = time.perf_counter() - started
        labels = top_labels(config, outputs)
        tally = self.tally(arm)
        start = 0
        for item in items:
            rows = len(item.inputs[names[0]])
            if labels is not None and item.control_labels is not None:
                own = labels[start : start + rows]
                agreed = [a == b for a, b in zip(item.control_labels, own, strict=False)]
            else:
                own = None
                sliced = {name: value[start : start + rows] for name, value in outputs.items()}
                agreed = _same_rows(item.control_outputs, sliced)
            self.served(arm, item.request_id, own, elapsed)
            tally.compared += len(agreed)
            tally.agreed += sum(agreed)
            start += rows

    def _record(self, prediction: Prediction) -> None:
        if len(self._predictions) < MAX_PREDICTIONS:
            self._predictions.append(prediction)


def top_labels(config: ModelConfig, outputs: Tensors) -> list[str] | None:
    """The top class of each row, by the model's labels (None: the model has no logits)."""
    if not config.logits_output or config.logits_output not in outputs:
        return None
    top, _ = top_class_confidence(outputs[config.logits_output], config.temperature)
    labels = config.labels
    return [labels[i] if i < len(labels) else str(i) for i in top.tolist()]


def _same_signature(items: list[Mirrored]) -> list[list[Mirrored]]:
    """Copies grouped by input names, trailing shapes and dtypes: what can be stacked."""
    groups: dict[tuple[tuple[str, tuple[int, ...], str], ...], list[Mirrored]] = {}
    for item in items:
        key = tuple((n, a.shape[1:], a.dtype.str) for n, a in sorted(item.inputs.items()))
        groups.setdefault(key, []).append(item)
    return list(groups.values())


def _same_rows(control: Tensors, shadow: Tensors) -> list[bool]:
    names: Sequence[str] = [name for name in control if name in shadow]
    rows = min((len(control[name]) for name in names), default=0)
    return [
        all(
            control[n].shape[1:] == shadow[n].shape[1:]
            and bool(np.allclose(control[n][row], shadow[n][row], rtol=1e-3, atol=1e-5))
            for n in names
        )
        for row in range(rows)
    ]
