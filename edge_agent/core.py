"""The agent's core: the models it serves and the one ``infer`` path behind every front door.

It knows nothing of HTTP: the local REST API, the benchmarks and the tests all call the
same methods with ``wire`` types, and get ``wire`` types or ``EdgeServeError`` back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.cache import ResultCache
from edge_agent.config import AgentConfig
from edge_agent.metrics import AgentMetrics
from edge_agent.sessions import SessionLeases
from edge_agent.store import ModelStore
from edgeserve import __version__
from edgeserve.artifacts import packaged_artifacts
from edgeserve.runtimes import RuntimeOptions, RuntimeSession, open_session
from edgeserve.wire.confidence import top_class_confidence
from edgeserve.wire.errors import EdgeServeError, InvalidInput, ModelNotFound
from edgeserve.wire.model_card import CARD_SUFFIX, ModelCard
from edgeserve.wire.tensors import InferRequest, InferResponse, InferTensor
from edgeserve.wire.validation import validate_inputs

log = logging.getLogger(__name__)

PLATFORMS = {"onnx": "onnxruntime_onnx", "tflite": "tensorflow_lite"}


@dataclass(slots=True)
class LoadedModel:
    card: ModelCard
    session: RuntimeSession
    slot: str
    output_names: list[str]
    run_seconds: Any  # the model's bound histogram child
    leases: SessionLeases = field(init=False)

    def __post_init__(self) -> None:
        self.leases = SessionLeases(self.session.close)

    @property
    def version(self) -> str:
        return self.card.version


class AgentCore:
    def __init__(
        self, config: AgentConfig, store: ModelStore, metrics: AgentMetrics, cache: ResultCache
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.cache = cache
        self._models: dict[str, LoadedModel] = {}
        # Lookup-and-borrow and swap-and-retire are atomic under it (see edge_agent.sessions).
        self._swap_lock = threading.Lock()
        self._options = RuntimeOptions(threads=config.runtime_threads)

    @classmethod
    def from_config(cls, config: AgentConfig) -> AgentCore:
        store = ModelStore(config.state_dir / "models")
        cache = ResultCache(config.cache_entries, config.cache_bytes)
        return cls(config, store, AgentMetrics(), cache)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Seed missing models from the artifacts folder, then load every configured one."""
        source = self.config.artifacts_dir or packaged_artifacts()
        for name in self.config.models:
            if not self.store.has(name):
                self.seed(name, source)
            try:
                self.load(name)
            except EdgeServeError as exc:
                # One bad model must not keep the others from serving.
                log.error("model not loaded", extra={"model": name, "reason": exc.message})

    def seed(self, name: str, source: Path) -> None:
        card_file = source / f"{name}{CARD_SUFFIX}"
        if not card_file.is_file():
            raise ModelNotFound(f"no artifact card for '{name}' in {source}")
        card = ModelCard.load(card_file)
        self.store.install(card, source / card.file)

    def load(self, name: str) -> LoadedModel:
        try:
            verified = self.store.load_verified(name)
        except EdgeServeError:
            self.metrics.integrity_failures.labels(name).inc()
            raise
        session = open_session(verified.card.format, verified.artifact, self._options)
        model = LoadedModel(
            verified.card,
            session,
            verified.slot,
            [o.name for o in verified.card.outputs],
            self.metrics.inference_seconds.labels(name),
        )
        with self._swap_lock:
            old = self._models.get(name)
            self._models[name] = model
        if old is not None:
            old.leases.retire()  # its session closes once no request is running it
            self.metrics.model_loaded.remove(name, old.version, old.session.runtime_name)
        self.metrics.model_loaded.labels(name, model.version, session.runtime_name).set(1)
        log.info(
            "model loaded",
            extra={"model": name, "version": model.version, "runtime": session.runtime_name},
        )
        return model

    def close(self) -> None:
        for model in self._models.values():
            model.leases.retire()
        self._models.clear()

    @property
    def ready(self) -> bool:
        return all(name in self._models for name in self.config.models)

    # -- queries -----------------------------------------------------------------------

    def model(self, name: str, version: str | None = None) -> LoadedModel:
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(f"unknown model '{name}'")
        if version not in (None, "", model.version):
            raise ModelNotFound(
                f"model '{name}' version '{version}' is not loaded (serving {model.version})"
            )
        return model

    def model_names(self) -> list[str]:
        return sorted(self._models)

    def metric_label(self, name: str) -> str:
        """Model label for metrics; unknown names collapse so clients cannot grow cardinality."""
        return name if name in self._models else "_unknown"

    def server_metadata(self) -> dict[str, Any]:
        return {
            "name": "edgeserve-agent",
            "version": __version__,
            "extensions": ["binary_tensor_data", "parameters"],
        }

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        card = self.model(name, version).card
        return {
            "name": card.name,
            "versions": [card.version],
            "platform": PLATFORMS.get(card.format, card.format),
            "inputs": [spec.model_dump() for spec in card.inputs],
            "outputs": [spec.model_dump() for spec in card.outputs],
        }

    # -- inference ---------------------------------------------------------------------

    def infer(self, request: InferRequest) -> InferResponse:
        """Validate and run the model: the agent's one local inference path.

        The answer is not cached here: the router owns the result cache, for routed and
        unrouted models alike, because only it knows the final answer.
        """
        with self.borrow(request.model_name, request.model_version) as model:
            card = model.card
            arrays = validate_inputs(card.name, card.inputs, request.inputs, self.config.max_batch)
            wanted = self.wanted_outputs(model, request)
            start = time.perf_counter()
            results = model.session.run(arrays, model.output_names)
        self.metrics.inference_seconds.labels(model.card.name).observe(time.perf_counter() - start)
        outputs = [InferTensor.from_numpy(name, results[name]) for name in wanted]
        parameters = self._answer_parameters(model, results)
        return self.respond(model, request, outputs, parameters, False)

    @contextmanager
    def borrow(self, name: str, version: str | None = None) -> Iterator[LoadedModel]:
        """The served model, its session kept open until the block ends even if swapped."""
        with self._swap_lock:
            model = self.model(name, version)
            model.leases.acquire()
        try:
            yield model
        finally:
            model.leases.release()

    def wanted_outputs(self, model: LoadedModel, request: InferRequest) -> list[str]:
        if not request.outputs:
            return model.output_names
        names = [out.name for out in request.outputs]
        unknown = [name for name in names if name not in model.output_names]
        if unknown:
            raise InvalidInput(
                f"model '{model.card.name}' has no output {unknown[0]!r} "
                f"(outputs: {model.output_names})"
            )
        return names

    def _answer_parameters(self, model: LoadedModel, results: dict[str, Any]) -> dict[str, Any]:
        card = model.card
        parameters: dict[str, Any] = {"runtime": model.session.runtime_name}
        if card.logits_output and card.logits_output in results:
            top, confidence = top_class_confidence(results[card.logits_output], card.temperature)
            labels = card.labels
            parameters["confidence"] = [round(c, 6) for c in confidence.tolist()]
            parameters["prediction"] = [labels[i] if i < len(labels) else str(i) for i in top]
        return parameters

    def respond(
        self,
        model: LoadedModel,
        request: InferRequest,
        outputs: list[InferTensor],
        answer: dict[str, Any],
        cache_hit: bool,
    ) -> InferResponse:
        parameters: dict[str, Any] = {"tier": "edge", "model_version": model.version}
        parameters.update(answer)
        parameters["cache_hit"] = cache_hit
        return InferResponse(
            model_name=model.card.name,
            model_version=model.version,
            id=request.id,
            outputs=outputs,
            parameters=parameters,
        )
