"""The confidence router: answer locally when sure, escalate the rest within the budget.

For a model whose card carries a ``RouterPolicy`` (or a runtime override), each row's
confidence score is compared with the threshold; rows below it go to the cloud as one
sub-batch, and their answers replace the edge's. The request's latency budget (its
``timeout`` parameter in µs, else the configured default) bounds everything: the cloud
gets what is left after the local run, and when it is slow, unreachable, refusing or
its breaker is open, the local answer goes out marked ``degraded`` with the reason —
never an error, never late.

With telemetry on, every answered (or failed) request leaves one ``request`` record for
the fleet: ``infer`` hands the recorder a tuple, and the record is built and written off
the request path (``sync.recorder``), so telemetry costs a request about a microsecond.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Literal

import numpy as np

from edge_agent.cache import cache_key
from edge_agent.core import AgentCore, LoadedModel
from edge_agent.escalation import EscalationClient
from edge_agent.executor import BoundedExecutor
from edge_agent.recorder import Answered, TelemetryRecorder
from edge_agent.routing import BankShelf, Decision, RateController, decide, target_rate
from edge_agent.routing.metrics import RouterCollector
from edgeserve.wire.errors import EdgeServeError
from edgeserve.wire.model_card import RouterPolicy
from edgeserve.wire.schedule import schedule_policy
from edgeserve.wire.tensors import InferRequest, InferResponse, InferTensor

log = logging.getLogger(__name__)
RoutingMode = Literal["escalate", "hard_examples", "local"]


class Router:
    def __init__(
        self,
        core: AgentCore,
        executor: BoundedExecutor,
        escalation: EscalationClient | None,
        recorder: TelemetryRecorder | None,
        mode: RoutingMode,
        default_budget_s: float,
        record_requests: bool = False,
    ) -> None:
        self.core = core
        self.executor = executor
        self.escalation = escalation
        self.recorder = recorder
        self.mode = mode
        self.default_budget_s = default_budget_s
        # One telemetry record per answered request; off unless something uploads them.
        self.record_requests = record_requests and recorder is not None
        self._overrides: dict[str, RouterPolicy] = {}
        self._banks = BankShelf(core.store.root)
        # One rate controller per model, for the policy and version it was made for.
        self._controllers: dict[str, tuple[RouterPolicy, str, RateController]] = {}
        self._collector = RouterCollector(self)
        core.metrics.registry.register(self._collector)
        self._warm_banks()

    async def close(self) -> None:
        self.core.metrics.registry.unregister(self._collector)
        if self.escalation is not None:
            await self.escalation.close()

    def _warm_banks(self) -> None:
        """Read and verify the banks of the models served now, so the first request does
        not pay for it on the event loop (a model swapped in later loads its own)."""
        for name in self.core.model_names():
            model = self.core.model(name)
            policy = self.policy(model)
            if policy is not None and policy.score == "trust":
                self._banks.bank(model.card, model.slot)

    @property
    def bank_failures(self) -> int:
        """Reference banks refused (missing, altered or unreadable) since start."""
        return self._banks.failures

    def controllers(self) -> dict[str, RateController]:
        """The live rate controllers, by model (for metrics and the reported state)."""
        return {name: held[2] for name, held in self._controllers.items()}

    def controller(self, model: LoadedModel, policy: RouterPolicy) -> RateController | None:
        """The model's rate controller under ``policy``; a new policy or version starts a
        new one from the policy's threshold."""
        held = self._controllers.get(model.card.name)
        if held is not None and held[0] is policy and held[1] == model.version:
            return held[2]
        rate = target_rate(policy)
        if rate is None:
            self._controllers.pop(model.card.name, None)
            return None
        controller = RateController(rate, policy.rate_window, policy.threshold)
        self._controllers[model.card.name] = (policy, model.version, controller)
        return controller

    def _store(self, kind: str, record: dict[str, Any]) -> None:
        """Queue a record for the outbox; the recorder writes batches off the event loop."""
        if self.recorder is not None:
            self.recorder.add(kind, record)

    def policy(self, model: LoadedModel) -> RouterPolicy | None:
        return self._overrides.get(model.card.name, model.card.router)

    def overrides(self) -> dict[str, RouterPolicy]:
        """The runtime overrides in force, by model (for the reported state)."""
        return dict(self._overrides)

    def override(self, model: str, policy: RouterPolicy | None) -> None:
        """Replace a model's policy at run time (None restores the card's)."""
        if policy is None:
            self._overrides.pop(model, None)
        else:
            self._overrides[model] = policy
        self.core.cache.clear()  # cached answers were routed under the old policy

    async def infer(self, request: InferRequest) -> InferResponse:
        if not self.record_requests:
            return await self._route(request, time.monotonic())
        started = time.monotonic()
        try:
            response = await self._route(request, started)
        except EdgeServeError as exc:
            self._record_failure(request, exc.code.label, started)
            raise
        except Exception:
            self._record_failure(request, "internal", started)
            raise
        self._record_answer(request, response, started)
        return response

    def _record_answer(
        self, request: InferRequest, response: InferResponse, started: float
    ) -> None:
        # Runs on every request: a tuple and an append; the record is built off the loop.
        assert self.recorder is not None
        shape = request.inputs[0].shape if request.inputs else None
        self.recorder.add(
            "request",
            Answered(
                response.model_name,
                response.model_version,
                time.monotonic() - started,
                shape[0] if shape else 1,
                response.parameters,
            ),
        )

    def _record_failure(self, request: InferRequest, code: str, started: float) -> None:
        assert self.recorder is not None
        name = request.model_name
        self.recorder.add(
            "request",
            {
                "model": self.core.metric_label(name),
                "version": request.model_version or "",
                "latency_ms": round((time.monotonic() - started) * 1e3, 3),
                "rows": _rows(request),
                "error": code,
            },
        )

    async def _route(self, request: InferRequest, started: float) -> InferResponse:
        model = self.core.model(request.model_name, request.model_version)
        # A bad schedule policy is refused before any work, not only when escalating.
        budget_s = _budget_s(request, self.default_budget_s)
        key, hit = self.cached(model, request)
        if hit is not None:
            return hit
        local = await self.executor.run(self.core.infer, request)
        policy = self.policy(model)
        if policy is None or self.mode == "local" or not model.card.logits_output:
            return self._finish(key, model, request, local.outputs, local.parameters)
        logits = local.output(model.card.logits_output).data
        decision = self._decide(model, policy, request, logits)
        answer = dict(local.parameters, confidence=decision.scores, score=decision.score)
        if decision.window_rate is not None:
            answer |= {
                "threshold": round(decision.threshold, 6),
                "window_rate": decision.window_rate,
            }
        if not decision.rows:
            return self._finish(key, model, request, local.outputs, answer | {"tier": "edge"})
        if self.mode == "hard_examples":
            self._queue_hard_examples(model, request, decision)
            answer |= {"tier": "edge", "hard_example_rows": decision.rows}
            return self._finish(key, model, request, local.outputs, answer)
        if self.escalation is None:
            # An agent with no cloud configured answers alone; that is its normal state.
            answer |= {"tier": "edge", "uncertain_rows": decision.rows}
            return self._finish(key, model, request, local.outputs, answer)
        budget = budget_s - (time.monotonic() - started)
        return await self._escalate(key, model, request, local, decision, answer, policy, budget)

    async def _escalate(
        self,
        key: bytes | None,
        model: LoadedModel,
        request: InferRequest,
        local: InferResponse,
        decision: Decision,
        answer: dict[str, Any],
        policy: RouterPolicy,
        budget_s: float,
    ) -> InferResponse:
        assert self.escalation is not None
        cloud_request = self._cloud_request(model, request, decision, policy)
        outcome = await self.escalation.escalate(cloud_request, budget_s)
        edge_labels = [_label(model, i) for i in decision.top]
        if outcome.response is None:
            answer |= {"tier": "edge", "degraded": True, "degraded_reason": outcome.degraded_reason}
            # Not cached: the next identical request should get its chance at the cloud.
            return self.core.respond(model, request, local.outputs, answer, False)
        cloud = outcome.response
        outputs = _merge_rows(local.outputs, cloud.outputs, decision.rows)
        cloud_labels = [str(label) for label in _as_list(cloud.parameters.get("prediction"))]
        prediction = list(answer.get("prediction", edge_labels))
        for row, label in zip(decision.rows, cloud_labels, strict=False):
            prediction[row] = label
        answer |= {
            "tier": "cloud" if len(decision.rows) == len(decision.top) else "mixed",
            "escalated_rows": decision.rows,
            "prediction": prediction,
            "edge_prediction": [edge_labels[row] for row in decision.rows],
            "cloud_prediction": cloud_labels,
            "cloud_model_version": cloud.model_version,
            "escalation_ms": round(outcome.round_trip_s * 1e3, 3),
        }
        if "gateway_ms" in cloud.parameters:
            answer["gateway_ms"] = cloud.parameters["gateway_ms"]
        self._record(model, decision, edge_labels, cloud_labels)
        return self._finish(key, model, request, outputs, answer)

    def _decide(
        self, model: LoadedModel, policy: RouterPolicy, request: InferRequest, logits: Any
    ) -> Decision:
        bank = self._banks.bank(model.card, model.slot) if policy.score == "trust" else None
        features = request.inputs[0].data if bank is not None and request.inputs else None
        controller = self.controller(model, policy)
        return decide(policy, logits, model.card.temperature, features, bank, controller)

    def _cloud_request(
        self, model: LoadedModel, request: InferRequest, decision: Decision, policy: RouterPolicy
    ) -> InferRequest:
        rows = decision.rows
        inputs = [
            InferTensor(t.name, t.datatype, [len(rows), *t.shape[1:]], t.data[rows])
            for t in request.inputs
        ]
        probabilities = [decision.scores[row] for row in rows]
        edge = [_label(model, decision.top[row]) for row in rows]
        parameters: dict[str, Any] = {
            "device_id": self.core.config.device_id,
            "edge_model": f"{model.card.name}:{model.version}",
            "edge_prediction": edge[0] if len(edge) == 1 else json.dumps(edge),
            "edge_confidence": probabilities[0] if len(rows) == 1 else json.dumps(probabilities),
        }
        return InferRequest(policy.escalation_model, inputs, parameters=parameters)

    def _finish(
        self,
        key: bytes | None,
        model: LoadedModel,
        request: InferRequest,
        outputs: list[InferTensor],
        answer: dict[str, Any],
    ) -> InferResponse:
        if key is not None:
            self.core.cache.put(key, outputs, answer)
        return self.core.respond(model, request, outputs, answer, False)

    def cached(
        self, model: LoadedModel, request: InferRequest
    ) -> tuple[bytes | None, InferResponse | None]:
        """The request's cache key (None with the cache off) and the cached answer, if any.

        The one place the agent reads its result cache: a hit returns the final answer
        (local, or as the cloud routed it) without touching the model.
        """
        cache = self.core.cache
        if not cache.enabled:
            return None, None
        wanted = self.core.wanted_outputs(model, request)
        key = cache_key(model.card.name, model.version, request.inputs, wanted)
        hit = cache.get(key)
        (self.core.metrics.cache_hit if hit else self.core.metrics.cache_miss).inc()
        if hit is None:
            return key, None
        return key, self.core.respond(model, request, list(hit.outputs), hit.parameters, True)

    def _queue_hard_examples(
        self, model: LoadedModel, request: InferRequest, decision: Decision
    ) -> None:
        for row in decision.rows:
            record = {
                "model": model.card.name,
                "version": model.version,
                "edge_prediction": _label(model, decision.top[row]),
                "confidence": decision.scores[row],
                "inputs": {
                    t.name: {
                        "datatype": t.datatype,
                        "shape": list(t.data[row].shape),
                        "data": t.data[row].tolist(),
                    }
                    for t in request.inputs
                },
            }
            self._store("hard_example", record)

    def _record(
        self, model: LoadedModel, decision: Decision, edge: list[str], cloud: list[str]
    ) -> None:
        record = {
            "model": model.card.name,
            "version": model.version,
            "edge": [edge[row] for row in decision.rows],
            "cloud": cloud,
            "confidence": [decision.scores[row] for row in decision.rows],
        }
        self._store("escalation", record)


def _as_list(value: Any) -> list[Any]:
    """A list parameter as sent over gRPC, where OIP parameters are scalars and lists
    travel JSON-encoded in a string (see ``wire.oip_grpc``)."""
    if value is None:
        return []
    if isinstance(value, str) and value.startswith("["):
        decoded = json.loads(value)
        return decoded if isinstance(decoded, list) else [decoded]
    return value if isinstance(value, list) else [value]


def _rows(request: InferRequest) -> int:
    shape = request.inputs[0].shape if request.inputs else None
    return max(1, int(shape[0])) if shape else 1


def _label(model: LoadedModel, index: int) -> str:
    labels = model.card.labels
    return labels[index] if index < len(labels) else str(index)


def _budget_s(request: InferRequest, default_s: float) -> float:
    timeout_s = schedule_policy(request.parameters).timeout_s
    return default_s if timeout_s is None else timeout_s


def _merge_rows(
    local: list[InferTensor], cloud: list[InferTensor], rows: list[int]
) -> list[InferTensor]:
    """The edge outputs with ``rows`` replaced by the cloud's rows of the same output."""
    by_name = {tensor.name: tensor for tensor in cloud}
    merged: list[InferTensor] = []
    for tensor in local:
        remote = by_name.get(tensor.name)
        if remote is None or remote.data.shape[1:] != tensor.data.shape[1:]:
            merged.append(tensor)
            continue
        data = np.array(tensor.data, copy=True)
        data[rows] = remote.data.astype(data.dtype, copy=False)
        merged.append(InferTensor(tensor.name, tensor.datatype, list(data.shape), data))
    return merged
