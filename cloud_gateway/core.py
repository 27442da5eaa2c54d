"""The gateway's core: authenticate, authorize, admit, batch, answer — behind both front doors.

REST and gRPC handlers turn their wire form into ``InferRequest`` and ``Credentials`` and
call ``GatewayCore``; nothing here knows HTTP or gRPC. Admission happens in a fixed
order so that the cheapest refusal comes first, and all of it before a front door reads
the request's body: who are you (401), may you use this model (403), is there such a
model (404), are you over your rate or in-flight cap (429). Only an admitted request is
decoded and checked (400) and joins the model's fair, batched queue, so a refused flood
costs its senders, not the compliant tenants.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from cloud_gateway.experiments import Experiments, LiveExperiment, Mirrored
from cloud_gateway.metrics import GatewayMetrics
from cloud_gateway.repository.config import ModelConfig
from cloud_gateway.repository.manager import LoadedVersion, ModelRepository
from cloud_gateway.scheduler import RateLimit, TenantLimiter
from cloud_gateway.scheduler.shared_buckets import SharedRateLimiter
from cloud_gateway.scheduler.stacking import Tensors
from cloud_gateway.tenancy import Authenticator, Principal
from edgeserve import __version__
from edgeserve.wire.confidence import top_class_confidence
from edgeserve.wire.errors import (
    EdgeServeError,
    InvalidInput,
    ModelNotFound,
    PermissionDenied,
    RateLimited,
    shown,
)
from edgeserve.wire.schedule import schedule_policy
from edgeserve.wire.tensors import InferRequest, InferResponse, InferTensor
from edgeserve.wire.validation import validate_inputs

# A front door's header (REST) or call metadata (gRPC) by lowercase name, if sent.
HeaderLookup = Callable[[str], str | None]

PLATFORMS = {
    "onnxruntime": "onnxruntime_onnx",
    "torch": "pytorch_libtorch",
    "tensorrt": "tensorrt_plan",
}


@dataclass(frozen=True, slots=True)
class Admission:
    """A request let in: its principal holds one in-flight slot until ``release``."""

    principal: Principal
    model: str
    started: float
    experiment: LiveExperiment | None = None


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a front door could learn about the caller."""

    api_key: str | None = None
    device_common_name: str | None = None


class GatewayCore:
    def __init__(
        self,
        repository: ModelRepository,
        authenticator: Authenticator,
        metrics: GatewayMetrics,
        shared_buckets: SharedRateLimiter | None = None,
        experiments: Experiments | None = None,
    ) -> None:
        self.repository = repository
        self.authenticator = authenticator
        self.metrics = metrics
        self.limiter = TenantLimiter({})
        # Cluster-wide token buckets (Redis) when configured; else each process's own.
        self.shared_buckets = shared_buckets
        self.experiments = experiments
        self._shadow_pool = ThreadPoolExecutor(1, thread_name_prefix="shadow")
        # model -> its running experiment: the one lookup every request pays for them.
        self._experiments: dict[str, LiveExperiment] = experiments.active if experiments else {}
        self.started = False

    # -- identity ------------------------------------------------------------------------

    async def authenticate(self, credentials: Credentials) -> Principal:
        """The caller's principal; a key not yet cached is hashed off the event loop."""
        if credentials.device_common_name is not None:
            return self.authenticator.from_device_certificate(credentials.device_common_name)
        return await self.authenticator.from_api_key_async(credentials.api_key)

    def authorize(self, principal: Principal, model: str) -> None:
        self.authenticator.authorize(principal, model)

    def require_admin(self, principal: Principal) -> None:
        """Repository control changes what every tenant sees: only '*' tenants may do it."""
        if "*" not in principal.allowed_models:
            raise PermissionDenied(f"tenant '{principal.tenant}' may not load or unload models")

    # -- metadata ------------------------------------------------------------------------

    def server_metadata(self) -> dict[str, Any]:
        return {
            "name": "edgeserve-gateway",
            "version": __version__,
            "extensions": [
                "binary_tensor_data",
                "model_repository",
                "schedule_policy",
                "parameters",
            ],
        }

    @property
    def ready(self) -> bool:
        return self.started

    def model_metadata(
        self, principal: Principal, name: str, version: str | None
    ) -> dict[str, Any]:
        self.authorize(principal, name)
        entry = self.repository.entry(name)
        if version is not None and version not in entry.versions:
            raise ModelNotFound(f"model {shown(name)!r} has no servable version {shown(version)!r}")
        config = entry.config
        return {
            "name": name,
            "versions": entry.versions,
            "platform": PLATFORMS[config.backend],
            "inputs": [spec.model_dump() for spec in config.inputs],
            "outputs": [spec.model_dump() for spec in config.outputs],
        }

    def model_ready(self, principal: Principal, name: str, version: str | None) -> bool:
        self.authorize(principal, name)
        entry = self.repository.entry(name)
        wanted = version or entry.versions[-1]
        return any(v.name == name and v.version == wanted for v in self.repository.loaded())

    def repository_index(self, principal: Principal) -> list[dict[str, Any]]:
        return [row for row in self.repository.index() if principal.can_use(row["name"])]

    async def load(self, principal: Principal, name: str) -> None:
        self.require_admin(principal)
        await self.repository.load(name)

    async def unload(self, principal: Principal, name: str) -> None:
        self.require_admin(principal)
        await self.repository.unload(name)

    # -- inference -----------------------------------------------------------------------

    async def admit(
        self, principal: Principal, model: str, started: float | None = None
    ) -> Admission:
        """Every refusal that needs no body: 403, 404, then 429 (rate, in-flight cap).

        An admitted request holds an in-flight slot: the caller must ``release`` it.
        ``started`` (``perf_counter``) is when the front door began, so that the
        ``gateway_ms`` it reports includes authentication.
        """
        started = time.perf_counter() if started is None else started
        self.authorize(principal, model)
        self.repository.entry(model)
        await self._take_allowance(principal)
        return Admission(principal, model, started, self._experiments.get(model))

    def release(self, admission: Admission) -> None:
        self.limiter.release_slot(admission.principal.tenant)

    async def run(
        self,
        admission: Admission,
        request: InferRequest,
        deadline: float | None = None,
        header: HeaderLookup | None = None,
    ) -> InferResponse:
        """Check an admitted request's inputs, queue it in the model's batcher, answer.

        A request to a model with a running experiment that names no version goes to
        the arm its key (``header`` or ``parameters``) is assigned to."""
        principal = admission.principal
        if request.model_name != admission.model:
            raise InvalidInput(
                f"request names model {shown(request.model_name)!r}, admitted for "
                f"{shown(admission.model)!r}"
            )
        config = self.repository.entry(request.model_name).config
        arrays = validate_inputs(config.name, config.inputs, request.inputs, config.max_batch_size)
        wanted = _wanted_outputs(config.name, [o.name for o in config.outputs], request)
        priority, deadline = _schedule_policy(request, deadline)
        # A request may lower its own priority, never rise above its tenant's tier.
        priority = max(priority or principal.priority_tier, principal.priority_tier)
        if admission.experiment is not None and request.model_version is None:
            return await self._run_arm(
                admission, request, arrays, wanted, priority, deadline, header
            )
        loaded, results = await self._submit(
            request.model_name, request.model_version, principal, arrays, priority, deadline
        )
        response = self._response(loaded, request, results, wanted)
        elapsed = time.perf_counter() - admission.started
        # Lets a caller split its round trip into transport and gateway time.
        response.parameters["gateway_ms"] = round(elapsed * 1e3, 3)
        self.metrics.latency.labels(config.name, principal.tenant).observe(elapsed)
        self.metrics.requests.labels(config.name, loaded.version, principal.tenant, "ok").inc()
        return response

    async def feedback(
        self, principal: Principal, model: str, request_id: object, labels: object
    ) -> int:
        """True labels for an earlier request to ``model``'s experiment (scores accuracy)."""
        self.authorize(principal, model)
        if self.experiments is None:
            raise ModelNotFound(f"model {shown(model)!r} has no running experiment")
        return await self.experiments.feedback(model, request_id, labels)

    async def _submit(
        self,
        model: str,
        version: str | None,
        principal: Principal,
        arrays: dict[str, Any],
        priority: int,
        deadline: float | None,
    ) -> tuple[LoadedVersion, Tensors]:
        """Run ``arrays`` on ``model@version`` through its batcher, counted in flight."""
        loaded = await self.repository.get(model, version)
        loaded.in_flight += 1
        try:
            results = await loaded.batcher.submit(
                principal.tenant, principal.weight, arrays, priority, deadline
            )
        finally:
            loaded.in_flight -= 1
        return loaded, results

    async def _run_arm(
        self,
        admission: Admission,
        request: InferRequest,
        arrays: dict[str, Any],
        wanted: list[str],
        priority: int,
        deadline: float | None,
        header: HeaderLookup | None,
    ) -> InferResponse:
        """The experiment path: the assigned arm answers; the shadow gets a copy."""
        live = admission.experiment
        assert live is not None
        principal = admission.principal
        arm = live.assign(live.routing_key(request.parameters, header))
        if request.id is None and live.feedback:
            request.id = live.request_id()  # the key feedback comes back with
        started = time.perf_counter()
        try:
            loaded, results = await self._submit(
                live.model, arm.version, principal, arrays, priority, deadline
            )
        except EdgeServeError:
            live.failed(arm, time.perf_counter() - started)
            raise
        response = self._response(loaded, request, results, wanted)
        predicted = response.parameters.get("prediction")
        live.served(arm, request.id or "", predicted, time.perf_counter() - started)
        if live.mirrors(arm):
            live.mirror(Mirrored(request.id or "", arrays, predicted, results))
        parameters = response.parameters
        parameters["experiment"] = live.name
        parameters["arm"] = arm.name
        return self._finish(admission, loaded, response)

    def _finish(
        self, admission: Admission, loaded: LoadedVersion, response: InferResponse
    ) -> InferResponse:
        elapsed = time.perf_counter() - admission.started
        response.parameters["gateway_ms"] = round(elapsed * 1e3, 3)
        tenant = admission.principal.tenant
        self.metrics.latency.labels(loaded.name, tenant).observe(elapsed)
        self.metrics.requests.labels(loaded.name, loaded.version, tenant, "ok").inc()
        return response

    async def run_shadow(
        self, model: str, version: str, arrays: dict[str, Any]
    ) -> tuple[ModelConfig, dict[str, Any]]:
        """Mirrored requests (stacked) on the shadow version, in chunks of the model's
        largest batch, on the shadow's own thread: never in the inference pool, where a
        shadow run would hold a thread that the primary's next batch is waiting for."""
        loaded = await self.repository.get(model, version)
        loaded.in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(self._shadow_pool, _run_chunked, loaded, arrays)
        finally:
            loaded.in_flight -= 1
        return loaded.config, results

    def close(self) -> None:
        self._shadow_pool.shutdown(wait=True, cancel_futures=True)

    async def _take_allowance(self, principal: Principal) -> None:
        # Limits change when an operator edits a tenant; set_limit ignores an unchanged one.
        limit = RateLimit(principal.rate_per_s, principal.burst, principal.max_in_flight)
        self.limiter.set_limit(principal.tenant, limit)
        try:
            if self.shared_buckets is None:
                self.limiter.acquire(principal.tenant)
            else:
                await self.shared_buckets.acquire(principal.tenant, limit)
            self.limiter.acquire_slot(principal.tenant)
        except RateLimited as refused:
            # The error counter says a 429 happened; this one says whose limit it was.
            self.metrics.throttled.labels(principal.tenant, type(refused).__name__).inc()
            raise

    def _response(
        self,
        loaded: LoadedVersion,
        request: InferRequest,
        results: dict[str, Any],
        wanted: list[str],
    ) -> InferResponse:
        config = loaded.config
        parameters: dict[str, Any] = {"tier": "cloud", "model_version": loaded.version}
        if config.logits_output and config.logits_output in results:
            top, confidence = top_class_confidence(
                results[config.logits_output], config.temperature
            )
            labels = config.labels
            parameters["confidence"] = [round(c, 6) for c in confidence.tolist()]
            parameters["prediction"] = [labels[i] if i < len(labels) else str(i) for i in top]
        return InferResponse(
            model_name=config.name,
            model_version=loaded.version,
            id=request.id,
            outputs=[InferTensor.from_numpy(name, results[name]) for name in wanted],
            parameters=parameters,
        )


def _run_chunked(loaded: LoadedVersion, arrays: dict[str, Any]) -> dict[str, Any]:
    limit = loaded.config.max_batch_size
    rows = len(next(iter(arrays.values())))
    parts = [
        loaded.backend.run({n: a[i : i + limit] for n, a in arrays.items()})
        for i in range(0, rows, limit)
    ]
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _wanted_outputs(model: str, available: list[str], request: InferRequest) -> list[str]:
    if not request.outputs:
        return available
    names = [out.name for out in request.outputs]
    unknown = [name for name in names if name not in available]
    if unknown:
        raise InvalidInput(
            f"model {shown(model)!r} has no output {shown(unknown[0])!r} (outputs: {available})"
        )
    return names


def _schedule_policy(request: InferRequest, deadline: float | None) -> tuple[int, float | None]:
    """Triton's schedule-policy parameters: ``priority`` (1 = highest) and ``timeout`` (µs)."""
    policy = schedule_policy(request.parameters)
    if policy.timeout_s is not None:
        own = time.monotonic() + policy.timeout_s
        deadline = own if deadline is None else min(deadline, own)
    return policy.priority, deadline
